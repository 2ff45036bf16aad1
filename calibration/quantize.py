"""Quantizing one ONNX graph: static INT8 as explicit Q/DQ, or weight-only `MatMulNBits`.

- `quantize_qdq`: onnxruntime's `quantize_static` in `QuantFormat.QDQ`, weights per channel,
  on the op types a graph keeps its accuracy with (every op type destroys a decoder;
  MatMul with a constant weight only holds), ranges calibrated on real feeds (a list of
  `{input_name: ndarray}`) with minmax, entropy or percentile. Nodes can be excluded by name;
  a calibration cache lets the sensitivity pass re-quantize without re-calibrating.
- `quantize_weights`: `MatMulNBits` (4 or 8 bits, symmetric, one scale per `block_size`
  weights along K) for every MatMul whose weight is a constant; the graph's activations stay
  float (its `accuracy_level` lets the CPU kernel compute in int8, see there). onnxruntime 1.32
  runs bits=8 as well as bits=4 on CPU (checked by running both).

Graph inputs and outputs keep their float types. This module knows onnxruntime's
quantization tools and ONNX node types; it knows nothing about bundles, manifests or which
graph gets which treatment (calibrate.py decides that).
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from calibration.errors import CalibrationError

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")


class _Reader:
    """A list of feeds as onnxruntime's CalibrationDataReader (get_next / rewind)."""

    def __init__(self, feeds: list[dict]):
        self.feeds = feeds
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.feeds[start_index:end_index])

    def __len__(self) -> int:
        return len(self.feeds)


def _calibration_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise CalibrationError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_onnxruntime():
    """quantize_static logs (on the root logger) advice to run its pre-processing, which only
    folds constants here (onnxruntime optimizes the graphs at load anyway), and its histogram
    calibrators print progress to stdout: the advice is dropped, the prints go to debug logging."""
    f = _DropAdvice()
    root = logging.getLogger()
    root.addFilter(f)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        root.removeFilter(f)
        if printed.getvalue().strip():
            log.debug("onnxruntime.quantization: %s", printed.getvalue().strip())


def weight_nodes(model: onnx.ModelProto, op_types: tuple[str, ...]) -> list[str]:
    """Names of the nodes of `op_types` whose second input (the weight) is an initializer."""
    inits = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in op_types and len(n.input) > 1 and n.input[1] in inits]


def quantize_qdq(src: Path, dst: Path, feeds: list[dict], *, op_types: tuple[str, ...] = ("MatMul",),
                 method: str = "minmax", exclude: list[str] | None = None, symmetric_activations: bool = False,
                 cache: Path | None = None) -> list[str]:
    """Static INT8 Q/DQ of `src` into `dst` (its weights in `dst`.data beside it).

    Quantizes the weight-bearing nodes of `op_types` minus `exclude`; returns their names.
    Activations are uint8 asymmetric (onnxruntime's CPU default) or, with
    `symmetric_activations`, int8 with zero point 0 (what TensorRT requires). `cache` keeps
    the calibrated ranges, so a second call with other exclusions skips calibration."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))
    nodes = [n for n in weight_nodes(model, op_types) if n not in set(exclude or ())]
    if not nodes:
        raise CalibrationError(f"{src.name} has no {'/'.join(op_types)} node with a constant weight to quantize")
    if not feeds:
        raise CalibrationError(f"no calibration feeds for {src.name}")
    # (CalibMaxIntermediateOutputs would bound memory, but onnxruntime 1.32 fails with "No data is
    # collected" when the number of feeds is a multiple of it.)
    extra = {"MatMulConstBOnly": True, "ActivationSymmetric": symmetric_activations}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    if method != "minmax":
        # The histogram calibrators stack each tensor's values over the feeds, which fails when
        # the feeds differ in shape (sequence and cache lengths do): one feed per collection.
        extra["CalibStridedMinMax"] = 1
    with _quiet_onnxruntime():
        quantize_static(
            model, str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
            per_channel=True, activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_quantize=nodes, calibrate_method=_calibration_method(method),
            extra_options=extra, calibration_cache_path=str(cache) if cache else None,
            use_external_data_format=True)  # weights beside the graph: no 2 GiB protobuf limit
    return nodes


def _nbits_module():
    """onnxruntime's matmul_nbits_quantizer, imported without its side effects: on import it
    calls logging.basicConfig(level=INFO) (undone here unless the application configured
    logging first) and it logs every node it skips at INFO (raised to WARNING)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.WARNING)
    return matmul_nbits_quantizer


def quantize_weights(src: Path, dst: Path, *, bits: int = 4, block_size: int = 32, accuracy_level: int = 4,
                     eight_bit: tuple[str, ...] = ()) -> list[str]:
    """Weight-only `MatMulNBits` of every constant-weight MatMul of `src` into `dst`; returns their names.

    The nodes named in `eight_bit` get 8 bits whatever `bits` is (an output head in a 4-bit graph).

    `accuracy_level` is the node's minimum compute precision (0 unset, 1 fp32, 2 fp16,
    3 bf16, 4 int8). The graph's activations stay float either way; with 4 the CPU kernel
    quantizes each activation block to int8 on the fly: 8-bit weights have no fast kernel at level
    1 on this CPU (docs/benchmarks.md), so the default is 4. Execution providers without an int8 kernel ignore it."""
    nbits = _nbits_module()
    DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer = nbits.DefaultWeightOnlyQuantConfig, nbits.MatMulNBitsQuantizer

    if bits not in (4, 8):
        raise CalibrationError(f"weight-only quantization takes 4 or 8 bits, got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise CalibrationError(f"--block-size must be a power of two >= 16, got {block_size}")
    model = onnx.load(str(src))
    nodes = weight_nodes(model, ("MatMul",))
    eight_bit = tuple(n for n in eight_bit if n in nodes)
    passes = [(8, [n for n in nodes if n not in eight_bit]), (bits, [])] if eight_bit and bits != 8 else [(bits, [])]
    for n_bits, skip in passes:  # a node made MatMulNBits by the first pass is no MatMul for the second
        config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, bits=n_bits,
                                              accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",))
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=skip, algo_config=config)
        quantizer.process()
        model = quantizer.model.model
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=dst.name + ".data")  # no 2 GiB protobuf limit
    return nodes


def op_counts(path: Path) -> dict[str, int]:
    """How many nodes of each op type a graph has (its weights are not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in model.graph.node))


SCRATCH_PREFIX = ".armor-calibrate-scratch-"


@contextlib.contextmanager
def scratch_dir(parent: Path):
    """A scratch folder inside `parent` (the bundle being written) that is also the process's
    temporary folder while it lives, so ORT's quantization tools write there too: a killed run
    leaves its files inside a folder without a manifest, and the next run removes them."""
    for stale in Path(parent).glob(SCRATCH_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=parent) as tmp:
        tempfile.tempdir = tmp
        try:
            yield tmp
        finally:
            tempfile.tempdir = previous


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity over the last axis (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return float(np.mean(num / np.maximum(den, 1e-12)))
