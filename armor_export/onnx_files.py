"""Writing ONNX graph files: external data past a size, the fp16 conversion, node order.

Torch-free: the exporter and calibration both write their graphs through here. It knows
ONNX files and protobuf's limits; it knows nothing about models, bundles or manifests.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import EncodeError

EXTERNAL_DATA_BYTES = 256 * 2**20  # graphs above this keep their weights in `{name}.onnx.data`


def save_onnx(proto: onnx.ModelProto, path: Path) -> list[Path]:
    """Save a graph, with external data (`{name}.data`) above EXTERNAL_DATA_BYTES."""
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    if _byte_size(proto) > EXTERNAL_DATA_BYTES:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data]
    onnx.save_model(proto, str(path))
    return [path]


def _byte_size(proto: onnx.ModelProto) -> float:
    try:
        return proto.ByteSize()
    except (ValueError, OverflowError, EncodeError):  # past protobuf's 2 GiB limit
        return float("inf")


def file_size(paths: list[Path]) -> int:
    return sum(os.path.getsize(p) for p in paths)


PROTOBUF_LIMIT = 2**31 - 1  # bytes: a larger ModelProto cannot be serialized in one piece


def convert_fp16(path: Path, infer_on_disk: bool | None = None) -> list[Path]:
    """Convert a float32 graph to float16 weights, compute and float I/O, in place.

    Normalisation statistics and softmax stay float32 inside the graph (onnxruntime's
    converter blocks those ops); int64 inputs (ids, masks, codes) are untouched. The
    converter's own shape inference serializes the whole model, which fails past protobuf's
    2 GiB; such graphs (or `infer_on_disk=True`) get their shapes from
    `onnx.shape_inference.infer_shapes_path`, which reads the external data from disk."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = Path(path)
    if infer_on_disk is None:
        infer_on_disk = sum(f.stat().st_size for f in path.parent.glob(path.name + "*")) > PROTOBUF_LIMIT
    if infer_on_disk:
        shaped = path.with_name(path.stem + ".shapes.onnx")  # beside the graph: its external data stays valid
        try:
            onnx.shape_inference.infer_shapes_path(str(path), str(shaped))
            proto = onnx.load(str(shaped))
        finally:
            shaped.unlink(missing_ok=True)
    else:
        proto = onnx.load(str(path))
    proto = convert_float_to_float16(proto, keep_io_types=False, disable_shape_infer=infer_on_disk,
                                     op_block_list=["LayerNormalization", "SimplifiedLayerNormalization",
                                                    "ReduceMean", "Pow", "Sqrt", "Softmax",
                                                    "InstanceNormalization", "GroupNormalization"])
    _topological_sort(proto.graph)  # the converter appends its Casts out of order
    return save_onnx(proto, path)


def _topological_sort(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = [onnx.NodeProto.FromString(n.SerializeToString()) for n in graph.node], []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise RuntimeError(f"graph has a cycle or a missing input near node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
