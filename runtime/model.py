"""One opened bundle as the model calls the generation loop makes.

`BundleModel` holds the graph runners of one backend (built by `runtime.backends.open_model`)
and the decoder engine, which owns the KV cache. The loop calls:

    stream = model.start(ids, image_embeds)    # prefill a batch-1 decoder stream (runtime.cache.Stream)
    cursor = model.start_image(stream)         # the adapter + visual head over the stream's context
    model.encode_images(pixels), model.decode_image(codes)

and drives streams and cursors through their own operations. `embed`, `text_logits` and
`image_logits` are the raw graph calls (calibration and accuracy reports use them). Floats
are cast to the bundle's dtype at the graph edges and come back float32. It knows graph names
and dtypes; it knows nothing about modes, sampling or guidance (generation.py), nor which
engine runs a graph (backends/).
"""

from __future__ import annotations

import numpy as np

from runtime.bundle import Bundle
from runtime.cache import ImageCursor, Stream
from runtime.switch import TokenSpace


class BundleModel:
    def __init__(self, bundle: Bundle, backends: dict, decoder, backend: str = "ort", device: str = "cpu"):
        m = bundle.model
        self.bundle, self.backends, self.decoder = bundle, backends, decoder
        self.backend_name, self.device = backend, device
        self.table = np.asarray(bundle.embeddings)  # a plain view of the memory map: fast gathers
        ids = m["special_token_ids"]
        self.space = TokenSpace.from_ids(ids, m["n_text_vocab"], m["n_codes"])
        self.image_token_id = ids["image_context"]
        self.n_image_tokens = m["n_image_tokens"]
        self.vision_size = m["vision_image_size"]
        self.grid = tuple(m["image_grid"])
        self.context_start = m["adapter_context_start"]
        self.context_length = min(m["context_length"], decoder.capacity) if decoder else m["context_length"]
        self.cfg_scale = m["cfg_scale"]  # the model's default guidance
        self.adapter_layers = m["adapter_layers"]
        self.adapter_shape = (m["adapter_heads"], m["hidden_size"] // m["adapter_heads"])
        self.float = np.float16 if bundle.dtype == "fp16" else np.float32

    @classmethod
    def open(cls, bundle: Bundle, backend: str = "ort", device: str = "cpu", threads: int | None = None,
             **options) -> "BundleModel":
        from runtime.backends import open_model

        return open_model(bundle, backend, device, threads, **options)

    def close(self) -> None:
        for b in self.backends.values():
            b.close()
        if self.decoder is not None:
            self.decoder.close()

    def graph_seconds(self) -> float:
        """Seconds spent inside graph and engine calls since the model was opened."""
        return sum(getattr(b, "seconds", 0.0) for b in self.backends.values()) + getattr(self.decoder, "seconds", 0.0)

    # --- streams ---------------------------------------------------------------------------------
    def start(self, ids, image_embeds: np.ndarray | None = None) -> Stream:
        """A batch-1 decoder stream prefilled with `ids` (input-image embeddings [n, H] fill the
        `<IMG_CONTEXT>` placeholders in order)."""
        if image_embeds is not None:
            image_embeds = np.asarray(image_embeds).reshape(-1, image_embeds.shape[-1]).astype(self.float)
        return self.decoder.start(ids, image_embeds, self.text_logits)

    def start_image(self, stream: Stream) -> ImageCursor:
        """The adapter's cursor over an image that starts after `stream`'s last token (`<imgbos>`)."""
        hidden, mask = stream.context()
        return self.image_cursor(hidden, mask)

    def image_cursor(self, hidden: np.ndarray, mask: np.ndarray) -> ImageCursor:
        """The adapter's cursor over an explicit context [B, L, H] with mask [B, L]."""
        return ImageCursor(lambda feeds: self.backends["visual_head"].run(feeds), self.float, self.adapter_layers,
                           self.adapter_shape, self.context_start, hidden, mask)

    # --- graph calls -----------------------------------------------------------------------------
    def embed(self, ids: np.ndarray) -> np.ndarray:
        """ids [B, T] unified -> [B, T, H] in the bundle's float type (a gather, no graph)."""
        return np.asarray(self.table[np.asarray(ids)], dtype=self.float)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        out = self.backends["vision_encoder"].run({"pixel_values": pixels.astype(self.float)})
        return out["image_embeds"]  # [N, n_img, H]

    def text_logits(self, hidden: np.ndarray) -> np.ndarray:
        """hidden [B, T, H] -> [B, T, V + 1] float32."""
        out = self.backends["text_head"].run({"hidden_states": np.asarray(hidden, self.float)})
        return out["text_logits"].astype(np.float32, copy=False)

    def decode_image(self, codes: np.ndarray) -> np.ndarray:
        """codes [B, h, w] int64 -> pixels [B, 3, S, S] float32 in [-1, 1]."""
        return self.backends["vq_decoder"].run({"codes": codes.astype(np.int64)})["pixels"].astype(np.float32)
