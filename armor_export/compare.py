"""One ONNX Runtime session factory and one comparator of graph outputs, torch-free.

`session(path)` opens a graph on the CPU with the same session options as the runtime.
`Comparator` keeps the worst error of a graph's outputs against reference outputs (numpy):

    passed  <=>  max |got - ref| <= atol + rtol * max |ref|

plus top-1 agreement of a logits output. The exporter compares with PyTorch through it
(verify.py), calibration compares quantized graphs with their fp32 source. It knows numpy
and ORT sessions; nothing about models or bundles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.backends.ort import session_options

TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (5e-2, 5e-2)}


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


class Comparator:
    """The worst error over every `check` of one graph, at a dtype's tolerance."""

    def __init__(self, dtype: str = "fp32", atol: float | None = None, rtol: float | None = None):
        default_atol, default_rtol = TOLERANCES[dtype]
        self.atol = default_atol if atol is None else atol
        self.rtol = default_rtol if rtol is None else rtol
        self.max_abs, self.passed, self.top1_total, self.top1_same = 0.0, True, 0, 0

    def check(self, ref: list[np.ndarray], got: list[np.ndarray], top1_output: int | None = None,
              valid=None, valid_rows=None) -> None:
        """`valid` [B, T] bool: compare only these positions of output 0; `valid_rows` [B, T]:
        likewise along axis 2 of the other outputs (the new key/value rows of a static decoder)."""
        for i, (r, g) in enumerate(zip(ref, got)):
            r, g = np.asarray(r, np.float32), np.asarray(g, np.float32)
            if valid is not None and i == 0:  # only real (non-padding) positions of the main output
                r, g = r[valid], g[valid]
            elif valid_rows is not None and i > 0:
                r, g = r.transpose(0, 2, 1, 3)[valid_rows], g.transpose(0, 2, 1, 3)[valid_rows]
            err = float(np.abs(r - g).max()) if r.size else 0.0
            self.max_abs = max(self.max_abs, err)
            if err > self.atol + self.rtol * float(np.abs(r).max() if r.size else 0.0) or not np.isfinite(err):
                self.passed = False
            if top1_output == i and r.size:
                rows_r, rows_g = r.reshape(-1, r.shape[-1]), g.reshape(-1, g.shape[-1])
                self.top1_total += rows_r.shape[0]
                self.top1_same += int((rows_r.argmax(-1) == rows_g.argmax(-1)).sum())

    def report(self) -> dict:
        out = {"passed": self.passed, "max_abs_diff": self.max_abs, "atol": self.atol, "rtol": self.rtol}
        if self.top1_total:
            out["top1_agreement"] = self.top1_same / self.top1_total
        return out
