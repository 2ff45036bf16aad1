"""The bundle manifest: files with role, dtype and sha256, the model summary, the graph I/O,
the verification report. Written last and atomically (temporary file, then rename).

Also the fp16 conversion of an exported graph. It knows the manifest layout; the runtime
reads it back in `runtime.bundle`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx

from armor_export.graphs import save_onnx
from runtime.bundle import sha256
from runtime.constants import BUNDLE_FORMAT, BUNDLE_SCHEMA_VERSION, MANIFEST_FILE
from runtime.graphs import GraphSpec


def build_manifest(out: Path, summary: dict, specs: dict[str, GraphSpec], files: dict[str, dict], dtype: str,
                   report: dict, tokenizer_config: Path, source: str, export_seconds: float) -> dict:
    from armor_export import __version__

    listed = {}
    for name, entry in sorted(files.items()):
        path = out / name
        listed[name] = {**entry, "dtype": entry.get("dtype", dtype), "bytes": path.stat().st_size,
                        "sha256": sha256(path)}
    elem = "float16" if dtype == "fp16" else "float32"
    graphs = {}
    for name, spec in specs.items():
        d = spec.to_dict()
        for t in d["inputs"] + d["outputs"]:
            t["dtype"] = elem if t["dtype"] == "float" else t["dtype"]
        graphs[name] = {"file": spec.filename, **d}
    chat_template = json.loads(Path(tokenizer_config).read_text()).get("chat_template")
    return {
        "format": BUNDLE_FORMAT, "schema_version": BUNDLE_SCHEMA_VERSION, "exporter": f"armor-export {__version__}",
        "source": source, "dtype": dtype, "model": summary, "chat_template": chat_template,
        "graphs": graphs, "files": listed, "verification": report,
        "export_seconds": round(export_seconds, 2),
    }


def write_manifest(out: Path, manifest: dict) -> Path:
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out / MANIFEST_FILE)
    return out / MANIFEST_FILE


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
