"""`armor-export CHECKPOINT_OR_BUNDLE --target tensorrt --out BUNDLE`: the TensorRT form of a bundle.

Step 1, on any machine: every bundle graph rewritten into the form onnx-tensorrt parses, under
`trt/<graph>.onnx` (graph names as runtime.graphs declares them), with the optimization
profiles derived from the manifest as data (`trt/profiles.json`, and the manifest's
`tensorrt` section) and as the equivalent `trtexec` command lines (`trt/trtexec.sh`). The
graphs come from the bundle (a checkpoint is exported first, with the static-cache decoder);
the rewrites are export-only and at the ONNX level, so they apply to calibrated Q/DQ graphs too:
- a Resize whose input is a constant and whose output size comes from static dims only (the
  ViT's bicubic position-embedding interpolation, a no-op at the trained size) is folded into
  an initializer: TensorRT's Resize has no cubic mode;
- CumSum over integers runs in float32 between two Casts (the table lists float CumSum
  only; exact below 2^24, far above any capacity);
- fp16: onnx_files.convert_fp16 (norms and softmax stay float32 inside the graph);
- int8: the Q/DQ graphs of `armor-calibrate --scheme int8 --target tensorrt` (symmetric, zero
  points 0, constant scales), refused in one line when the bundle has none.
Every graph then passes armor_export.trt_check for the chosen tier, or nothing is written.

Step 2, only where `tensorrt` imports and a CUDA device exists: one engine per graph under
`engines/`, strongly typed (10.x: NetworkDefinitionCreationFlag.STRONGLY_TYPED; 11: always),
no precision builder flags, the timing cache reused, recorded in `tensorrt.engines`. It has
never run on these machines (no GPU, no TensorRT): it is written from NVIDIA's documentation.

Each graph's bytes and FLOPs per call (armor_export.costs) go into `tensorrt.costs` for
armor-bench --project. Files are written under a temporary folder and renamed; the manifest last. It knows ONNX
graphs, bundles and the manifest; the checks live in trt_check, the profiles' meaning in the
runtime's TensorRT backend.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from armor_export import manifest as mf
from armor_export.costs import form_costs
from armor_export.onnx_files import convert_fp16, save_onnx
from armor_export.trt_check import check_model, tier
from runtime.constants import MANIFEST_FILE
from runtime.errors import ArmorError
from runtime.graphs import ENGINES_DIR, TRT_DIR, TRT_PRECISIONS, TRT_TIERS, bundle_graphs, engine_file, trt_file

log = logging.getLogger(__name__)

PROFILES_FILE = f"{TRT_DIR}/profiles.json"
TRTEXEC_FILE = f"{TRT_DIR}/trtexec.sh"
PREFILL_OPT = 128  # tokens: the prefill profile's opt (a typical prompt), capped at the capacity
DECODE_MAX = 8  # tokens per decode call: one, or a speculative Jacobi window (runtime.jacobi's default 8)
ENGINES_ON_DEVICE = ("engines are built on the device: run the same armor-export command there (it needs the "
                     "`tensorrt` package and a CUDA device; {why})")


class TensorRTExportError(ArmorError):
    """The TensorRT form cannot be written (bad options, an unsuitable bundle, a failed check or build)."""


@dataclass
class Options:
    precision: str = "fp16"
    trt_version: str = "10.3"
    max_batch: int = 2
    max_context: int | None = None
    workspace_mb: int | None = None
    timing_cache: Path | None = None
    overwrite: bool = False
    progress: bool = False
    build: bool = True  # step 2 where TensorRT and a GPU exist

    def check(self) -> None:
        if self.precision not in TRT_PRECISIONS:
            raise TensorRTExportError(f"--precision must be one of {', '.join(TRT_PRECISIONS)}, got {self.precision!r}")
        if self.trt_version not in TRT_TIERS:
            raise TensorRTExportError(f"--trt-version must be one of {', '.join(TRT_TIERS)}, got {self.trt_version!r}")
        if self.max_batch < 1:
            raise TensorRTExportError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise TensorRTExportError(f"--workspace must be >= 1 MiB, got {self.workspace_mb}")


# --- the bundle to start from ---------------------------------------------------------------------
def _is_bundle(path: Path) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def prepare_bundle(source: Path, out: Path, opts: Options) -> dict:
    """The ONNX bundle in `out` the TensorRT form is made from (exported or copied first when
    `out` has none); returns its manifest after the checks that refuse an unsuitable one."""
    from runtime.bundle import open_bundle

    source, out = Path(source), Path(out)
    if not _is_bundle(out):
        if _is_bundle(source):
            _refuse(open_bundle(source).manifest, source, opts)  # before anything is copied
            _copy_bundle(source, out)
        elif opts.precision == "int8":
            raise TensorRTExportError(f"--precision int8 takes a bundle calibrated with armor-calibrate --scheme int8 "
                                      f"--target tensorrt; {source} is not a bundle")
        else:
            from armor_export.export import export_bundle

            export_bundle(source, out, dtype="fp16" if opts.precision == "fp16" else "fp32", kv_cache="static",
                          max_context=opts.max_context, with_text_model=False, progress=opts.progress)
    manifest = open_bundle(out).manifest
    _refuse(manifest, out, opts)
    if opts.max_context is not None and opts.max_context != manifest["model"]["kv_capacity"]:
        raise TensorRTExportError(f"the bundle in {out} has a cache capacity of {manifest['model']['kv_capacity']}, "
                                  f"not --max-context {opts.max_context}: export a new bundle for another capacity")
    inherited = "calibration" in manifest and manifest.get("tensorrt", {}).get("precision") not in (None, "int8")
    if inherited:  # calibration copied its fp32/fp16 source's TensorRT form: stale for the Q/DQ graphs
        log.warning("replacing the %s TensorRT form %s inherited from its calibration source",
                    manifest["tensorrt"]["precision"], out)
    elif "tensorrt" in manifest and not opts.overwrite:
        raise TensorRTExportError(f"{out} already holds a TensorRT form; pass --overwrite to replace it")
    return manifest


def _refuse(manifest: dict, out: Path, opts: Options) -> None:
    """One TensorRTExportError if the bundle `manifest` cannot give the TensorRT form `opts` ask for."""
    m = manifest["model"]
    if m["kv_cache"] != "static":
        raise TensorRTExportError(f"the bundle in {out} has the dynamic-cache decoder; the TensorRT form needs the "
                                  f"static one: export with --kv-cache static (or into an empty --out)")
    if opts.precision == "int8":
        cal = manifest.get("calibration", {})
        qdq = [g for g, e in manifest["graphs"].items() if e.get("precision") == "int8-qdq"]
        if cal.get("scheme") != "int8" or cal.get("target") != "tensorrt" or not qdq:
            raise TensorRTExportError(f"{out} has no TensorRT Q/DQ graphs: calibrate an fp32 static-cache bundle with "
                                      f"armor-calibrate --scheme int8 --target tensorrt first")
    elif manifest["dtype"] == "fp16" and opts.precision == "fp32":
        raise TensorRTExportError(f"the bundle in {out} is fp16; --precision fp32 needs an fp32 bundle")
    if "calibration" in manifest and opts.precision != "int8":
        raise TensorRTExportError(f"{out} is a calibrated bundle; make its TensorRT form with --precision int8")


def _copy_bundle(source: Path, out: Path) -> None:
    """Copy the bundle `source` into the new folder `out` (every listed file, the manifest last)."""
    from runtime.bundle import open_bundle

    src = open_bundle(source)
    manifest = json.loads(json.dumps(src.manifest))
    manifest.pop("tensorrt", None)  # the source's own TensorRT form is not copied: this export writes one
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not v["role"].startswith(("trt.", "engine."))}
    out.mkdir(parents=True, exist_ok=True)
    for name in manifest["files"]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, out / name)
    mf.write_manifest(out, manifest)


# --- graph rewrites ---------------------------------------------------------------------------------
def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def cumsum_in_float(model: onnx.ModelProto) -> int:
    """CumSum over int32/int64 -> Cast(float) . CumSum . Cast(back); returns how many."""
    types, g, n = _types(model), model.graph, 0
    for node in list(g.node):
        if node.op_type != "CumSum" or types.get(node.input[0]) not in (TensorProto.INT32, TensorProto.INT64):
            continue
        back, x, y = types[node.input[0]], node.input[0], node.output[0]
        tag = node.name or f"CumSum_{n}"
        to_float = helper.make_node("Cast", [x], [f"{tag}/float_in"], name=f"{tag}/to_float", to=TensorProto.FLOAT)
        cast_back = helper.make_node("Cast", [f"{tag}/float_out"], [y], name=f"{tag}/to_int", to=back)
        node.input[0], node.output[0] = f"{tag}/float_in", f"{tag}/float_out"
        at = list(g.node).index(node)
        g.node.insert(at + 1, cast_back)
        g.node.insert(at, to_float)
        n += 1
    return n


def dequantize_int32_constants(model: onnx.ModelProto) -> int:
    """DequantizeLinear of a constant INT32 tensor (ORT's quantized Conv bias) -> its float value
    as an initializer: TensorRT's DequantizeLinear takes INT8/INT4/FP8 only, and a bias is
    added in float anyway. Exact: the value the DequantizeLinear would compute. Returns how many."""
    g, n = model.graph, 0
    init = {t.name: t for t in g.initializer}
    for node in list(g.node):
        if node.op_type != "DequantizeLinear" or node.input[0] not in init:
            continue
        x = init[node.input[0]]
        if x.data_type != TensorProto.INT32 or any(i not in init for i in node.input[1:] if i):
            continue
        q = numpy_helper.to_array(x).astype(np.float64)
        scale = numpy_helper.to_array(init[node.input[1]]).astype(np.float64)
        zero = (numpy_helper.to_array(init[node.input[2]]).astype(np.float64)
                if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and q.ndim > 0:  # per-axis: broadcast along `axis`
            shape = [1] * q.ndim
            shape[axis % q.ndim] = scale.size
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        dtype = helper.tensor_dtype_to_np_dtype(init[node.input[1]].data_type)
        g.node.remove(node)
        g.initializer.append(numpy_helper.from_array(((q - zero) * scale).astype(dtype), node.output[0]))
        n += 1
    if n:
        _prune(g)
    return n


def _ancestors(g: onnx.GraphProto, target: str) -> list[onnx.NodeProto]:
    producer = {o: n for n in g.node for o in n.output}
    keep, todo = {}, [target]
    while todo:
        t = todo.pop()
        n = producer.get(t)
        if n is not None and id(n) not in keep:
            keep[id(n)] = n
            todo += [i for i in n.input if i]
    return [n for n in g.node if id(n) in keep]


def _evaluate(model: onnx.ModelProto, target: str, batch: int, seed: int) -> np.ndarray:
    """The value of tensor `target` for random inputs whose dynamic dims are `batch`."""
    import onnxruntime as ort

    g = model.graph
    nodes = _ancestors(g, target)
    used = {i for n in nodes for i in n.input}
    inputs = [v for v in g.input if v.name in used]
    elem = _types(model).get(target, TensorProto.FLOAT)
    sub = helper.make_graph(nodes, "fold", inputs, [helper.make_tensor_value_info(target, elem, None)],
                            initializer=[t for t in g.initializer if t.name in used])
    sub_model = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    from runtime.backends.ort import session_options  # joins the process's shared ORT pool where one is active

    sess = ort.InferenceSession(sub_model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    rng, feeds = np.random.default_rng(seed), {}
    for v in inputs:
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in v.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        feeds[v.name] = (rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                         else rng.integers(0, 2, shape).astype(dtype))
    return sess.run([target], feeds)[0]


def fold_constant_resizes(model: onnx.ModelProto, unsupported=("cubic",)) -> int:
    """Replace each Resize of an unsupported mode whose output does not depend on the inputs'
    values or dynamic dims (checked: two random feeds of batch 1 and 3 give the same output)
    by an initializer holding that output; returns how many."""
    g, n = model.graph, 0
    for node in list(g.node):
        mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"nearest")
        if node.op_type != "Resize" or mode.decode() not in unsupported:
            continue
        out = node.output[0]
        try:
            a, b = _evaluate(model, out, 1, 0), _evaluate(model, out, 3, 1)
        except Exception as e:  # noqa: BLE001 - a fold that cannot run leaves the node for the check to report
            log.warning("cannot fold %s (%s)", node.name, e)
            continue
        if a.shape != b.shape or not np.array_equal(a, b):
            log.warning("%s depends on the graph's inputs; left for the check to report", node.name)
            continue
        g.node.remove(node)
        g.initializer.append(numpy_helper.from_array(a, out))
        n += 1
    if n:
        _prune(g)
    return n


def _prune(g: onnx.GraphProto) -> None:
    """Drop nodes and initializers nothing reads any more."""
    needed = {o.name for o in g.output}
    kept = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del g.node[:]
    g.node.extend(reversed(kept))
    live = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(live)


def _drop_unused_domains(model: onnx.ModelProto) -> None:
    used = {n.domain for n in model.graph.node} | {"", "ai.onnx"}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def trt_graph(src: Path, dst: Path, to_fp16: bool) -> tuple[list[Path], dict]:
    """Write the TensorRT form of graph `src` to `dst`; -> (files written, what was rewritten)."""
    model = onnx.load(str(src))
    done = {"folded_resizes": fold_constant_resizes(model), "float_cumsums": cumsum_in_float(model),
            "float_biases": dequantize_int32_constants(model)}
    _drop_unused_domains(model)
    written = save_onnx(model, dst)
    if to_fp16:
        written = convert_fp16(dst)
        done["fp16"] = True
    return written, done


# --- profiles ---------------------------------------------------------------------------------------
def axis_ranges(graph: str, m: dict, max_batch: int) -> list[tuple[str, dict[str, tuple[int, int, int]]]]:
    """(profile name, {axis name: (min, opt, max)}) of each optimization profile of `graph`,
    from the model summary `m` (manifest["model"]) and the batch limit."""
    n = m["kv_capacity"]
    prompt = min(n, PREFILL_OPT)
    step = min(n, DECODE_MAX)
    batch = (1, 1, max_batch)
    pair = (1, max_batch, max_batch)  # decode steps of an image run as a CFG pair
    if graph == "decoder":
        return [("prefill", {"batch": batch, "sequence": (1, prompt, n)}),
                ("decode", {"batch": pair, "sequence": (1, 1, step)})]
    if graph == "visual_head":
        # the image's context once (empty adapter cache), then codes against a cache of the
        # context (at most the decoder's capacity) and the codes so far
        cache = n + m["n_image_tokens"]
        return [("prefill", {"batch": pair, "context": (1, prompt, n), "past_context": (0, 0, 0),
                             "total_context": (1, prompt, n)}),
                ("decode", {"batch": pair, "context": (1, 1, step), "past_context": (1, prompt + 1, cache),
                            "total_context": (2, prompt + 2, cache + step)})]
    if graph == "text_head":
        return [("default", {"batch": batch, "sequence": (1, 1, n)})]
    if graph in ("vision_encoder", "vq_decoder"):
        return [("default", {"batch": batch})]
    raise ValueError(f"no profiles for graph {graph!r}")


def graph_profiles(graph: str, m: dict, max_batch: int) -> list[dict]:
    """The manifest's profiles of `graph`: [{name, min, opt, max}] with a shape for every input."""
    spec = bundle_graphs(m)[graph]
    out = []
    for name, ranges in axis_ranges(graph, m, max_batch):
        shapes: dict[str, dict[str, list[int]]] = {"min": {}, "opt": {}, "max": {}}
        for t in spec.inputs:
            for k, which in enumerate(("min", "opt", "max")):
                shapes[which][t.name] = [a if isinstance(a, int) else ranges[a][k] for a in t.axes]
        out.append({"name": name, **shapes})
    return out


def trtexec_lines(graphs: dict[str, dict], tier_name: str, workspace_mb: int | None,
                  timing_cache: str | None) -> list[str]:
    """One `trtexec` command per graph, equivalent to the build of step 2: strongly typed, no
    precision flags, one optimization profile per group of --minShapes/--optShapes/--maxShapes."""
    lines = []
    for graph, entry in graphs.items():
        args = ["trtexec", f"--onnx={entry['file']}", f"--saveEngine={engine_file(graph)}", "--skipInference"]
        if tier_name != "11":  # 11 builds every network strongly typed
            args.append("--stronglyTyped")
        for p in entry["profiles"]:
            for which, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
                shapes = ",".join(f"{k}:{'x'.join(map(str, v))}" for k, v in p[which].items())
                args.append(f"{flag}={shapes}")
        if workspace_mb:
            args.append(f"--memPoolSize=workspace:{workspace_mb}M")
        if timing_cache:
            args.append(f"--timingCacheFile={timing_cache}")
        lines.append(" \\\n    ".join(shlex.quote(a) for a in args))
    return lines


def _trtexec_script(lines: list[str], tier_name: str) -> str:
    head = ["#!/bin/sh",
            f"# The TensorRT engines of this bundle with trtexec (TensorRT {tier_name}), equivalent to",
            "# `armor-export BUNDLE --target tensorrt --out BUNDLE --overwrite` on the device. Run from the bundle folder.",
            "# Each group of --minShapes/--optShapes/--maxShapes is one optimization profile, in the order of",
            "# trt/profiles.json (the runtime selects profiles by that index). Written, not run here.",
            "set -e", f"mkdir -p {ENGINES_DIR}"]
    return "\n".join(head + lines) + "\n"


# --- step 2: engines (only where TensorRT and a CUDA device exist; not run on these machines) ---------
def engine_support() -> str | None:
    """None where engines can be built here, else why not (one phrase)."""
    try:
        import tensorrt
    except Exception as e:  # noqa: BLE001 - ImportError, or a bindings wheel without its libraries
        return f"`import tensorrt` fails here ({e.__class__.__name__})"
    if not hasattr(tensorrt, "Builder"):  # e.g. tensorrt-stubs on sys.path: a package with no bindings
        return f"`tensorrt` at {getattr(tensorrt, '__path__', ['?'])[0]} has no bindings (stubs only?)"
    if _device_name() is None:
        return "no CUDA device is visible here"
    return None


def _device_name() -> str | None:
    try:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # older cuda-python
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            return None
        err, prop = cudart.cudaGetDeviceProperties(0)
        name = prop.name
        return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")
    except Exception:  # noqa: BLE001 - no cuda-python, no driver, no device: all mean "not here"
        return None


def build_engines(bundle: Path, section: dict, opts: Options, tmp: Path) -> dict[str, dict]:
    """Build one strongly typed engine per graph into `tmp`; -> the manifest's `engines` entries."""
    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    device = _device_name() or "unknown"
    cache_path = Path(opts.timing_cache) if opts.timing_cache else bundle / ENGINES_DIR / "timing.cache"
    config0 = builder.create_builder_config()
    cache = config0.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    engines = {}
    for graph, entry in section["graphs"].items():
        flags = 0 if major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(bundle / entry["file"])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise TensorRTExportError(f"TensorRT {trt.__version__} cannot parse {entry['file']}: {errors}")
        config = builder.create_builder_config()  # no precision flags: the network is strongly typed
        if opts.workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
        config.set_timing_cache(cache, ignore_mismatch=False)
        for p in entry["profiles"]:
            profile = builder.create_optimization_profile()
            for name in p["min"]:
                profile.set_shape(name, p["min"][name], p["opt"][name], p["max"][name])
            config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise TensorRTExportError(f"TensorRT {trt.__version__} failed to build the engine of {graph} (see its log)")
        path = tmp / f"{graph}.engine"
        path.write_bytes(bytes(plan))
        engines[graph] = {"file": engine_file(graph), "tensorrt_version": trt.__version__, "device": device}
        log.info("engine %s built (%d bytes)", graph, path.stat().st_size)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(cache.serialize()))
    return engines


# --- the export ---------------------------------------------------------------------------------------
def export_tensorrt(source: Path, out: Path, opts: Options | None = None) -> tuple[dict, str]:
    """Write the TensorRT form into the bundle `out` (see the module docstring); -> (manifest,
    one line about the engines: built, or where to build them)."""
    opts = opts or Options()
    opts.check()
    out = Path(out)
    manifest = prepare_bundle(Path(source), out, opts)
    m = manifest["model"]
    tmp = out / f".{TRT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / TRT_DIR).mkdir(parents=True)
    try:
        to_fp16 = opts.precision == "fp16" and manifest["dtype"] == "fp32"
        graphs: dict[str, dict] = {}
        rewrites: dict[str, dict] = {}
        written: list[Path] = []
        for graph, entry in manifest["graphs"].items():
            files, rewrites[graph] = trt_graph(out / entry["file"], tmp / trt_file(graph), to_fp16)
            written += files
            graphs[graph] = {"file": trt_file(graph), "profiles": graph_profiles(graph, m, opts.max_batch)}
        problems = [p for g, e in graphs.items()
                    for p in check_model(onnx.load(str(tmp / e["file"]), load_external_data=False), opts.trt_version,
                                         g, e["profiles"])]
        if problems:
            raise TensorRTExportError(f"the TensorRT form fails its static check for {tier(opts.trt_version).label} "
                                      f"({len(problems)} problems; first: {problems[0]}); nothing written")
        section = {"tier": opts.trt_version, "precision": opts.precision, "max_batch": opts.max_batch,
                   "capacity": m["kv_capacity"], "graphs": graphs, "engines": {},
                   "costs": form_costs({g: (tmp / e["file"], e["profiles"]) for g, e in graphs.items()}, m,
                                       "tensorrt")}  # armor-bench --project reads them
        (tmp / PROFILES_FILE).write_text(json.dumps({"tier": opts.trt_version, "max_batch": opts.max_batch,
                                                     "capacity": m["kv_capacity"],
                                                     "graphs": {g: e["profiles"] for g, e in graphs.items()}},
                                                    indent=1))
        cache_arg = str(opts.timing_cache) if opts.timing_cache else f"{ENGINES_DIR}/timing.cache"
        script = _trtexec_script(trtexec_lines(graphs, opts.trt_version, opts.workspace_mb, cache_arg), opts.trt_version)
        (tmp / TRTEXEC_FILE).write_text(script)
        os.chmod(tmp / TRTEXEC_FILE, 0o755)
        why = engine_support() if opts.build else "skipped"
        engines = {}
        if why is None:
            (tmp / ENGINES_DIR).mkdir()
            engines = build_engines(out, {"graphs": {g: {**e, "file": f"{tmp.name}/{e['file']}"}
                                                     for g, e in graphs.items()}}, opts, tmp / ENGINES_DIR)
        section["engines"] = engines
        manifest = _commit(out, tmp, manifest, section, written, rewrites)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if engines:
        note = f"engines built under {ENGINES_DIR}/ with TensorRT {next(iter(engines.values()))['tensorrt_version']}"
    else:
        note = ENGINES_ON_DEVICE.format(why=why)
    return manifest, note


def _commit(out: Path, tmp: Path, manifest: dict, section: dict, written: list[Path], rewrites: dict) -> dict:
    """Replace the bundle's trt/ (and engines/) by the new ones and write the manifest last."""
    files = manifest["files"]
    stale = [k for k, v in files.items() if v["role"].startswith("trt.") or v["role"].startswith("engine.")]
    if stale or "tensorrt" in manifest:  # from here until the last write the old TensorRT form is gone
        for k in stale:
            files.pop(k)
        manifest.pop("tensorrt", None)
        mf.write_manifest(out, manifest)
    for folder in (TRT_DIR, ENGINES_DIR):
        shutil.rmtree(out / folder, ignore_errors=True)
        if (tmp / folder).is_dir():
            os.replace(tmp / folder, out / folder)
    from runtime.bundle import sha256

    def add(name: str, role: str, dtype: str | None = None) -> None:
        path = out / name
        entry = {"role": role, "bytes": path.stat().st_size, "sha256": sha256(path)}
        if dtype:
            entry["dtype"] = dtype
        files[name] = entry

    dtype = "fp16" if section["precision"] == "fp16" else manifest["dtype"]
    for p in written:
        graph = p.name.split(".")[0]
        add(f"{TRT_DIR}/{p.name}", f"trt.{graph}" if p.suffix == ".onnx" else f"trt.{graph}.weights", dtype)
    add(PROFILES_FILE, "trt.profiles")
    add(TRTEXEC_FILE, "trt.trtexec")
    for graph, e in section["engines"].items():
        add(e["file"], f"engine.{graph}")
    manifest["files"] = dict(sorted(files.items()))
    manifest["tensorrt"] = section
    manifest.setdefault("verification", {})["tensorrt"] = {"rewrites": rewrites,
                                                           "static_check": f"passed ({section['tier']})"}
    mf.write_manifest(out, manifest)
    return manifest


# --- a bundle view of the TensorRT form, for ONNX Runtime (tests, and checking on a CPU) ---------------
def trt_view(bundle: Path, dest: Path) -> Path:
    """A bundle folder `dest` whose graphs are the TensorRT form of `bundle` (hard links where the
    file system allows, copies otherwise), so ORT and the runtime's loop run them unchanged."""
    from runtime.bundle import read_manifest

    bundle, dest = Path(bundle), Path(dest)
    manifest = json.loads(json.dumps(read_manifest(bundle)))
    section = manifest.pop("tensorrt", None)
    if not section:
        raise TensorRTExportError(f"{bundle} has no TensorRT form: run armor-export --target tensorrt first")
    dest.mkdir(parents=True, exist_ok=True)
    dtype = "fp16" if section["precision"] == "fp16" else manifest["dtype"]
    floats = "float16" if dtype == "fp16" else "float32"
    files = {}
    for name, entry in manifest["files"].items():
        role = entry["role"]
        if role.startswith("trt.") and role.split(".")[1] in section["graphs"]:
            target = Path(name).name
        elif role in ("embeddings", "tokenizer", "tokenizer_config"):
            target = name
        else:
            continue
        (dest / target).unlink(missing_ok=True)
        if role == "embeddings" and dtype != manifest["dtype"]:
            np.save(dest / target, np.load(bundle / name).astype(np.float16))
        else:
            try:
                os.link(bundle / name, dest / target)
            except OSError:
                shutil.copyfile(bundle / name, dest / target)
        files[target] = {"role": role.removeprefix("trt."), "dtype": dtype}
    for g in manifest["graphs"].values():
        for t in g["inputs"] + g["outputs"]:
            if t["dtype"] in ("float32", "float16"):
                t["dtype"] = floats
    from runtime.bundle import sha256

    manifest["files"] = {k: {**v, "bytes": (dest / k).stat().st_size, "sha256": sha256(dest / k)}
                         for k, v in files.items()}
    manifest["dtype"] = dtype
    manifest.pop("gguf", None)
    mf.write_manifest(dest, manifest)
    return dest
