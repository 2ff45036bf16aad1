"""Calibration inputs for each graph of a bundle: plain lists of `{input_name: ndarray}`.

- vision encoder: pictures of the shapes world (train split), plus every image of an optional
  folder, preprocessed exactly as the runtime does (`runtime.image.preprocess`).
- VQ decoder: code grids from encoding real pictures with the checkpoint's VQGAN encoder
  (PyTorch), plus the grids the model itself generated while recording.
- decoder, text head, visual head: the feeds the runtime really sends while it generates over
  calibration prompts (prefill and cached steps, text and image mode, the CFG batch of 2).
  They are captured by `RecordingBackend`, which wraps a `BundleModel`'s backends with the
  same `Backend` interface; the runtime itself is not changed.

Recorded calls are kept in a seeded reservoir per graph (multi-token calls and single-token
steps in separate strata), so memory stays bounded however long the generations are.

This module knows graph input names (from `runtime.graphs`), the world and the runtime's
generation loop; it knows nothing about quantization or manifests.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from runtime.model import BundleModel
from runtime.generation import ImageDone, generate
from runtime.image import load_image, preprocess, to_unit_range
from runtime.sampling import SamplingParams
from training_ref import world

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CALIBRATION_SEED = 20261123  # train-split prompts and scenes; the held-out sets use other seeds
RECORDED_GRAPHS = ("decoder", "text_head", "visual_head")


# --- recording the runtime -------------------------------------------------------------------------
class Reservoir:
    """A uniform, seeded sample (Algorithm R) of everything offered, in two strata.

    Calls over several positions (prefill, the unconditional prompt) are rare next to
    single-position steps; each stratum keeps up to `capacity` items and `samples()` returns
    a quarter multi-position calls and the rest steps (either side filling up for the other),
    so prefill inputs are never crowded out."""

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity, self.rng = capacity, rng
        self.items: dict[str, list] = {"multi": [], "step": []}
        self.seen = {"multi": 0, "step": 0}

    def wants(self, stratum: str) -> int | None:
        """The slot a new item of `stratum` goes to (len(items) to append), or None to drop it."""
        self.seen[stratum] += 1
        items = self.items[stratum]
        if len(items) < self.capacity:
            return len(items)
        j = int(self.rng.integers(self.seen[stratum]))
        return j if j < self.capacity else None

    def put(self, stratum: str, slot: int, item) -> None:
        items = self.items[stratum]
        if slot == len(items):
            items.append(item)
        else:
            items[slot] = item

    def samples(self) -> list:
        multi, step = self.items["multi"], self.items["step"]
        n_multi = min(len(multi), max(self.capacity // 4, self.capacity - len(step)))
        return multi[:n_multi] + step[:self.capacity - n_multi]


class ForceImageBackend:
    """A text-head `Backend` that, while `armed`, makes its next answer `<imgbos>` (then disarms).

    Used on t2i calibration prompts so that image mode (visual head, CFG batch 2, generated
    grids) is recorded even for a model that would not switch by itself (a random-weight one).
    A trained model answers a t2i prompt with `<imgbos>` anyway, so for it this changes nothing."""

    def __init__(self, inner, img_bos_index: int):
        self.inner, self.index = inner, img_bos_index
        self.input_names, self.output_names = inner.input_names, inner.output_names
        self.armed = False

    def run(self, feeds: Feeds, outputs: list[str] | None = None) -> Feeds:
        out = self.inner.run(feeds, outputs)
        if self.armed:
            self.armed = False
            logits = {k: np.array(v, copy=True) for k, v in out.items()}
            name = self.inner.output_names[0]
            logits[name][..., self.index] = logits[name].max() + 1.0
            return logits
        return out

    def close(self) -> None:
        self.inner.close()


class RecordingBackend:
    """A `Backend` that offers a copy of every feed to a reservoir, then runs the wrapped backend."""

    def __init__(self, inner, reservoir: Reservoir, seq_axis: int = 1):
        self.inner, self.reservoir, self.seq_axis = inner, reservoir, seq_axis
        self.input_names, self.output_names = inner.input_names, inner.output_names
        self.calls = 0

    def run(self, feeds: Feeds, outputs: list[str] | None = None) -> Feeds:
        self.calls += 1
        first = feeds[self.inner.input_names[0]]
        stratum = "multi" if first.ndim > self.seq_axis and first.shape[self.seq_axis] > 1 else "step"
        slot = self.reservoir.wants(stratum)
        if slot is not None:
            self.reservoir.put(stratum, slot, {k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.inner.run(feeds, outputs)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


FIRST_T2I_PROMPT = world.MODES.index("t2i")  # calibration_prompts cycles over world.MODES


@dataclass
class Prompt:
    """One calibration conversation: chat messages (image parts as PIL images or paths), and
    whether its answer is drawn (recorded from `<imgbos>` on: the image-mode graphs' inputs)."""

    messages: list[dict]
    draw: bool = False


def calibration_prompts(n: int, size: int = 64, seed: int = CALIBRATION_SEED) -> list[Prompt]:
    """`n` chat samples of the shapes world's train split, cycling over the four data modes
    (t2t, ti2t, t2i, t2ti); input scenes rendered at `size` pixels."""
    from training_ref.evaluate import messages_for

    rng = np.random.default_rng(seed)
    samples = [world.make_sample(rng, world.MODES[i % len(world.MODES)], heldout=False) for i in range(n)]
    return [Prompt(messages_for(s, size), s.mode == "t2i") for s in samples]


def file_prompts(path: Path) -> list[Prompt]:
    """Prompts from a JSONL file, one conversation a line: `{"messages": [...], "draw": false}`;
    image parts name files relative to the JSONL file."""
    import json

    from calibration.errors import CalibrationError

    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"--prompts {path} is neither a number nor a file")
    prompts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"--prompts {path} cannot be read as UTF-8 text ({e.__class__.__name__})") from e
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            messages, draw = entry["messages"], bool(entry.get("draw", False))
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise TypeError("messages is not a list of dicts")
            for m in messages:
                for part in m.get("content") if isinstance(m.get("content"), list) else ():
                    if isinstance(part, dict) and part.get("type") == "image" and isinstance(part.get("image"), str):
                        part["image"] = str(path.parent / part["image"])
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CalibrationError(f"--prompts {path} line {i} is not {{\"messages\": [...], \"draw\": bool}} "
                                   f"({e.__class__.__name__}: {e})") from e
        prompts.append(Prompt(messages, draw))
    if not prompts:
        raise CalibrationError(f"--prompts {path} holds no prompts")
    return prompts


def record_generation(model: BundleModel, tokenizer, prompts: list[Prompt], samples: int, *,
                      max_new_tokens: int = 64, cfg_scale: float = 3.0, seed: int = CALIBRATION_SEED,
                      force_images: bool = True,
                      progress: bool = True) -> tuple[dict[str, list[Feeds]], list[np.ndarray]]:
    """Generate over `prompts` with the runtime, recording the decoder's and heads' feeds.

    Returns ({graph: up to `samples` feeds}, the code grids generated [h, w]). The model's
    backends are wrapped for the duration and restored afterwards. With `force_images`, the
    drawing prompts start their answer with `<imgbos>` (see `ForceImageBackend`)."""
    rng = np.random.default_rng(seed)
    reservoirs = {g: Reservoir(samples, rng) for g in RECORDED_GRAPHS}
    originals = {g: model.backends[g] for g in RECORDED_GRAPHS}
    grids: list[np.ndarray] = []
    try:
        recorders = {g: RecordingBackend(originals[g], reservoirs[g]) for g in RECORDED_GRAPHS}
        model.backends.update(recorders)
        forcing = model.backends["text_head"] = ForceImageBackend(model.backends["text_head"], model.space.n_text_vocab)
        for prompt in tqdm(prompts, desc="calibration: recording", disable=not progress):
            forcing.armed = force_images and prompt.draw
            for event in generate(model, tokenizer, prompt.messages, max_new_tokens=max_new_tokens,
                                  cfg_scale=cfg_scale, sampling=SamplingParams()):
                if isinstance(event, ImageDone):
                    grids.append(np.asarray(event.codes, np.int64))
        forcing.armed = False
        calls = {g: r.calls for g, r in recorders.items()}
    finally:
        model.backends.update(originals)
    log.info("recorded %s calls over %d prompts; kept %s; %d generated grids", calls, len(prompts),
             {g: len(r.samples()) for g, r in reservoirs.items()}, len(grids))
    return {g: r.samples() for g, r in reservoirs.items()}, grids


# --- pictures --------------------------------------------------------------------------------------
def folder_images(folder: Path | None) -> list[Image.Image]:
    """Every readable image directly in `folder` (sorted by name); none without a folder."""
    if folder is None:
        return []
    from calibration.errors import CalibrationError

    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"--images {folder} is not a folder")
    images = [load_image(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise CalibrationError(f"--images {folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def world_images(n: int, size: int, seed: int = CALIBRATION_SEED, heldout: bool = False) -> list[Image.Image]:
    """`n` rendered scenes of the shapes world (train split unless `heldout`)."""
    rng = np.random.default_rng(seed + 1)
    return [world.render(world.sample_scene(rng, heldout=heldout), size) for _ in range(n)]


def vision_samples(images: list[Image.Image], image_size: int) -> list[Feeds]:
    """Vision-encoder feeds, one image each: `pixel_values` float32 [1, 3, S, S]."""
    return [{"pixel_values": preprocess(im, image_size)[None]} for im in images]


def encode_codes(vqgan, images: list[Image.Image], image_size: int, batch: int = 16) -> list[np.ndarray]:
    """Code grids [h, w] int64 of `images` through the checkpoint's VQGAN encoder (PyTorch)."""
    import torch

    grids = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            pixels = np.stack([to_unit_range(im, image_size) for im in images[i:i + batch]])
            grids += list(vqgan.encode(torch.from_numpy(pixels)).numpy().astype(np.int64))
    return grids


def vq_samples(grids: list[np.ndarray]) -> list[Feeds]:
    """VQ-decoder feeds, one grid each: `codes` int64 [1, h, w]."""
    return [{"codes": np.asarray(g, np.int64)[None]} for g in grids]


def load_vqgan(checkpoint: Path):
    """The VQGAN (PyTorch, eval mode) of an ARMOR checkpoint folder; the language model is not loaded.

    Cached per file version: calibration and the accuracy report both encode pictures with it."""
    from runtime.constants import VQGAN_FILE

    path = Path(checkpoint).resolve() / VQGAN_FILE
    return _load_vqgan(path, path.stat().st_mtime_ns if path.exists() else 0)


@functools.lru_cache(maxsize=2)
def _load_vqgan(path: Path, mtime_ns: int):
    from safetensors.torch import load_file

    from training_ref.checkpoint import read_config
    from training_ref.vqgan import VQGAN, VQGANConfig

    vqgan = VQGAN(VQGANConfig.from_dict(read_config(path.parent).vqgan))
    vqgan.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return vqgan.eval()
