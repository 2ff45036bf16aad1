"""`armor-calibrate BUNDLE --out BUNDLE_Q`: an fp32 bundle -> a quantized bundle with its accuracy report.

    armor-calibrate bundles/tiny --out bundles/tiny-int8 [--scheme int8|int8-weight|int4-weight]
                    [--samples N] [--prompts N|FILE] [--method minmax|entropy|percentile] [--block-size 32]
                    [--accuracy-level 4] [--target cpu|tensorrt] [--no-sensitivity] [--exclude NODE ...]
                    [--images DIR] [--checkpoint DIR] [--n-vqa 200] [--n-t2i 40]
                    [--max-shapeeval-drop 3] [--max-vqa-drop 2] [--force] [--overwrite]

Prints the accuracy report. Exits 1 with one line (and writes no manifest) when a gate fails
without --force, or when the input is wrong; 0 when the bundle is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from runtime.cliutil import ArgumentParser, boundary, number, whole, writable_folder


def parse_args(argv=None) -> argparse.Namespace:
    from calibration.calibrate import DEFAULT_METHOD, DEFAULT_PROMPTS, DEFAULT_SAMPLES, SCHEMES, TARGETS
    from calibration.quantize import METHODS

    p = ArgumentParser(prog="armor-calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, help="an fp32 bundle folder (armor-export output)")
    p.add_argument("--out", type=Path, required=True, help="the quantized bundle folder to write")
    p.add_argument("--scheme", default="int8", choices=SCHEMES,
                   help="int8: static Q/DQ (weights and activations); int8-weight / int4-weight: MatMulNBits "
                        "weight-only for the decoder and heads (default int8)")
    p.add_argument("--samples", type=whole(1), default=DEFAULT_SAMPLES,
                   help=f"calibration inputs per graph (default {DEFAULT_SAMPLES})")
    p.add_argument("--prompts", default=str(DEFAULT_PROMPTS), metavar="N|FILE",
                   help=f"what the decoder and heads are calibrated on: N shapes-world generations (default "
                        f"{DEFAULT_PROMPTS}) or a JSONL file of conversations, one a line: "
                        f'{{"messages": [...], "draw": false}} (image paths relative to the file)')
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                   help=f"activation range calibration for int8 (default {DEFAULT_METHOD})")
    p.add_argument("--block-size", type=whole(16), default=32, help="weights per scale for the weight-only schemes")
    p.add_argument("--accuracy-level", type=int, default=4, choices=range(5), metavar="{0..4}",
                   help="weight-only: MatMulNBits compute precision (1 fp32, 4 int8 = the fast CPU kernels; default 4)")
    p.add_argument("--images", type=Path, help="a folder of extra pictures to calibrate the vision encoder "
                                               "and the VQ decoder with")
    p.add_argument("--checkpoint", type=Path, help="the checkpoint whose VQGAN encodes pictures "
                                                   "(default: the bundle's source)")
    p.add_argument("--target", default="cpu", choices=TARGETS,
                   help="int8: cpu (uint8 activations; nodes kept out of Q/DQ get 8-bit MatMulNBits) or tensorrt "
                        "(symmetric int8 activations, pure Q/DQ, the rest float); default cpu")
    p.add_argument("--no-sensitivity", action="store_true",
                   help="int8: skip the sensitivity pass (each node's damage measured, the worst kept out of Q/DQ); "
                        "its cost grows with the number of nodes")
    p.add_argument("--exclude", nargs="*", default=[], metavar="NODE", help="int8: node names to keep out of Q/DQ (as --target decides)")
    p.add_argument("--n-vqa", type=whole(1), default=200, help="held-out VQA prompts for the report (default 200)")
    p.add_argument("--n-t2i", type=whole(1), default=40, help="held-out t2i prompts for the report (default 40; "
                                                        "200 for a release)")
    p.add_argument("--max-shapeeval-drop", type=number(), default=3.0, help="gate, in points (default 3)")
    p.add_argument("--max-vqa-drop", type=number(), default=2.0, help="gate, in points (default 2)")
    p.add_argument("--force", action="store_true", help="write the bundle even when a gate fails")
    p.add_argument("--overwrite", action="store_true", help="replace a bundle already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return boundary("armor-calibrate", lambda: _calibrate(args))


def _calibrate(args) -> int:
    from calibration.calibrate import Settings, calibrate_bundle
    from calibration.errors import GateError

    settings = Settings(scheme=args.scheme, samples=args.samples, method=args.method, prompts=args.prompts,
                        block_size=args.block_size, accuracy_level=args.accuracy_level, images=args.images,
                        checkpoint=args.checkpoint, target=args.target, exclude=args.exclude,
                        sensitivity=not args.no_sensitivity,
                        n_vqa=args.n_vqa, n_t2i=args.n_t2i, max_shapeeval_drop=args.max_shapeeval_drop,
                        max_vqa_drop=args.max_vqa_drop, force=args.force, overwrite=args.overwrite,
                        progress=not args.quiet)

    writable_folder(args.out)
    t0 = time.time()
    try:
        manifest = calibrate_bundle(args.bundle, args.out, settings)
    except GateError as e:
        if e.report:
            print(format_report(e.report))
        raise
    print(format_report(manifest["accuracy"]))
    size = sum(f["bytes"] for f in manifest["files"].values())
    forced = " (gates failed; written because of --force)" if manifest["accuracy"]["gates"].get("forced") else ""
    print(f"armor-calibrate: {args.scheme} bundle {args.out} ({size / 2**20:.1f} MiB) in "
          f"{time.time() - t0:.1f} s{forced}")
    return 0


def format_report(report: dict) -> str:
    """The accuracy report as a few aligned lines."""
    lines = ["accuracy against the fp32 bundle:"]
    for name, r in report["graphs"].items():
        if "top1_agreement" in r:
            text = f"top-1 agreement {r['top1_agreement']:.3f}  KL {r['kl']:.2e} nats  ({r['positions']} positions)"
        elif "psnr_db" in r:
            text = f"PSNR {r['psnr_db']:.1f} dB (min {r['psnr_db_min']:.1f}, {r['images']} images)"
        elif "cosine" in r:
            text = f"cosine {r['cosine']:.5f} (min {r['cosine_min']:.5f}, {r['images']} images)"
        else:
            text = "unchanged (fp32)" if r.get("unchanged") else f"skipped: {r.get('skipped')}"
        lines.append(f"  {name:15s} {text}")
    e2e, g = report["end_to_end"], report["gates"]
    for key, label, n in (("shapeeval_all_correct", "ShapeEval all-correct", e2e["n_t2i"]),
                          ("vqa_accuracy", "VQA accuracy", e2e["n_vqa"])):
        ok = "FAIL" if key in g["failed"] else "ok"
        lines.append(f"  {label:22s} fp32 {100 * e2e['fp32'][key]:5.1f}  quantized {100 * e2e['quantized'][key]:5.1f}"
                     f"  drop {g['drop_points'][key]:+5.1f} points (limit {g['max_drop_points'][key]:g}) {ok}"
                     f"  [{n} prompts]")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
