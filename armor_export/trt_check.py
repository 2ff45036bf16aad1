"""`armor-export --check tensorrt BUNDLE`: a static check of the TensorRT-form graphs (`trt/`).

Every node of every graph is checked against onnx-tensorrt's operator support table of the
chosen tier (vendored in `trt_tables/` with its source and version; `rules.json` names the
table, the opset range and the change-log entries of each tier): the op exists in the table
and is supported, it is in the default ONNX domain (no ORT contrib ops such as MatMulNBits or
GroupQueryAttention), the element type of its typed operand is one the table lists (INT8/INT4/
FP8 only through Q/DQ), its attributes are the ones the Restrictions column allows (Resize
modes, ScatterND reduction, TopK sorted, ...), the inputs the table wants as build-time
constants are initializers or Constant outputs (CumSum axis, Slice axes before 10.3, Q/DQ
scales), zero points are 0. The graph's default-domain opset must lie in the tier's range and
its I/O types be ones TensorRT binds. With profiles (the manifest's `tensorrt` section) every
input must have a min/opt/max in each profile: fixed dims equal, dynamic dims ordered, a
dimension name the same in every input of one profile.

Passing is necessary, not sufficient: the parser and the builder decide on the device (ranks,
shapes, layer fusions, memory); nothing here runs TensorRT. Torch-free. It knows ONNX graphs
and the vendored tables; it does not write graphs (armor_export.tensorrt does).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from runtime.graphs import TRT_TIERS

log = logging.getLogger(__name__)

TABLES = Path(__file__).with_name("trt_tables")
ONNX_TO_TRT: dict[int, str] = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
               TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.INT8: "INT8",
               TensorProto.UINT8: "UINT8", TensorProto.BOOL: "BOOL", TensorProto.DOUBLE: "DOUBLE",
               TensorProto.INT4: "INT4", TensorProto.FLOAT8E4M3FN: "FP8", TensorProto.FLOAT4E2M1: "FP4",
               TensorProto.INT16: "INT16", TensorProto.UINT16: "UINT16", TensorProto.UINT32: "UINT32",
               TensorProto.UINT64: "UINT64", TensorProto.STRING: "STRING"}
DEFAULT_DOMAINS = ("", "ai.onnx")
SUFFICIENCY = ("passing is necessary, not sufficient: TensorRT's parser and builder on the device decide the rest "
               "(shapes, layer support in context, memory)")


@dataclass(frozen=True)
class Problem:
    graph: str
    node: str  # the node's name, or "(graph)" for graph-level problems, or an input name for profiles
    op: str
    message: str

    def __str__(self) -> str:
        where = self.node if self.node.startswith("(") else f"node {self.node!r}"
        return f"{self.graph}: {where}{f' ({self.op})' if self.op else ''}: {self.message}"


@dataclass(frozen=True)
class OpRow:
    supported: bool
    types: frozenset[str]
    restrictions: str


@dataclass(frozen=True)
class Tier:
    name: str
    label: str
    table_file: str
    opset: tuple[int, int]
    ops: dict[str, OpRow]
    rules: dict
    source: str  # the table's source line

    def constant_inputs(self, op: str) -> dict[str, int]:
        return self.rules["constant_inputs"].get(op, {})


def read_table(path: Path) -> tuple[dict[str, OpRow], str]:
    """A vendored operator table: {operator: OpRow} and its `# source:` line."""
    lines = path.read_text().splitlines()
    source = next((ln[len("# source:"):].strip() for ln in lines if ln.startswith("# source:")), "")
    rows = csv.DictReader(ln for ln in lines if not ln.startswith("#"))
    ops = {r["operator"]: OpRow(r["supported"] == "Y", frozenset(t for t in r["types"].split(";") if t),
                                r["restrictions"]) for r in rows}
    return ops, source


@lru_cache(maxsize=None)
def tier(name: str) -> Tier:
    """The checks of `--trt-version name` (10.3, 10.x or 11) from the vendored tables."""
    if name not in TRT_TIERS:
        raise ValueError(f"--trt-version must be one of {', '.join(TRT_TIERS)}, got {name!r}")
    spec = json.loads((TABLES / "rules.json").read_text())
    t = spec["tiers"][name]
    ops, source = read_table(TABLES / t["table"])
    common, own = spec["rules"]["common"], spec["rules"].get(t["table"], {})
    constants = {op: dict(v) for op, v in common["constant_inputs"].items()}
    for op, v in own.get("constant_inputs", {}).items():
        constants.setdefault(op, {}).update(v)
    for change in t["changes"]:  # change-log entries on top of the table (10.3: tensor Slice axes)
        for op, names in spec["changes"][change].get("constant_inputs_lifted", {}).items():
            for n in names:
                constants.get(op, {}).pop(n, None)
    rules = {**common, "constant_inputs": constants}
    return Tier(name, t["label"], t["table"], tuple(t["opset"]), ops, rules, source)


# --- one graph -------------------------------------------------------------------------------------
def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor (after ONNX shape inference; unknown ones absent)."""
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # noqa: BLE001 - inference is a help here, not the check itself
        log.warning("shape inference failed (%s); element types only from the graph's own annotations", e)
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)
             if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return {k: v for k, v in types.items() if v}


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto | None]:
    """Build-time constants: initializers and Constant outputs (their values where known)."""
    out: dict[str, onnx.TensorProto | None] = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            out[n.output[0]] = value
    return out


def _is_zero(t: onnx.TensorProto | None) -> bool | None:
    if t is None or (t.data_location == TensorProto.EXTERNAL):
        return None
    from onnx import numpy_helper

    return bool((numpy_helper.to_array(t).astype("float64") == 0).all())


def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return None


def check_model(model: onnx.ModelProto, tier_name: str, graph: str, profiles: list[dict] | None = None) -> list[Problem]:
    """Every problem of one graph (loaded without its external data) for `tier_name`."""
    t = tier(tier_name)
    problems: list[Problem] = []
    lo, hi = t.opset
    opsets = {o.domain: o.version for o in model.opset_import}
    version = opsets.get("", opsets.get("ai.onnx"))
    if version is None or not lo <= version <= hi:
        problems.append(Problem(graph, "(graph)", "", f"default-domain opset {version} is outside {t.label}'s "
                                                      f"range {lo}..{hi}"))
    types = _types(model)
    io_types = set(t.rules["io_types"])
    for v in (*model.graph.input, *model.graph.output):
        name = ONNX_TO_TRT.get(types.get(v.name, 0), "UNKNOWN")
        if name not in io_types:
            problems.append(Problem(graph, "(graph)", "", f"I/O tensor {v.name!r} is {name}, which TensorRT does not "
                                                          f"bind (allowed: {', '.join(sorted(io_types))})"))
    problems += _check_nodes(model.graph, t, types, graph)
    if profiles is not None:
        problems += check_profiles(model, profiles, graph)
    return problems


def _check_nodes(g: onnx.GraphProto, t: Tier, types: dict[str, int], graph: str) -> list[Problem]:
    problems: list[Problem] = []
    constants = _constants(g)
    consumed = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    quantized = set(t.rules["quantized_types"])
    for i, node in enumerate(g.node):
        name, op = node.name or f"#{i} (unnamed)", node.op_type

        def report(message: str) -> None:
            problems.append(Problem(graph, name, op, message))

        if node.domain not in DEFAULT_DOMAINS:
            report(f"op of domain {node.domain!r} (not standard ONNX): onnx-tensorrt parses only the default domain "
                   f"(and registered plugins)")
            continue
        row = t.ops.get(op)
        if row is None or not row.supported:
            report(f"not supported by {t.label} ({'listed as N' if row else 'not in the table'})")
            continue
        where = t.rules["typed_inputs"].get(op, t.rules["typed_inputs"]["default"])
        for w in where:
            tensor = node.output[0] if w == "output" else (node.input[w] if w < len(node.input) else "")
            if not tensor or tensor not in types:
                continue
            kind = ONNX_TO_TRT.get(types[tensor], "UNKNOWN")
            if kind not in row.types:
                via_qdq = kind in quantized and op in ("DequantizeLinear", "QuantizeLinear")
                if not via_qdq:
                    report(f"{'output' if w == 'output' else f'input {w}'} {tensor!r} is {kind}; {t.label} takes "
                           f"{', '.join(sorted(row.types))}")
        for attr, rule in t.rules["attributes"].get(op, {}).items():
            value = _attr(node, attr)
            if rule.get("forbidden"):
                if value is not None:
                    report(f"attribute {attr} is not supported")
                continue
            value = rule["default"] if value is None else value
            if value not in rule["allowed"]:
                report(f"{attr}={value!r} is not supported (allowed: {', '.join(map(str, rule['allowed']))})")
        for what, idx in t.constant_inputs(op).items():
            if idx < len(node.input) and node.input[idx] and node.input[idx] not in constants:
                report(f"input {what} ({node.input[idx]!r}) must be a build-time constant (an initializer) "
                       f"for {t.label}")
        for what, idx in t.rules["zero_inputs"].get(op, {}).items():
            if idx < len(node.input) and node.input[idx]:
                zero = _is_zero(constants.get(node.input[idx]))
                if zero is False:
                    report(f"{what} must be 0")
        if op == "QuantizeLinear":
            out = ONNX_TO_TRT.get(types.get(node.output[0], 0))
            if out is not None and out not in quantized:
                report(f"quantizes to {out}; TensorRT's Q/DQ takes {', '.join(sorted(quantized))} (UINT8 only as "
                       f"network I/O)")
            if len(node.input) < 3 or not node.input[2]:  # the default zero point is uint8
                report("has no zero point, so it quantizes to UINT8; give an INT8 zero point of 0")
        if op in t.rules["only_first_output"] and any(o in consumed for o in node.output[1:] if o):
            report("only the first output is supported")
        for a in node.attribute:  # If / Loop / Scan bodies
            if a.type == onnx.AttributeProto.GRAPH:
                problems += _check_nodes(a.g, t, types, f"{graph}/{name}.{a.name}")
    return problems


# --- profiles --------------------------------------------------------------------------------------
def _input_dims(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    init = {t.name for t in model.graph.initializer}
    return {v.name: [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                     for d in v.type.tensor_type.shape.dim]
            for v in model.graph.input if v.name not in init}


def check_profiles(model: onnx.ModelProto, profiles: list[dict], graph: str) -> list[Problem]:
    """Every dynamic input dimension covered by each profile (see the module docstring)."""
    problems: list[Problem] = []
    inputs = _input_dims(model)
    if not profiles:
        return [Problem(graph, "(profiles)", "", "no optimization profile; a graph with dynamic inputs needs one")]
    for p in profiles:
        pname = p.get("name", "?")
        named: dict[str, tuple] = {}
        for inp, dims in inputs.items():
            shapes = [p.get(k, {}).get(inp) for k in ("min", "opt", "max")]
            if any(s is None for s in shapes):
                problems.append(Problem(graph, f"(profile {pname})", "", f"input {inp!r} has no min/opt/max shape"))
                continue
            if any(len(s) != len(dims) for s in shapes):
                problems.append(Problem(graph, f"(profile {pname})", "", f"input {inp!r} has rank {len(dims)}, the "
                                                                         f"profile gives {[len(s) for s in shapes]}"))
                continue
            for axis, (d, lo, opt, hi) in enumerate(zip(dims, *shapes)):
                if not (0 <= lo <= opt <= hi):
                    problems.append(Problem(graph, f"(profile {pname})", "", f"input {inp!r} axis {axis}: min {lo}, "
                                                                             f"opt {opt}, max {hi} are not ordered"))
                elif isinstance(d, int) and not lo == opt == hi == d:
                    problems.append(Problem(graph, f"(profile {pname})", "", f"input {inp!r} axis {axis} is fixed at "
                                                                             f"{d}, the profile gives {lo}..{hi}"))
                elif d == "?":
                    problems.append(Problem(graph, f"(profile {pname})", "", f"input {inp!r} axis {axis} has no size "
                                                                             f"and no name"))
                elif isinstance(d, str) and named.setdefault(d, (lo, opt, hi)) != (lo, opt, hi):
                    problems.append(Problem(graph, f"(profile {pname})", "", f"dimension {d!r} is {named[d]} elsewhere "
                                                                             f"and {(lo, opt, hi)} in {inp!r}"))
        extra = set(p.get("min", {})) - set(inputs)
        if extra:
            problems.append(Problem(graph, f"(profile {pname})", "", f"names inputs the graph lacks: "
                                                                     f"{', '.join(sorted(extra))}"))
    return problems


# --- a bundle --------------------------------------------------------------------------------------
def check_bundle(bundle: Path, tier_name: str | None = None) -> tuple[str, list[Problem]]:
    """(the tier checked, every problem) of the TensorRT form in the bundle folder `bundle`.
    The tier defaults to the one the bundle was exported for."""
    from runtime.bundle import read_manifest

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    section = manifest.get("tensorrt")
    if not isinstance(section, dict) or not section.get("graphs"):
        return tier_name or "10.3", [Problem("(bundle)", "(manifest)", "", "has no TensorRT form (no `tensorrt` "
                                                                           "section): run armor-export --target "
                                                                           "tensorrt first")]
    tier_name = tier_name or section.get("tier", "10.3")
    tier(tier_name)  # a clear error for an unknown tier before any graph is read
    problems = []
    for name, entry in section["graphs"].items():
        path = bundle / entry["file"]
        if not path.is_file():
            problems.append(Problem(name, "(graph)", "", f"{entry['file']} is missing"))
            continue
        problems += check_model(onnx.load(str(path), load_external_data=False), tier_name, name,
                                entry.get("profiles", []))
    return tier_name, problems


def report(tier_name: str, problems: list[Problem]) -> str:
    """The CLI's text: every problem on its own line, then the verdict."""
    label = tier(tier_name).label
    if not problems:
        return f"TensorRT check ({label}): passed; {SUFFICIENCY}"
    lines = [f"TensorRT check ({label}): {len(problems)} problem{'s' if len(problems) != 1 else ''}:"]
    lines += [f"  {p}" for p in problems]
    lines.append(f"(and {SUFFICIENCY})")
    return "\n".join(lines)
