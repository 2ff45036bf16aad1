"""`armor-export CHECKPOINT --target onnx --out BUNDLE`: checkpoint folder -> verified bundle.

    armor-export runs/tiny/final --target onnx --out bundles/tiny [--dtype fp16] [--no-verify]
                 [--overwrite] [--no-text-model] [--kv-cache dynamic|static] [--max-context N]

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

TARGETS = ("onnx",)


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="armor-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="an ARMOR checkpoint folder (armor-train output)")
    p.add_argument("--target", default="onnx", choices=TARGETS, help="what to build")
    p.add_argument("--out", type=Path, required=True, help="the bundle folder to write")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"), help="the graphs' float type")
    p.add_argument("--no-verify", action="store_true", help="skip the numerical verification against PyTorch")
    p.add_argument("--overwrite", action="store_true", help="replace a bundle already in --out")
    p.add_argument("--no-text-model", action="store_true", help="skip text/ (the onnxruntime-genai text path)")
    p.add_argument("--kv-cache", default="dynamic", choices=("dynamic", "static"),
                   help="the decoder's cache form: dynamic (past grows by a Concat in the graph) or static "
                        "(fixed capacity, the runtime writes new rows in place; the TensorRT form)")
    p.add_argument("--max-context", type=whole(8), help="the static cache's capacity in tokens (default: the model's "
                                                    "context length)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return boundary("armor-export", lambda: _export(args))


def _export(args) -> int:
    from armor_export.export import export_bundle

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
