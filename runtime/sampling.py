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
        p = self.params
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        order = np.argsort(-logits, kind="stable")  # best first; ties by index
        scaled = logits[order] / p.temperature
        if p.top_k:
            scaled = scaled[: p.top_k]
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            probs = probs[:keep] / probs[:keep].sum()
        cdf = np.cumsum(probs)
        idx = min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")), len(cdf) - 1)
        return int(order[idx])
