"""The bundle's graphs as model calls in numpy: what the generation loop talks to.

`BundleModel` wraps one backend per graph and speaks the declared names (runtime.graphs):
embed (a gather from the memory-mapped table), encode_images, decode, text_logits,
image_logits, decode_image. It casts floats to the bundle's dtype at the graph edges and
returns float32. It knows graph names and dtypes; it knows nothing about modes, sampling or
guidance (generation.py), and nothing about which engine runs a graph (backends.py).

With `io_binding=True` the decoder runs through the backend's IO-binding path
(`OrtBackend.run_bound`): `decode` then returns the cache as `onnxruntime.OrtValue`s on the
session's device and takes them (or numpy, e.g. `empty_past`) back, so the cache does not
pass through numpy between steps (an OrtValue's `.numpy()` gives a host copy where a caller
must slice or concatenate it). The default (False) keeps every cache in numpy.
"""

from __future__ import annotations

import numpy as np

from runtime.backends import Backend, OrtBackend
from runtime.bundle import Bundle
from runtime.graphs import past_names, present_names
from runtime.switch import TokenSpace

GRAPHS = ("vision_encoder", "decoder", "text_head", "visual_head", "vq_decoder")


class BundleModel:
    def __init__(self, bundle: Bundle, backends: dict[str, Backend], io_binding: bool = False):
        m = bundle.model
        self.bundle, self.backends, self.io_binding = bundle, backends, io_binding
        if io_binding and not hasattr(backends["decoder"], "run_bound"):
            raise ValueError(f"io_binding needs a backend with run_bound; the decoder's is "
                             f"{type(backends['decoder']).__name__}")
        self.table = np.asarray(bundle.embeddings)  # a plain view of the memory map: fast gathers
        ids = m["special_token_ids"]
        self.space = TokenSpace.from_ids(ids, m["n_text_vocab"], m["n_codes"])
        self.image_token_id = ids["image_context"]
        self.n_image_tokens = m["n_image_tokens"]
        self.vision_size = m["vision_image_size"]
        self.grid = tuple(m["image_grid"])
        self.context_start = m["adapter_context_start"]
        self.context_length = m["context_length"]
        self.cfg_scale = m["cfg_scale"]  # the model's default guidance
        self.n_layers, self.adapter_layers = m["n_layers"], m["adapter_layers"]
        self.kv_shape = (m["n_kv_heads"], m["head_dim"])
        self.adapter_shape = (m["adapter_heads"], m["hidden_size"] // m["adapter_heads"])
        self.float = np.float16 if bundle.dtype == "fp16" else np.float32
        self._past, self._present = past_names(self.n_layers), present_names(self.n_layers)
        self._apast, self._apresent = past_names(self.adapter_layers), present_names(self.adapter_layers)

    @classmethod
    def open(cls, bundle: Bundle, device: str = "cpu", threads: int | None = None,
             io_binding: bool = False) -> "BundleModel":
        backends = {}
        try:
            for g in GRAPHS:
                backends[g] = OrtBackend(bundle.graph_path(g), device, threads)
        except Exception:
            for b in backends.values():
                b.close()
            raise
        return cls(bundle, backends, io_binding)

    def close(self) -> None:
        for b in self.backends.values():
            b.close()

    # --- caches --------------------------------------------------------------------------------
    def empty_past(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.kv_shape[0], 0, self.kv_shape[1]), self.float) for _ in self._past]

    def empty_adapter_past(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.adapter_shape[0], 0, self.adapter_shape[1]), self.float) for _ in self._apast]

    # --- graph calls ---------------------------------------------------------------------------
    def embed(self, ids: np.ndarray) -> np.ndarray:
        """ids [B, T] unified -> [B, T, H] in the bundle's float type (a gather, no graph)."""
        return np.asarray(self.table[np.asarray(ids)], dtype=self.float)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        out = self.backends["vision_encoder"].run({"pixel_values": pixels.astype(self.float)})
        return out["image_embeds"]  # [N, n_img, H]

    def decode(self, embeds: np.ndarray, mask: np.ndarray, pos: np.ndarray, past: list):
        """-> (hidden [B, T, H], present list), the cache in the declared layout [B, kv, S, D]:
        numpy, or OrtValues with `io_binding` (`past` may be either)."""
        feeds = {"inputs_embeds": embeds.astype(self.float, copy=False), "attention_mask": mask,
                 "position_ids": pos, **dict(zip(self._past, past))}
        decoder = self.backends["decoder"]
        out = decoder.run_bound(feeds, keep=self._present) if self.io_binding else decoder.run(feeds)
        return out["hidden_states"], [out[n] for n in self._present]

    def text_logits(self, hidden: np.ndarray) -> np.ndarray:
        return self.backends["text_head"].run({"hidden_states": hidden})["text_logits"].astype(np.float32)

    def image_logits(self, hidden: np.ndarray, mask: np.ndarray, pos: np.ndarray, past: list[np.ndarray]):
        """hidden [B, T, H], mask [B, P+T], adapter positions [B, T] -> (logits [B, T, n_codes + 2], present)."""
        feeds = {"hidden_states": hidden, "attention_mask": mask, "position_ids": pos, **dict(zip(self._apast, past))}
        out = self.backends["visual_head"].run(feeds)
        return out["image_logits"].astype(np.float32), [out[n] for n in self._apresent]

    def decode_image(self, codes: np.ndarray) -> np.ndarray:
        """codes [B, h, w] int64 -> pixels [B, 3, S, S] float32 in [-1, 1]."""
        return self.backends["vq_decoder"].run({"codes": codes.astype(np.int64)})["pixels"].astype(np.float32)
