"""Backends: the engines that run a bundle's graphs, behind one small interface, chosen by name.

A graph runner (`Backend`) runs one graph: named numpy inputs in, named outputs out, and
reports its I/O so the factory can check it against the manifest. A backend module also
builds the decoder engine, which owns the KV cache (`runtime.cache.Stream`). Modules:

    ort       ONNX Runtime: every graph; devices cpu, cuda, tensorrt (execution providers)
    tensorrt  native TensorRT engines from the bundle's engines/ (the `gpu` extra)
    llamacpp  llama.cpp serves the decoder and text head from text.gguf, ORT the rest (`gguf` extra)

Each module exposes `open_engines(bundle, device, threads, **options) -> (graphs, decoder)`
and is imported only when chosen, so importing the runtime costs nothing until a bundle is
opened and a missing engine is one line naming the extra to install. No generation logic here.
"""

from __future__ import annotations

import importlib
import logging
from typing import Protocol

import numpy as np

from runtime.errors import ArmorError, BundleError

log = logging.getLogger(__name__)

# name -> (module, the Python package it needs, how to install it)
BACKENDS = {
    "ort": ("runtime.backends.ort", "onnxruntime", "pip install onnxruntime (a dependency of armor-edge)"),
    "tensorrt": ("runtime.backends.tensorrt", "tensorrt", "pip install 'armor-edge[gpu]' (TensorRT and cuda-python; "
                                                         "on a Jetson, JetPack's python3-libnvinfer)"),
    "llamacpp": ("runtime.backends.llamacpp", "llama_cpp", "pip install 'armor-edge[gguf]' (builds llama-cpp-python)"),
}


class DeviceError(ArmorError):
    """The requested backend or device is not available with the installed engine and hardware."""


class Backend(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]: ...

    def io(self) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
        """(name, element type, rank) of every input and output, in order."""
        ...

    def close(self) -> None: ...


def backend_module(name: str):
    """The backend module for `name`, imported now; one clear line if unknown or not installed."""
    if name not in BACKENDS:
        raise DeviceError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module, package, install = BACKENDS[name]
    try:
        importlib.import_module(package)
    except ImportError as e:
        raise DeviceError(f"backend {name!r} needs the Python package {package!r}, which is not installed here "
                          f"({e.__class__.__name__}: {e}); install it with: {install}") from e
    return importlib.import_module(module)


def check_io(bundle, name: str, runner) -> None:
    """Refuse, in one line, a graph whose inputs/outputs differ from the manifest's declaration."""
    from runtime.graphs import io_mismatch

    problem = io_mismatch(bundle.graphs[name], *runner.io())
    if problem:
        raise BundleError(f"{bundle.path}: {name} does not match the manifest's graph declaration: {problem} "
                          f"(a graph from another export, or an edited manifest); re-export the bundle")


def open_model(bundle, backend: str = "ort", device: str = "cpu", threads: int | None = None, **options):
    """A `runtime.model.BundleModel` over `bundle` on the chosen backend and device."""
    from runtime.model import BundleModel

    if threads is not None and (int(threads) != threads or threads < 1):
        raise DeviceError(f"threads must be a whole number >= 1, got {threads}")
    graphs, decoder = backend_module(backend).open_engines(bundle, device, threads, **options)
    return BundleModel(bundle, graphs, decoder, backend=backend, device=device)
