"""The measurement behind the defaults: accuracy against fp32 over calibration sample counts and methods.

    python -m calibration.sweep BUNDLE [--samples 8 16 32 64 128] [--methods minmax entropy percentile]
                                [--scheme int8] [--n-vqa 40] [--n-t2i 16] [--no-sensitivity] [--json OUT]

For every (method, samples) it runs `calibrate_bundle` into a temporary folder with the gates
forced open and prints one row of the report (text/image-mode top-1 and KL, VQ-decoder PSNR,
vision cosine, end-to-end deltas) and the calibration time. It knows the report's layout,
nothing about how the numbers are made.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from calibration.calibrate import Settings, calibrate_bundle


def row(report: dict) -> dict:
    g, e = report["graphs"], report["end_to_end"]
    out = {}
    for mode in ("text_mode", "image_mode"):
        if "top1_agreement" in g[mode]:
            out[f"{mode}_top1"], out[f"{mode}_kl"] = g[mode]["top1_agreement"], g[mode]["kl"]
    if "psnr_db" in g["vq_decoder"]:
        out["vq_psnr_db"] = g["vq_decoder"]["psnr_db"]
    if "cosine" in g["vision_encoder"]:
        out["vision_cosine"] = g["vision_encoder"]["cosine"]
    for key in ("shapeeval_all_correct", "vqa_accuracy"):
        out[f"{key}_drop"] = report["gates"]["drop_points"][key]
        out[f"{key}_fp32"] = e["fp32"][key]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--scheme", default="int8")
    p.add_argument("--samples", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--methods", nargs="+", default=["minmax", "entropy", "percentile"])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n-vqa", type=int, default=40)
    p.add_argument("--n-t2i", type=int, default=16)
    p.add_argument("--no-sensitivity", action="store_true", help="measure the calibration alone")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="armor-sweep-") as tmp:
        for method in args.methods:
            for n in args.samples:
                t0 = time.time()
                settings = Settings(scheme=args.scheme, samples=n, method=method, prompts=args.prompts,
                                    n_vqa=args.n_vqa, n_t2i=args.n_t2i, sensitivity=not args.no_sensitivity,
                                    force=True, overwrite=True, progress=False)
                m = calibrate_bundle(args.bundle, Path(tmp) / "q", settings)
                r = {"method": method, "samples": n, **row(m["accuracy"]), "seconds": round(time.time() - t0, 1)}
                rows.append(r)
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
