"""One small backend interface and its ONNX Runtime implementation.

A backend runs one graph: named numpy inputs in, named outputs out; `close()`; usable as a
context manager. `OrtBackend` serves `device="cpu"`, `"cuda"` (CUDA EP) and `"tensorrt"`
(TensorRT EP), each only where the installed onnxruntime offers the provider *and* the
session really gets it; otherwise one clear sentence. onnxruntime is imported lazily, so
importing the runtime costs nothing until a bundle is opened. No generation logic here.

`OrtBackend.run_bound` is the IO-binding path: inputs may be numpy arrays or
`onnxruntime.OrtValue`s, the outputs named in `keep` come back as OrtValues left where the
session put them (CPU memory, or the CUDA device for "cuda"/"tensorrt"), so a KV cache can
go straight back in as the next step's input; the other outputs come back as numpy. What it
buys: on a GPU, the device -> host -> device round trip of the whole cache every step. On
CPU nothing to save (onnxruntime 1.32's `run` already hands CPU outputs over as numpy views
of its own buffers, no copy), only Python-side binding calls to pay. Either way the graph
itself still writes a new, one-longer `present` every step (its Concat), which no binding
avoids.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.errors import ArmorError

log = logging.getLogger(__name__)

DEVICES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# The OrtDevice type of the memory each device's EP computes in (the TensorRT EP uses CUDA memory).
MEMORY = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}


class DeviceError(ArmorError):
    """The requested device is not available with the installed engine and hardware."""


class Backend(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class OrtBackend:
    """One graph in an onnxruntime InferenceSession."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        if device not in DEVICES:
            raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        wanted = DEVICES[device]
        offered = ort.get_available_providers()
        if wanted[0] not in offered:
            extra = {"cuda": "onnxruntime-gpu", "tensorrt": "onnxruntime-gpu with TensorRT"}.get(device, "onnxruntime")
            raise DeviceError(f"device {device!r} needs {wanted[0]} ({extra}); this onnxruntime offers only "
                              f"{', '.join(offered)}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        # The graphs take turns: spinning workers of one session would steal the cores the next
        # session needs (measured: 1.3-1.6x more tokens/s on the 2-core CI machine without spinning).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [p for p in wanted if p in offered]
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ArmorError(f"cannot open {path}: {str(e).splitlines()[0]}") from e
        if self.session.get_providers()[0] != wanted[0]:
            raise DeviceError(f"device {device!r}: onnxruntime could not start {wanted[0]} (no usable device?); "
                              f"it fell back to {self.session.get_providers()[0]}")
        self.device = device
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # The EP's device id (its provider option, "0" unless the session was told otherwise).
        options = self.session.get_provider_options().get(self.session.get_providers()[0], {})
        self.memory = (MEMORY[device], int(options.get("device_id", 0)))

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self.output_names
        return dict(zip(names, self.session.run(names, feeds)))

    def run_bound(self, feeds: dict, keep: list[str] = ()) -> dict:
        """Run with an IO binding. `feeds` values: numpy arrays or OrtValues (e.g. a `keep`
        output of an earlier call). Returns every output: those in `keep` as OrtValues in the
        session's device memory (ORT allocates them), the rest as numpy."""
        import onnxruntime as ort

        keep = set(keep)
        if keep - set(self.output_names):
            raise ValueError(f"not outputs of this graph: {', '.join(sorted(keep - set(self.output_names)))}")
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:  # numpy outputs straight to host memory: no second copy on a GPU
            binding.bind_output(name, *(self.memory if name in keep else ("cpu", 0)))
        self.session.run_with_iobinding(binding)
        # get_outputs() follows the binding order; .numpy() of a host OrtValue is a view that keeps it alive
        return {name: v if name in keep else v.numpy()
                for name, v in zip(self.output_names, binding.get_outputs())}

    def close(self) -> None:
        self.session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
