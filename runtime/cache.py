"""The decoder streams the generation loop drives, and the adapter's cursor over one image.

A `Stream` is one sequence (batch 1) or a CFG pair (batch 2: row 0 conditional, row 1
unconditional) in an engine's decoder KV cache. The loop drives it through a few operations
and never touches its arrays:

    hidden = stream.append(ids)        # the same new tokens on every row -> hidden [B, T, H]
    logits = stream.text_logits()      # the text head at each row's newest position -> [B, V + 1]
    pair = cond.pair(uncond)           # a batch-2 stream for CFG (both inputs are consumed)
    cond = pair.row(0)                 # one row back as a batch-1 stream (the pair is consumed)
    stream.truncate(length)            # roll back to `length` tokens of row 0 (as many off every row)
    stream.length                      # tokens held for row 0
    hidden, mask = stream.context()    # every hidden state so far [B, L, H], mask [B, L] (0 = padding)

Each engine subclasses `Stream` with how its cache does these (`_forward`, `_pair`, `_row`,
`_truncate`): ORT with numpy/OrtValue arrays or a preallocated static buffer, llama.cpp with
its sequences, TensorRT with device buffers. What every engine shares lives here: the kept
hidden states (an image's context, always host arrays), the left padding of a pair's shorter
row, and hence each row's positions. `ImageCursor` is the adapter + visual head graph with its
own cache over one image: it reads the context once, then one or more codes per call.

It knows tensor layouts and padding; it knows nothing about tokens, modes or sampling.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from runtime.errors import ArmorError


class ContextFull(ArmorError):
    """A stream was asked to hold more tokens than its engine's capacity."""


class Stream:
    """Host-side state common to every engine: kept hidden states and per-row left padding."""

    def __init__(self, pieces: list[np.ndarray], pads: np.ndarray, text_head: Callable[[np.ndarray], np.ndarray]):
        self._pieces = pieces  # hidden states [B, T_i, H], in order; padding rows are zeros
        self.pads = pads  # [B] int64: left padding per row (row 0 of a CFG pair is never padded)
        self._text_head = text_head
        self.consumed = False

    # --- what the loop reads ------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return len(self.pads)

    @property
    def width(self) -> int:
        """Positions of the padded layout (the longest row)."""
        return sum(p.shape[1] for p in self._pieces)

    @property
    def length(self) -> int:
        """Tokens held for row 0."""
        return self.width - int(self.pads[0])

    @property
    def last(self) -> np.ndarray:
        """The newest hidden state of every row [B, 1, H]."""
        return self._pieces[-1][:, -1:]

    def positions(self, n_new: int) -> np.ndarray:
        """Positions [B, n_new] of the next tokens: each row counts its own real tokens."""
        return (self.width - self.pads)[:, None] + np.arange(n_new, dtype=np.int64)[None]

    def mask(self, n_new: int = 0) -> np.ndarray:
        """Attention mask [B, width + n_new] over past + new tokens (0 = left padding)."""
        return (np.arange(self.width + n_new)[None] >= self.pads[:, None]).astype(np.int64)

    def context(self) -> tuple[np.ndarray, np.ndarray]:
        """Every hidden state so far [B, L, H] (padding rows zero) and its mask [B, L]."""
        self._check()
        if len(self._pieces) > 1:
            self._pieces = [np.concatenate(self._pieces, 1)]
        return self._pieces[0], self.mask()

    def text_logits(self) -> np.ndarray:
        """Text-head logits [B, V + 1] at every row's newest position (float32)."""
        self._check()
        return self._text_head(self.last)[:, -1]

    # --- the operations -------------------------------------------------------------------------
    def append(self, ids, image_embeds: np.ndarray | None = None) -> np.ndarray:
        """Feed the same `ids` [T] to every row (input-image embeddings, [n, H], fill the
        image placeholders in order) -> hidden states [B, T, H]."""
        self._check()
        ids = np.asarray(ids, np.int64).reshape(-1)
        hidden = self._forward(np.broadcast_to(ids[None], (self.batch, len(ids))), image_embeds)
        self._pieces.append(hidden)
        if len(self._pieces) > 64:  # keep the list short; context() concatenates anyway
            self._pieces = [np.concatenate(self._pieces, 1)]
        return hidden

    def pair(self, other: "Stream") -> "Stream":
        """Rows [self, other] as one batch-2 stream, the shorter one left-padded."""
        self._check()
        other._check()
        if self.batch != 1 or other.batch != 1 or type(other) is not type(self):
            raise ValueError("pair() takes two batch-1 streams of the same engine")
        width = max(self.width, other.width)
        pads = np.array([width - self.width, width - other.width], np.int64)
        a, b = self.context()[0], other.context()[0]
        hidden = np.zeros((2, width, a.shape[2]), a.dtype)
        hidden[0, pads[0]:], hidden[1, pads[1]:] = a[0], b[0]
        out = self._pair(other, pads)
        out._pieces, out.pads, out._text_head = [hidden], pads, self._text_head
        self.consumed = other.consumed = True
        return out

    def row(self, i: int) -> "Stream":
        """Row `i` as a batch-1 stream (its padding dropped)."""
        self._check()
        hidden = self.context()[0][i:i + 1, int(self.pads[i]):]
        out = self._row(i)
        out._pieces, out.pads, out._text_head = [hidden], np.zeros(1, np.int64), self._text_head
        self.consumed = True
        return out

    def truncate(self, length: int) -> None:
        """Keep the first `length` tokens of row 0 and drop as many newest tokens off every row."""
        self._check()
        drop = self.length - int(length)
        if drop < 0 or drop > self.width - int(self.pads.max()):
            raise ValueError(f"cannot truncate a stream of {self.length} tokens to {length}")
        if drop == 0:
            return
        self._truncate(self.width - drop)
        hidden = self.context()[0]
        self._pieces = [hidden[:, : hidden.shape[1] - drop]]

    # --- what an engine implements ------------------------------------------------------------
    def _forward(self, ids: np.ndarray, image_embeds: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def _pair(self, other: "Stream", pads: np.ndarray) -> "Stream":
        raise NotImplementedError

    def _row(self, i: int) -> "Stream":
        raise NotImplementedError

    def _truncate(self, width: int) -> None:
        """Keep the first `width` positions of the padded layout."""
        raise NotImplementedError

    def _check(self) -> None:
        if self.consumed:
            raise RuntimeError("this stream was consumed by pair() or row(); use the stream they returned")


def adapter_positions(context_start: int, mask: np.ndarray, n_segment: int) -> np.ndarray:
    """Adapter positions [B, L] for tokens whose attention mask is `mask` [B, L]: the first
    L - n_segment are context (token j of a row, left padding skipped, at context_start + j),
    the last n_segment the image segment (`<imgbos>` = 0, then its codes 1, 2, ...)."""
    context = context_start + np.maximum(np.cumsum(mask[:, : mask.shape[1] - n_segment], 1) - 1, 0)
    return np.concatenate([context, np.broadcast_to(np.arange(n_segment), (mask.shape[0], n_segment))], 1)


class ImageCursor:
    """The adapter + visual head over one image, with the adapter's own KV cache.

    `hidden` [B, L, H] is the context (every decoder hidden state up to and including
    `<imgbos>`), `mask` [B, L] its padding. `prefill()` reads it once and gives the logits for
    the first code; `append(hidden)` takes the decoder hidden states of fed codes [B, T, H]
    and gives the logits after each; `truncate(n)` keeps `n` segment tokens (`<imgbos>` is 1)."""

    def __init__(self, run: Callable[[dict], dict], float_type, n_layers: int, shape: tuple[int, int],
                 context_start: int, hidden: np.ndarray, mask: np.ndarray):
        from runtime.graphs import past_names, present_names

        self._run, self.float = run, float_type
        self._past_names, self._present_names = past_names(n_layers), present_names(n_layers)
        b = hidden.shape[0]
        self._past = [np.zeros((b, shape[0], 0, shape[1]), float_type) for _ in self._past_names]
        self._context, self._context_mask, self._start = hidden, mask, context_start
        self.segment = 0  # segment tokens read so far
        self.calls = 0

    def prefill(self) -> np.ndarray:
        """Logits [B, n_codes + 2] for the first code, after reading the context."""
        if self.segment:
            raise RuntimeError("the context was read already")
        pos = adapter_positions(self._start, self._context_mask, 1)
        logits = self._call(self._context, self._context_mask, pos)
        self.segment = 1
        return logits[:, -1]

    def append(self, hidden: np.ndarray) -> np.ndarray:
        """Logits [B, T, n_codes + 2] after each of the T codes whose hidden states are given."""
        if not self.segment:
            raise RuntimeError("prefill() first")
        t = hidden.shape[1]
        mask = np.concatenate([self._context_mask, np.ones((hidden.shape[0], self.segment - 1 + t), np.int64)], 1)
        pos = np.broadcast_to(np.arange(self.segment, self.segment + t, dtype=np.int64)[None], hidden.shape[:2])
        logits = self._call(hidden, mask, np.ascontiguousarray(pos))
        self.segment += t
        return logits

    def truncate(self, segment: int) -> None:
        if not 1 <= segment <= self.segment:
            raise ValueError(f"cannot truncate an image cursor at {self.segment} segment tokens to {segment}")
        keep = self._context_mask.shape[1] - 1 + segment
        self._past = [p[:, :, :keep] for p in self._past]
        self.segment = segment

    def _call(self, hidden, mask, pos) -> np.ndarray:
        feeds = {"hidden_states": np.asarray(hidden, self.float), "attention_mask": mask, "position_ids": pos,
                 **dict(zip(self._past_names, self._past))}
        out = self._run(feeds)
        self._past = [out[n] for n in self._present_names]
        self.calls += 1
        return np.asarray(out["image_logits"], np.float32)


class Timed:
    """A graph runner that adds the seconds spent in `run` to `seconds` (the loop's overhead is
    the rest), delegating everything else."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def run(self, feeds, outputs=None):
        t0 = time.perf_counter()
        try:
            return self.inner.run(feeds, outputs)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1

    def __getattr__(self, name):
        return getattr(self.inner, name)
