"""Bytes read and FLOPs of one call of each bundle graph, measured from the ONNX graphs.

For every graph and optimization profile (armor_export.tensorrt.graph_profiles: the decoder's
prefill and decode calls, batch 1 and the CFG pair), the graph is loaded without its weights,
its inputs are given the profile's opt shapes (batch set to 1 or 2), shape inference runs
(onnxruntime's symbolic one, which follows shapes computed inside the graph), and then:
- `weight_bytes`: every initializer and Constant as stored (int8 weights 1 byte, fp16 2, a
  MatMulNBits' packed nibbles at their size), read once per call;
- `io_bytes`: the graph's inputs and outputs at those shapes (the static KV cache is an input:
  the whole capacity is read every step, as the static-cache attention does);
- `flops`: 2 x multiply-adds of the matrix products (MatMul, Gemm, Conv, ConvTranspose,
  MatMulNBits, MatMulInteger); elementwise ops are left out (a few percent of the FLOPs, and
  their traffic stays on chip when fused).
A node whose shapes inference cannot resolve is counted in `unresolved` (never guessed).

armor-bench --project turns these into per-device rooflines (runtime/project.py). The TensorRT
export records them in `manifest["tensorrt"]["costs"]`; `python -m armor_export.costs BUNDLE`
prints them for any static-cache bundle (armor-bench runs it when the manifest has none). It
knows ONNX graphs and profiles, not devices.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference

from runtime.errors import ArmorError

log = logging.getLogger(__name__)
MATRIX_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulNBits", "MatMulInteger")
BATCHES = (1, 2)  # a text step, and the CFG pair of an image step


class CostError(ArmorError):
    pass


def _itemsize(elem_type: int) -> float:
    if elem_type in (TensorProto.INT4, TensorProto.UINT4):
        return 0.5
    return float(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)


def _tensor_bytes(t: TensorProto) -> float:
    return float(np.prod(t.dims, dtype=np.int64)) * _itemsize(t.data_type)


def weight_bytes(model: onnx.ModelProto) -> float:
    """Initializers and Constant-node tensors as stored (external data counted from their dims)."""
    total = sum(_tensor_bytes(t) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            total += sum(_tensor_bytes(a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return total


def _with_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> tuple[onnx.ModelProto, set[str]]:
    """A copy with every graph input's dims fixed, external weights as inputs of their shape, and each
    MatMulNBits stood in by a MatMul against a [K, N] placeholder input (shape inference knows no
    contrib ops); -> (model, the placeholder inputs, which are not the call's I/O)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            if len(dims) != len(shapes[inp.name]):
                raise CostError(f"input {inp.name} has rank {len(dims)}, its profile gives {shapes[inp.name]}")
            for d, v in zip(dims, shapes[inp.name]):
                d.Clear()
                d.dim_value = int(v)
    placeholders: set[str] = set()
    # weights kept outside the file were not loaded: inference sees them as inputs of their shape
    external = [t for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    for t in external:
        m.graph.initializer.remove(t)
        m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        placeholders.add(t.name)
    for node in m.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            stub = f"__costs_w_{len(placeholders)}_{node.name}"
            placeholders.add(stub)
            m.graph.input.append(helper.make_tensor_value_info(stub, TensorProto.FLOAT, [attrs["K"], attrs["N"]]))
            node.domain, node.op_type = "", "MatMul"
            del node.input[1:]
            node.input.append(stub)
            del node.attribute[:]
    try:  # ORT's symbolic inference follows shapes computed in the graph (Shape -> Reshape), ONNX's does not
        return _symbolic_shapes(m), placeholders
    except Exception as e:  # noqa: BLE001 - its failures are bare exceptions; ONNX's inference is the fallback
        log.warning("symbolic shape inference failed (%s); using ONNX shape inference", e)
        return shape_inference.infer_shapes(m, data_prop=True), placeholders


def _symbolic_shapes(m: onnx.ModelProto) -> onnx.ModelProto:
    """ORT's SymbolicShapeInference driven as its `infer_shapes` does, but keeping a partial result:
    `infer_shapes` raises on any unresolved tensor and first saves the model into the current
    directory (sym_shape_infer_temp.onnx); what stays unknown here is listed as `unresolved`."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inference = SymbolicShapeInference(int_max=2**31 - 1, auto_merge=True, guess_output_rank=False, verbose=0)
    inference._preprocess(m)
    while inference.run_:
        inference._infer_impl()
    inference._update_output_from_vi()
    return inference.out_mp_


def _shape_table(model: onnx.ModelProto) -> dict[str, list[int] | None]:
    table: dict[str, list[int] | None] = {}
    vis = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    for vi in vis:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
        table[vi.name] = None if dims is None or None in dims else dims
    for init in model.graph.initializer:
        table[init.name] = list(init.dims)
    return table


def _node_flops(node: onnx.NodeProto, shapes: dict) -> float | None:
    """2 x multiply-adds of one matrix product, or None when a shape is unknown."""
    a = shapes.get(node.input[0])
    out = shapes.get(node.output[0])
    if out is None:
        return None
    if node.op_type in ("MatMul", "MatMulInteger"):
        return None if a is None else 2.0 * float(np.prod(out, dtype=np.int64)) * a[-1]
    if node.op_type == "Gemm":
        trans_a = next((helper.get_attribute_value(x) for x in node.attribute if x.name == "transA"), 0)
        return None if a is None else 2.0 * float(np.prod(out, dtype=np.int64)) * (a[0] if trans_a else a[-1])
    w = shapes.get(node.input[1])
    if w is None:
        return None
    if node.op_type == "Conv":  # w: [C_out, C_in / group, k...]
        return 2.0 * float(np.prod(out, dtype=np.int64)) * float(np.prod(w[1:], dtype=np.int64))
    # ConvTranspose, w: [C_in, C_out / group, k...]: every input element meets C_out/group x k weights
    return None if a is None else 2.0 * float(np.prod(a, dtype=np.int64)) * float(np.prod(w[1:], dtype=np.int64))


def call_cost(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> dict:
    """{weight_bytes, io_bytes, flops, unresolved} of one call with the graph inputs at `shapes`."""
    inferred, placeholders = _with_shapes(model, shapes)
    table = _shape_table(inferred)
    flops, unresolved = 0.0, []
    for node in inferred.graph.node:
        if node.op_type in MATRIX_OPS:
            f = _node_flops(node, table)
            if f is None:
                unresolved.append(node.name or node.output[0])
            else:
                flops += f
    io = 0.0
    for vi in list(inferred.graph.input) + list(inferred.graph.output):
        if vi.name in placeholders:
            continue
        dims = table.get(vi.name)
        if dims is None:
            unresolved.append(vi.name)
            continue
        io += float(np.prod(dims, dtype=np.int64)) * _itemsize(vi.type.tensor_type.elem_type)
    return {"weight_bytes": weight_bytes(model), "io_bytes": io, "flops": flops, "unresolved": unresolved[:20]}


def _at_batch(shapes: dict[str, list[int]], batched: set[str], batch: int) -> dict[str, list[int]]:
    """The profile's opt shapes with the batch axis of the inputs in `batched` set to `batch`."""
    return {k: [batch, *v[1:]] if k in batched else list(v) for k, v in shapes.items()}


def graph_costs(path: Path, profiles: list[dict], batched: set[str]) -> dict[str, dict]:
    """{"<profile>@b<batch>": call_cost} for each profile of one graph file at batch 1 and 2;
    `batched`: the inputs whose first axis is the batch (runtime.graphs declares them)."""
    model = onnx.load(str(path), load_external_data=False)
    return {f"{p['name']}@b{b}": call_cost(model, _at_batch(p["opt"], batched, b)) for p in profiles for b in BATCHES}


def form_costs(graphs: dict[str, tuple[Path, list[dict]]], m: dict, form: str) -> dict:
    """{"form", "graphs": {graph: graph_costs}} for {graph: (its file, its profiles)}; `m` is
    manifest["model"] (which inputs carry the batch)."""
    from runtime.graphs import bundle_graphs

    specs = bundle_graphs(m)
    out = {}
    for graph, (path, profiles) in graphs.items():
        batched = {t.name for t in specs[graph].inputs if t.axes and t.axes[0] == "batch"}
        out[graph] = graph_costs(path, profiles, batched)
    return {"form": form, "graphs": out}


def bundle_costs(bundle: Path, max_batch: int = 2) -> dict:
    """Every graph's costs: the TensorRT form (trt/) when the bundle has one, else its own graphs."""
    from armor_export.tensorrt import graph_profiles
    from runtime.bundle import open_bundle

    manifest = open_bundle(bundle, verify_hashes=False).manifest
    m = manifest["model"]
    if m.get("kv_cache") != "static":
        raise CostError(f"{bundle} has a dynamic-cache decoder; costs are measured on the static-cache form "
                        f"(armor-export CHECKPOINT --kv-cache static, or --target tensorrt)")
    trt = manifest.get("tensorrt", {}).get("graphs", {})
    graphs = {g: (bundle / trt[g]["file"], trt[g]["profiles"]) if g in trt
              else (bundle / e["file"], graph_profiles(g, m, max_batch)) for g, e in manifest["graphs"].items()}
    return form_costs(graphs, m, "tensorrt" if trt else "bundle")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m armor_export.costs", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--out", type=Path, help="write the JSON here (default: standard output)")
    args = p.parse_args(argv)
    try:
        costs = bundle_costs(args.bundle)
    except ArmorError as e:
        print(f"armor_export.costs: {e}", file=sys.stderr)
        return 2
    text = json.dumps(costs, indent=1)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
