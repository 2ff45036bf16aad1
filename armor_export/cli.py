"""`armor-export CHECKPOINT --target onnx --out BUNDLE`: checkpoint folder -> verified bundle.

    armor-export runs/tiny/final --target onnx --out bundles/tiny [--dtype fp16] [--no-verify]
                 [--overwrite] [--no-text-model] [--kv-cache dynamic|static] [--max-context N]
    armor-export runs/tiny/final --target gguf --out bundles/tiny [--gguf-type f32|f16|q8_0|q4_k_m]
                 [--force]    (adds text.gguf for llama.cpp; exports the ONNX bundle first if none)
    armor-export CHECKPOINT_OR_BUNDLE --target tensorrt --out BUNDLE [--precision fp32|fp16|int8]
                 [--trt-version 10.3|10.x|11] [--max-batch 2] [--max-context N] [--workspace MB]
                 [--timing-cache PATH]    (adds trt/; engines/ where TensorRT and a GPU exist)
    armor-export --check tensorrt BUNDLE [--trt-version 10.3|10.x|11]

Prints the verification report; exits non-zero with one line (and writes no manifest) when
anything fails.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

from runtime.cliutil import ArgumentParser, boundary, whole

TARGETS = ("onnx", "gguf", "tensorrt")
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_k_m")  # runtime.constants.GGUF_TYPES (checked in armor_export.gguf)


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="armor-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="an ARMOR checkpoint folder (armor-train output)")
    p.add_argument("--target", default="onnx", choices=TARGETS, help="what to build")
    p.add_argument("--out", type=Path, help="the bundle folder to write (required but with --check)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"), help="the graphs' float type")
    p.add_argument("--no-verify", action="store_true", help="skip the numerical verification against PyTorch")
    p.add_argument("--overwrite", action="store_true", help="replace a bundle already in --out")
    p.add_argument("--no-text-model", action="store_true", help="skip text/ (the onnxruntime-genai text path)")
    p.add_argument("--kv-cache", default="dynamic", choices=("dynamic", "static"),
                   help="the decoder's cache form: dynamic (past grows by a Concat in the graph) or static "
                        "(fixed capacity, the runtime writes new rows in place; the TensorRT form)")
    p.add_argument("--max-context", type=whole(8), help="the static cache's capacity in tokens (default: the model's "
                                                    "context length)")
    p.add_argument("--gguf-type", default="f32", choices=GGUF_TYPES,
                   help="with --target gguf: text.gguf's weight type (quantized by llama.cpp's own quantizer)")
    p.add_argument("--force", action="store_true", help="with --target gguf: keep a quantized text.gguf that fails "
                                                        "its accuracy gates")
    p.add_argument("--threads", type=whole(1), help="with --target gguf: llama.cpp threads (default: all cores)")
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8"),
                   help="with --target tensorrt: the TensorRT graphs' precision (int8: the Q/DQ graphs of a bundle "
                        "calibrated with armor-calibrate --scheme int8 --target tensorrt)")
    p.add_argument("--trt-version", choices=("10.3", "10.x", "11"),
                   help="with --target tensorrt or --check tensorrt: the TensorRT tier (default 10.3, JetPack 6; "
                        "--check: the bundle's own)")
    p.add_argument("--max-batch", type=whole(1), default=2, help="with --target tensorrt: the profiles' largest batch")
    p.add_argument("--workspace", type=whole(1), help="with --target tensorrt: the builder's workspace in MiB")
    p.add_argument("--timing-cache", type=Path, help="with --target tensorrt: the timing cache file to reuse")
    p.add_argument("--check", choices=("tensorrt",), help="check the bundle CHECKPOINT's TensorRT form statically "
                                                         "instead of exporting")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.out is None and not args.check:
        p.error("the following arguments are required: --out")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return boundary("armor-export", lambda: _export(args))


def _export(args) -> int:
    from armor_export.export import export_bundle

    if args.check == "tensorrt":
        return _check_tensorrt(args)
    if args.target == "gguf":
        return _export_gguf(args)
    if args.target == "tensorrt":
        return _export_tensorrt(args)

    t0 = time.time()
    manifest = export_bundle(args.checkpoint, args.out, dtype=args.dtype, verify=not args.no_verify,
                             overwrite=args.overwrite, with_text_model=not args.no_text_model,
                             progress=not args.quiet, kv_cache=args.kv_cache, max_context=args.max_context)
    print(format_report(manifest["verification"]))
    size = sum(f["bytes"] for f in manifest["files"].values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"armor-export: bundle {args.out} ({size / 2**20:.1f} MiB, {manifest['dtype']}); export "
          f"{manifest['export_seconds']:.1f} s, with verification {time.time() - t0:.1f} s; peak RSS {peak:.2f} GiB")
    return 0


def _export_gguf(args) -> int:
    from armor_export.gguf import export_gguf

    t0 = time.time()
    manifest = export_gguf(args.checkpoint, args.out, gguf_type=args.gguf_type, verify_file=not args.no_verify,
                           overwrite=args.overwrite, force=args.force, threads=args.threads, dtype=args.dtype,
                           verify=not args.no_verify, with_text_model=not args.no_text_model,
                           progress=not args.quiet, kv_cache=args.kv_cache, max_context=args.max_context)
    print(format_gguf_report(manifest["gguf"]["verification"]))
    entry = manifest["files"]["text.gguf"]
    print(f"armor-export: text.gguf ({entry['dtype']}, {entry['bytes'] / 2**20:.1f} MiB) in {args.out}; "
          f"{time.time() - t0:.1f} s")
    return 0


def _export_tensorrt(args) -> int:
    from armor_export.tensorrt import Options, export_tensorrt

    t0 = time.time()
    opts = Options(precision=args.precision, trt_version=args.trt_version or "10.3", max_batch=args.max_batch,
                   max_context=args.max_context, workspace_mb=args.workspace, timing_cache=args.timing_cache,
                   overwrite=args.overwrite, progress=not args.quiet)
    manifest, note = export_tensorrt(args.checkpoint, args.out, opts)
    section = manifest["tensorrt"]
    print(f"armor-export: TensorRT form ({section['precision']}, TensorRT {section['tier']}, batch 1-"
          f"{section['max_batch']}, capacity {section['capacity']}) in {args.out}/trt: {len(section['graphs'])} graphs, "
          f"trt/profiles.json, trt/trtexec.sh; static check passed; {time.time() - t0:.1f} s")
    print(f"armor-export: {note}")
    return 0


def _check_tensorrt(args) -> int:
    from armor_export.trt_check import check_bundle, report

    tier, problems = check_bundle(args.checkpoint, args.trt_version)
    print(report(tier, problems))
    return 1 if problems else 0


def format_gguf_report(report: dict) -> str:
    if report.get("skipped"):
        return "text.gguf verification: skipped (--no-verify)"
    status = "ok" if report["passed"] else "FAIL (kept: --force)"
    if report["against"] == "pytorch":
        return (f"text.gguf {report['type']} vs PyTorch ({report['prompts']} prompts, {report['tokens']} tokens, "
                f"f32 KV cache): {status}; max |diff| logits {report['max_abs_diff_logits']:.2e}, hidden "
                f"{report['max_abs_diff_hidden']:.2e} (atol {report['atol']:g}), top-1 {report['top1_agreement']:.3f}")
    line = (f"text.gguf {report['type']} vs f32 text.gguf ({report['tokens']} tokens): {status}; top-1 "
            f"{report['top1_agreement']:.3f} (gate {report['gates']['min_top1']}), KL mean {report['kl_mean']:.2e} "
            f"(gate {report['gates']['max_kl_mean']}), max {report['kl_max']:.2e}")
    e2e = report.get("end_to_end")
    if e2e:  # the runtime's answers on llama.cpp, f32 vs this type
        for key, label, n in (("shapeeval_all_correct", "ShapeEval all-correct", "n_t2i"),
                              ("vqa_accuracy", "VQA accuracy", "n_vqa")):
            ok = "FAIL" if key in e2e["failed"] else "ok"
            line += (f"\n  {label:22s} f32 {100 * e2e['f32'][key]:5.1f}  {report['type']} "
                     f"{100 * e2e['quantized'][key]:5.1f}  drop {e2e['drop_points'][key]:+.1f} points "
                     f"(limit {e2e['max_drop_points'][key]:g}) {ok}  [{e2e['quantized'][n]} prompts]")
    return line


def format_report(report: dict) -> str:
    if report.get("skipped"):
        return "verification: skipped (--no-verify)"
    lines = [f"verification against PyTorch (atol {report['tolerances']['atol']}, rtol {report['tolerances']['rtol']}, "
             f"decoder prefill + {report['decode_steps']} cached steps):"]
    for name, c in report["checks"].items():
        top1 = f"  top-1 {c['top1_agreement']:.3f}" if "top1_agreement" in c else ""
        lines.append(f"  {name:15s} {'ok  ' if c['passed'] else 'FAIL'} max |diff| {c['max_abs_diff']:.2e}{top1}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
