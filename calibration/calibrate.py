"""`calibrate_bundle`: fp32 bundle -> quantized bundle with its accuracy report, manifest last.

Schemes (which graph gets what is decided here, in `PLANS`):
- `int8`: static INT8 as explicit Q/DQ, per-channel weights, calibrated on real inputs of
  each graph: the MatMuls with a constant weight of the decoder, both heads and the vision
  encoder, and the Convs of the VQ decoder. A sensitivity pass (on by default) keeps the
  nodes that hurt a graph most out of Q/DQ; for `target="cpu"` those MatMuls get 8-bit
  weight-only `MatMulNBits` instead of staying fp32 (TensorRT cannot run MatMulNBits, so for
  `target="tensorrt"` they stay float and activations are symmetric int8).
- `int8-weight` / `int4-weight`: weight-only `MatMulNBits` (8 or 4 bits, blocks of
  `block_size`) on the MatMuls of the decoder and both heads (the heads, the MLP down
  projections and the attention value projections keep 8 bits under int4, see `PLANS`), float
  activations in the graph
  (the CPU kernel computes in int8 at `accuracy_level` 4, the default: see quantize.py); the
  compute-bound vision encoder and VQ decoder stay fp32 (no int8 gain on a CPU without VNNI).
  The bundle's onnxruntime-genai text path (text/model.onnx) gets the same treatment; it stays
  fp32 under `int8` (static ranges would need its own calibration).

Order of work, like the exporter: refuse what cannot work (not an fp32 bundle, an existing
output without `overwrite`), remove a previous manifest, write every graph and copy every
other file, measure accuracy against the source, apply the gates, and only then write
`manifest.json` atomically. A refused or failed run leaves no manifest, so never a folder that
looks like a bundle. The manifest is the source's, updated: files (role, bytes, sha256,
precision), `graphs[*].precision`, `calibration` (settings) and `accuracy` (the report);
`schema_version` and the graphs' float I/O are unchanged, so the runtime loads it as is.

It knows bundles, manifests and the schemes; the numbers come from readers.py (inputs),
quantize.py (graphs) and accuracy.py (report).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from calibration import accuracy, readers
from calibration.errors import CalibrationError, GateError
from calibration.quantize import METHODS, op_counts, quantize_qdq, quantize_weights, scratch_dir, weight_nodes
from calibration.sensitivity import sensitivity_pass
from runtime.bundle import Bundle, open_bundle, sha256
from runtime.constants import MANIFEST_FILE
from runtime.model import BundleModel
from runtime.pipeline import ArmorPipeline

log = logging.getLogger(__name__)

SCHEMES = ("int8", "int8-weight", "int4-weight")
TARGETS = ("cpu", "tensorrt")
# Defaults chosen with `python -m calibration.sweep` on the shipped tiny (docs/benchmarks.md).
DEFAULT_SAMPLES = 64
DEFAULT_METHOD = "minmax"
DEFAULT_PROMPTS = 16
# graph role -> ("qdq", op types) or ("nbits", bits); `text_model` is text/model.onnx, the
# onnxruntime-genai text path (input_ids -> logits), quantized when the bundle has it
PLANS: dict[str, dict[str, tuple]] = {
    "int8": {"vision_encoder": ("qdq", ("MatMul",)), "decoder": ("qdq", ("MatMul",)),
             "text_head": ("qdq", ("MatMul",)), "visual_head": ("qdq", ("MatMul",)),
             "vq_decoder": ("qdq", ("Conv",))},
    "int8-weight": {g: ("nbits", 8) for g in ("decoder", "text_head", "visual_head", "text_model")},
    # int4 keeps 8 bits for the output heads, the MLP down projections and the attention value
    # projections (as llama.cpp's Q4_K_M gives its output layer, ffn_down and attn_v more bits);
    # the alternatives measured are in docs/benchmarks.md
    "int4-weight": {"decoder": ("nbits", 4), "text_head": ("nbits", 8), "visual_head": ("nbits", 8),
                    "text_model": ("nbits", 4)},
}
# node-name parts (Qwen2 / Llama names)
INT4_KEEPS_8_BITS = ("/lm_head/", "/mlp/down_proj/", "/self_attn/v_proj/")


@dataclass
class Settings:
    scheme: str = "int8"
    samples: int = DEFAULT_SAMPLES  # calibration feeds per graph
    method: str = DEFAULT_METHOD
    prompts: int | Path = DEFAULT_PROMPTS  # shapes-world calibration generations, or a JSONL file of conversations
    block_size: int = 32
    accuracy_level: int = 4  # MatMulNBits compute precision: 4 = int8 kernels (see quantize.quantize_weights)
    images: Path | None = None  # extra pictures for the vision encoder and the VQ decoder
    checkpoint: Path | None = None  # the VQGAN source; default: the manifest's `source`
    target: str = "cpu"  # int8: "cpu" (uint8 activations) or "tensorrt" (int8 symmetric, pure Q/DQ)
    exclude: list[str] = field(default_factory=list)  # int8: node names kept out of Q/DQ
    sensitivity: bool = True  # int8: keep the nodes that hurt most out of Q/DQ (sensitivity.py)
    # Held-out prompts for the end-to-end scores. One VQA answer in 40 is 2.5 points, more than
    # the 2-point gate, so 40 would refuse any single flipped answer: 200 (0.5 points) costs ~1.5 s
    # more on tiny (short answers). A t2i prompt costs a whole CFG image: 40 (2.5 points per image
    # against a 3-point gate) keeps a run short; --n-t2i 200 for a release.
    n_vqa: int = 200
    n_t2i: int = 40
    max_shapeeval_drop: float = 3.0  # points
    max_vqa_drop: float = 2.0  # points
    force: bool = False  # write the bundle even if a gate fails
    overwrite: bool = False
    progress: bool = True

    def check(self) -> None:
        if self.scheme not in SCHEMES:
            raise CalibrationError(f"--scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if self.method not in METHODS:
            raise CalibrationError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if isinstance(self.prompts, str):
            self.prompts = int(self.prompts) if self.prompts.strip().isdigit() else Path(self.prompts)
        if self.samples < 1 or (isinstance(self.prompts, int) and self.prompts < 1):
            raise CalibrationError(f"--samples and --prompts must be >= 1, got {self.samples} and {self.prompts}")
        if self.scheme == "int8" and isinstance(self.prompts, int) and self.prompts <= readers.FIRST_T2I_PROMPT:
            # the recorded prompts cycle t2t, ti2t, t2i, t2ti; the image-mode graphs (adapter,
            # visual head) are calibrated from the t2i generations
            raise CalibrationError(f"--scheme int8 needs --prompts >= {readers.FIRST_T2I_PROMPT + 1} (the first t2i prompt "
                                   f"calibrates the image-mode graphs), got {self.prompts}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise CalibrationError(f"--block-size must be a power of two >= 16, got {self.block_size}")
        if self.target not in TARGETS:
            raise CalibrationError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise CalibrationError(f"--accuracy-level must be 0 to 4, got {self.accuracy_level}")
        if self.n_vqa < 1 or self.n_t2i < 1:
            raise CalibrationError(f"--n-vqa and --n-t2i must be >= 1, got {self.n_vqa} and {self.n_t2i}")


def calibrate_bundle(source: str | Path, out: str | Path, settings: Settings | None = None) -> dict:
    """Quantize the fp32 bundle `source` into the bundle folder `out`; returns the manifest.

    Raises CalibrationError for what cannot work and GateError (no manifest written) when the
    accuracy drops beyond the gates and `settings.force` is not set."""
    settings = settings or Settings()
    settings.check()
    from runtime.backends.ort import shared_pool_active

    if shared_pool_active():  # onnxruntime's quantization tools open sessions with pools of their own
        raise CalibrationError("this process already runs ONNX Runtime with one shared thread pool (armor-run, "
                               "thread_pool='shared'), which onnxruntime's quantization tools cannot join: "
                               "calibrate in a fresh process")
    t0 = time.time()
    source, out = Path(source), Path(out)
    src = open_bundle(source)
    if src.dtype != "fp32":
        raise CalibrationError(f"{source} is an {src.dtype} bundle; calibrate an fp32 one (armor-export --dtype fp32)")
    if "calibration" in src.manifest:
        raise CalibrationError(f"{source} is already quantized ({src.manifest['calibration']['scheme']}); "
                               f"calibrate its fp32 source bundle")
    if out.resolve() == source.resolve():
        raise CalibrationError("--out must be a new folder, not the source bundle")
    if (out / MANIFEST_FILE).exists() and not settings.overwrite:
        raise CalibrationError(f"{out} already holds a bundle; pass --overwrite to replace it")
    plan = {g: how for g, how in PLANS[settings.scheme].items() if _graph_file(src, g)}
    if src.model.get("preset") == "from-pretrained" and not isinstance(settings.prompts, Path) and any(
            kind == "qdq" for kind, _ in plan.values()):
        raise CalibrationError(f"{source} is a model built from a pretrained MLLM: calibrate it on your own data "
                               f"with --prompts FILE (and --images DIR), not on the shapes world")
    checkpoint = _checkpoint(src, settings, needed=settings.scheme == "int8")

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # from here on, `out` is not a bundle
    files, details = _copy_unchanged(src, out, plan), {}
    with scratch_dir(out) as tmp:
        feeds = _calibration_feeds(src, settings, plan, checkpoint) if any(
            kind == "qdq" for kind, _ in plan.values()) else {}
        for name, (kind, arg) in plan.items():
            written, details[name] = _quantize_graph(src, out, name, kind, arg, feeds.get(name), settings, Path(tmp))
            files.update(written)

    manifest = _manifest(src, out, files, settings, details, checkpoint)
    report = _accuracy(src, out, manifest, settings, checkpoint, set(plan))
    manifest["accuracy"] = report
    manifest["calibration"]["seconds"] = round(time.time() - t0, 1)
    g = report["gates"]
    if not g["passed"]:
        msg = "; ".join(f"{_LABELS[k]} drops {g['drop_points'][k]:.1f} points (limit {g['max_drop_points'][k]:g})"
                        for k in g["failed"])
        if not settings.force:
            raise GateError(f"refused: {msg}; no manifest written (--force writes the bundle anyway)", report)
        log.warning("gates failed (%s); writing the bundle because of --force", msg)
    g["forced"] = settings.force and not g["passed"]
    _write_manifest(out, manifest)
    log.info("quantized bundle written to %s in %.1f s", out, time.time() - t0)
    return manifest


_LABELS = {"shapeeval_all_correct": "ShapeEval all-correct", "vqa_accuracy": "VQA accuracy"}


def _graph_file(src: Bundle, role: str) -> str | None:
    """The bundle-relative file of a graph role (`decoder` -> decoder.onnx, `text_model` -> text/model.onnx)."""
    return next((name for name, e in src.manifest["files"].items() if e["role"] == role), None)


def _quantize_graph(src: Bundle, out: Path, name: str, kind: str, arg, feeds: list | None, settings: Settings,
                    tmp: Path) -> tuple[dict, dict]:
    """Quantize one graph of `src` into `out`; -> (its manifest file entries, its calibration record)."""
    rel = _graph_file(src, name)
    path, raw, extra = src.path / rel, tmp / f"{name}.onnx", {}
    if kind == "qdq":
        symmetric = settings.target == "tensorrt"
        exclude = list(settings.exclude)
        if settings.sensitivity:
            found, extra["sensitivity"] = sensitivity_pass(
                name, path, feeds, tmp, op_types=arg, method=settings.method, exclude=exclude,
                symmetric_activations=symmetric, progress=settings.progress)
            exclude += found
        nodes = quantize_qdq(path, raw, feeds, op_types=arg, method=settings.method, exclude=exclude,
                             symmetric_activations=symmetric)
        graph = onnx.load(str(path), load_external_data=False)
        kept_out = [n for n in weight_nodes(graph, arg) if n in set(exclude)]
        matmuls = set(weight_nodes(graph, ("MatMul",)))
        if settings.target == "cpu" and matmuls & set(kept_out):
            # MatMuls kept out of Q/DQ still get 8-bit weights, as MatMulNBits (block-wise int8
            # compute on CPU); TensorRT cannot run MatMulNBits, so for it they stay float.
            quantize_weights(raw, tmp / f"{name}.w8.onnx", bits=8, block_size=settings.block_size,
                             accuracy_level=settings.accuracy_level)
            raw = tmp / f"{name}.w8.onnx"
            extra["weight_only_nodes"] = [n for n in kept_out if n in matmuls]
        extra["float_nodes"] = [n for n in kept_out if n not in extra.get("weight_only_nodes", ())]
    else:
        matmuls = weight_nodes(onnx.load(str(path), load_external_data=False), ("MatMul",))
        eight_bit = tuple(n for n in matmuls if any(p in n for p in INT4_KEEPS_8_BITS)) if arg < 8 else ()
        nodes = quantize_weights(path, raw, bits=arg, block_size=settings.block_size,
                                 accuracy_level=settings.accuracy_level, eight_bit=eight_bit)
        if eight_bit:
            extra["eight_bit_nodes"] = list(eight_bit)
    written = _save_graph(raw, out / rel)
    precision = _precision(kind, arg)
    files = {str(p.relative_to(out)): {"role": name if i == 0 else f"{name}.weights", "dtype": "fp32",
                                       "precision": precision} for i, p in enumerate(written)}
    ops = {k: v for k, v in op_counts(written[0]).items() if k in ("QuantizeLinear", "DequantizeLinear",
                                                                     "MatMulNBits", "MatMul", "Conv")}
    log.info("%s: %s on %d nodes", name, precision, len(nodes))
    return files, {"precision": precision, "quantized_nodes": len(nodes), **extra, "ops": ops}


def _precision(kind: str, arg) -> str:
    return "int8-qdq" if kind == "qdq" else f"int{arg}-weight"


def _checkpoint(src: Bundle, settings: Settings, needed: bool) -> Path | None:
    """The checkpoint whose VQGAN encodes real pictures: --checkpoint, else the manifest's source."""
    from runtime.constants import CONFIG_FILE, VQGAN_FILE

    path = Path(settings.checkpoint or src.manifest.get("source") or "")
    if str(path) not in ("", ".") and (path / CONFIG_FILE).is_file() and (path / VQGAN_FILE).is_file():
        return path
    what = f"--checkpoint {settings.checkpoint}" if settings.checkpoint else f"the bundle's source {path}"
    if needed:
        raise CalibrationError(f"{what} is not an ARMOR checkpoint; the int8 scheme encodes real pictures with its "
                               f"VQGAN: pass --checkpoint CHECKPOINT_DIR")
    log.warning("%s is not an ARMOR checkpoint: image-mode accuracy is not measured (pass --checkpoint)", what)
    return None


def _calibration_feeds(src: Bundle, settings: Settings, plan: dict, checkpoint: Path) -> dict[str, list]:
    """Calibration feeds of every graph the plan quantizes statically."""
    m = src.model
    feeds: dict[str, list] = {}
    model = BundleModel.open(src)
    try:
        if isinstance(settings.prompts, Path):
            prompts = readers.file_prompts(settings.prompts)
            if "visual_head" in plan and not any(p.draw for p in prompts):
                raise CalibrationError(f"--prompts {settings.prompts} has no drawing prompt (\"draw\": true); the "
                                       f"image-mode graphs calibrate on one")
        else:
            prompts = readers.calibration_prompts(settings.prompts, m["image_size"])
        recorded, generated = readers.record_generation(model, src.tokenizer, prompts, settings.samples,
                                                        progress=settings.progress)
    finally:
        model.close()
    feeds.update(recorded)
    extra = readers.folder_images(settings.images)
    if "vision_encoder" in plan:
        pictures = readers.world_images(settings.samples, m["image_size"]) + extra
        feeds["vision_encoder"] = readers.vision_samples(pictures, m["vision_image_size"])
    if "vq_decoder" in plan:
        n_real = max(settings.samples - len(generated), settings.samples // 2)
        pictures = readers.world_images(n_real, m["image_size"], seed=readers.CALIBRATION_SEED + 7) + extra
        real = readers.encode_codes(readers.load_vqgan(checkpoint), pictures, m["image_size"])
        feeds["vq_decoder"] = readers.vq_samples(real + generated[: settings.samples - n_real])
    log.info("calibration feeds: %s", {g: len(f) for g, f in feeds.items()})
    return feeds


def _copy_unchanged(src: Bundle, out: Path, plan: dict) -> dict[str, dict]:
    """Copy every file of the source except the graphs the plan rewrites; their manifest entries."""
    files = {}
    rewritten = set(plan) | {f"{g}.weights" for g in plan}
    graph_roles = {r for g in (*src.graphs, "text_model") for r in (g, f"{g}.weights")}
    for name, entry in src.manifest["files"].items():
        # the TensorRT form and engines describe the float graphs: re-export them from the new bundle
        if entry["role"] in rewritten or entry["role"].startswith(("trt.", "engine.")):
            continue
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.path / name, out / name)
        files[name] = {k: v for k, v in entry.items() if k not in ("bytes", "sha256")}
        if entry["role"] in graph_roles:
            files[name]["precision"] = "fp32"
    return files


def _save_graph(raw: Path, dst: Path) -> list[Path]:
    """Move a quantized graph into the bundle with the exporter's external-data rule."""
    from armor_export.onnx_files import save_onnx

    for stale in (dst, dst.with_name(dst.name + ".data")):
        stale.unlink(missing_ok=True)
    return save_onnx(onnx.load(str(raw)), dst)


def _manifest(src: Bundle, out: Path, files: dict, settings: Settings, details: dict, checkpoint) -> dict:
    from calibration import __version__

    manifest = json.loads(json.dumps(src.manifest))  # a deep copy
    manifest.pop("tensorrt", None)  # its files were not copied (see _copy_unchanged)
    manifest["files"] = {name: {**entry, "bytes": (out / name).stat().st_size, "sha256": sha256(out / name)}
                         for name, entry in sorted(files.items())}
    for name, graph in manifest["graphs"].items():
        graph["precision"] = details.get(name, {}).get("precision", "fp32")
    manifest["verification"] = {**manifest.get("verification", {}),
                                "scope": "the fp32 source bundle against PyTorch; see `accuracy` for this bundle"}
    settings_dict = {k: (str(v.resolve()) if isinstance(v, Path) else v) for k, v in asdict(settings).items()
                     if k not in ("progress", "overwrite")}
    manifest["calibration"] = {
        "calibrator": f"armor-calibrate {__version__}", "onnxruntime": _ort_version(), **settings_dict,
        "source_bundle": str(src.path.resolve()), "source_manifest_sha256": sha256(src.path / MANIFEST_FILE),
        "checkpoint": str(checkpoint) if checkpoint else None, "graphs": details,
    }
    return manifest


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _accuracy(src: Bundle, out: Path, manifest: dict, settings: Settings, checkpoint, quantized: set[str]) -> dict:
    """The report of the draft bundle in `out` (opened from the manifest in memory) against `src`."""
    draft = open_bundle(out, verify_hashes=False, manifest=manifest)  # the manifest is written last
    vqgan = readers.load_vqgan(checkpoint) if checkpoint else None
    size = src.model["image_size"]

    def grids_fn(samples):
        if vqgan is None:
            return None
        from training_ref import world
        return readers.encode_codes(vqgan, [world.render(s.answer[0], size) for s in samples], size)

    key = (str(src.path.resolve()), manifest["calibration"]["source_manifest_sha256"])
    text = _graph_file(src, "text_model")
    text_paths = (src.path / text, out / text) if text else None
    with ArmorPipeline(BundleModel.open(src)) as ref, ArmorPipeline(BundleModel.open(draft)) as test:
        return accuracy.report(ref, test, n_vqa=settings.n_vqa, n_t2i=settings.n_t2i, grids_fn=grids_fn,
                               quantized=quantized, text_paths=text_paths, fp32_key=key,
                               max_shapeeval_drop=settings.max_shapeeval_drop,
                               max_vqa_drop=settings.max_vqa_drop, progress=settings.progress)


def _write_manifest(out: Path, manifest: dict) -> None:
    from armor_export.manifest import write_manifest

    write_manifest(out, manifest)
