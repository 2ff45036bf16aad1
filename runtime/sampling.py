"""Token sampling over a 1-D logits vector: greedy, temperature, top-k, top-p, seeded.

Numpy only, shared by the PyTorch reference and the runtime so that the same seed gives the
same tokens on every backend. It knows nothing about heads, modes or guidance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import SamplingError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0

    def __post_init__(self):
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise SamplingError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise SamplingError(f"top_k must be a whole number >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise SamplingError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise SamplingError(f"seed must be a whole number >= 0, got {self.seed}")


class Sampler:
    """Draws one token id per call from float logits; one seeded generator per generation."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.Generator(np.random.PCG64(params.seed))

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if self.params.temperature == 0.0:
            return int(np.argmax(logits))
        order, probs = self._support(logits)
        return int(order[self._index(np.cumsum(probs))])

    @property
    def greedy(self) -> bool:
        return self.params.temperature == 0.0

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The distribution `__call__` samples from, as a full vector [len(logits)] (float64;
        greedy: one-hot at the argmax)."""
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        out = np.zeros(len(logits))
        if self.greedy:
            out[int(np.argmax(logits))] = 1.0
        else:
            order, probs = self._support(logits)
            out[order[: len(probs)]] = probs
        return out

    def draw(self, probs: np.ndarray) -> int:
        """One index from an explicit distribution (need not be normalised; greedy: its argmax)."""
        probs = np.asarray(probs, dtype=np.float64).reshape(-1)
        if self.greedy:
            return int(np.argmax(probs))
        return self._index(np.cumsum(probs))

    def uniform(self) -> float:
        """One draw from U[0, 1) off the same seeded generator."""
        return float(self.rng.random())

    def _support(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token order best first, the probabilities of its first len(probs) tokens)."""
        p = self.params
        order = np.argsort(-logits, kind="stable")  # best first; ties by index
        scaled = logits[order] / p.temperature
        if p.top_k:
            scaled = scaled[: p.top_k]
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            probs = probs[:keep] / probs[:keep].sum()
        return order, probs

    def _index(self, cdf: np.ndarray) -> int:
        return min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")), len(cdf) - 1)
