"""The public API: load a bundle, generate interleaved text and images.

    from runtime import ArmorPipeline
    with ArmorPipeline.load("bundles/tiny") as pipe:
        for event in pipe.generate([{"role": "user", "content": "draw a red circle."}]):
            ...
        parts = pipe.chat([{"role": "user", "content": [{"type": "image", "image": "x.png"},
                                                          {"type": "text", "text": "what colour?"}]}])

`generate` yields events (TextDelta, ImageStarted, ImageProgress, ImageDone, Done);
`chat` returns the interleaved list of strings and PIL images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

from PIL import Image

from runtime.bundle import open_bundle
from runtime.errors import InputError
from runtime.generation import Done, Event, ImageDone, ImageStarted, TextDelta, generate
from runtime.lifecycle import Closing, close_attr
from runtime.model import BundleModel
from runtime.sampling import SamplingParams


class ArmorPipeline(Closing):
    def __init__(self, model: BundleModel, load_seconds: float = 0.0):
        self.model = model
        self.tokenizer = model.bundle.tokenizer
        self.load_seconds = load_seconds
        self.last_done: Done | None = None

    @classmethod
    def load(cls, bundle: str | Path, backend: str = "ort", device: str = "cpu", verify_hashes: bool = True,
             threads: int | None = None, **options) -> "ArmorPipeline":
        """`backend`: ort (ONNX Runtime; `device` cpu, cuda or tensorrt), tensorrt or llamacpp.
        Backend options: ORT's `io_binding=True` keeps a dynamic decoder cache in ORT memory."""
        t0 = time.perf_counter()
        b = open_bundle(bundle, verify_hashes=verify_hashes)
        return cls(BundleModel.open(b, backend=backend, device=device, threads=threads, **options),
                   time.perf_counter() - t0)

    @property
    def manifest(self) -> dict:
        return self.model.bundle.manifest

    def generate(self, messages: list[dict], *, max_new_tokens: int = 128, cfg_scale: float | None = None,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 image_decoding: str = "sequential", jacobi_window: int = 8, jacobi_init: str = "above",
                 text_processor=None) -> Iterator[Event]:
        """Events of one answer. `image_decoding="jacobi"` decodes `jacobi_window` codes per step
        (speculative Jacobi decoding: the same codes greedily, the same distribution sampled);
        `jacobi_init` (above, repeat, random) fills its window.
        `text_processor(i, logits) -> logits` edits the text logits of answer token i before sampling."""
        if self.model is None:
            raise InputError("this pipeline is closed: load the bundle again")
        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        for event in generate(self.model, self.tokenizer, messages, max_new_tokens=max_new_tokens,
                              cfg_scale=cfg_scale, sampling=sampling, image_decoding=image_decoding,
                              jacobi_window=jacobi_window, jacobi_init=jacobi_init,
                              text_processor=text_processor):
            if isinstance(event, Done):
                self.last_done = event
            yield event

    def chat(self, messages: list[dict], **kwargs) -> list[str | Image.Image]:
        """The interleaved answer: text segments (stripped, empty ones dropped) and images."""
        out, text = [], []

        def flush():
            s = "".join(text).strip()
            if s:
                out.append(s)
            text.clear()

        for event in self.generate(messages, **kwargs):
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, ImageStarted):
                flush()
            elif isinstance(event, ImageDone):
                out.append(event.image)
        flush()
        return out

    def close(self) -> None:
        close_attr(self, "model")
