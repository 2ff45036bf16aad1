"""Image decoding compared: sequential vs speculative Jacobi at several windows, on one bundle.

    python -m calibration.decoding BUNDLE --windows 4,8,16 --n 200 --out decoding.json
        [--temperature 1.0 --top-k 64]

On the world's held-out t2i prompts (those of `training_ref.evaluate`), for greedy decoding and
for one stated sampling setting (greedy Jacobi rarely accepts a draft, so sampling is where it
pays): decoder + adapter calls per image, seconds per image, ShapeEval (all-correct and every
attribute) of each decoding, and for greedy whether every Jacobi answer equals the sequential
one. armor-bench runs it as its own process for `--jacobi`.

It knows the runtime's public pipeline and the world's evaluation sets; it knows nothing about
how Jacobi decoding works inside (runtime/jacobi.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from runtime.cliutil import ArgumentParser, boundary, number, whole
from runtime.generation import Done, ImageDone, ImageStarted, TextDelta
from runtime.pipeline import ArmorPipeline
from training_ref.evaluate import evaluation_sets, messages_for, score_outputs

log = logging.getLogger(__name__)

BUDGET = 64  # max new text tokens, as in training_ref.evaluate's t2i set


def _answer(pipe, messages, **kw) -> tuple[list, list, dict]:
    """(interleaved answer, the images' code grids, the timings) of one generation."""
    out, text, codes, timings = [], [], [], {}
    for e in pipe.generate(messages, max_new_tokens=BUDGET, **kw):
        if isinstance(e, TextDelta):
            text.append(e.text)
        elif isinstance(e, ImageStarted):
            if "".join(text).strip():
                out.append("".join(text).strip())
            text = []
        elif isinstance(e, ImageDone):
            out.append(e.image)
            codes.append(e.codes.tolist())
        elif isinstance(e, Done):
            timings = e.timings
    if "".join(text).strip():
        out.append("".join(text).strip())
    return out, codes, timings


def compare(pipe: ArmorPipeline, windows: list[int], n: int, sampling: dict, init: str = "above",
            seeds: int = 1, progress: bool = True) -> dict:
    """Per sampling setting (greedy, sampled) and decoding: calls and seconds per image, ShapeEval.
    The sampled setting runs every prompt with `seeds` seeds (the same seeds for every decoding)."""
    heldout = evaluation_sets(0, n, 0, canonical=True)["t2i"]
    settings = {"greedy": {}, "sampled": sampling}
    decodings = [("sequential", {})] + [(f"jacobi-{w}", {"image_decoding": "jacobi", "jacobi_window": w,
                                                        "jacobi_init": init}) for w in windows]
    report: dict = {"n": n, "seeds": seeds, "sampling": sampling, "jacobi_init": init,
                    "cfg_scale": pipe.model.cfg_scale, "results": {}}
    for setting, params in settings.items():
        samples = heldout * (seeds if params else 1)
        sequential_codes = None
        for name, kw in decodings:
            answers, all_codes, calls, seconds, images = [], [], 0, 0.0, 0
            for i, s in enumerate(tqdm(samples, desc=f"{setting} {name}", disable=not progress)):
                seed = {"seed": i} if params else {}
                out, codes, t = _answer(pipe, messages_for(s), **params, **seed, **kw)
                answers.append(out)
                all_codes.append(codes)
                if codes:
                    images += len(codes)
                    calls += t.get("image_calls", 0)
                    seconds += t.get("image_s", 0.0) + t.get("vq_decode_s", 0.0)
            scores = score_outputs("t2i", samples, answers)
            row = {"images": images, "calls_per_image": calls / images if images else float("nan"),
                   "s_per_image": seconds / images if images else float("nan"), "shapeeval": scores,
                   "all_correct": scores["all_correct"]}
            if name == "sequential":
                sequential_codes = all_codes
            else:
                row["identical_to_sequential"] = all_codes == sequential_codes
            report["results"][f"{setting}/{name}"] = row
    for setting in settings:
        base = report["results"][f"{setting}/sequential"]
        for name, _ in decodings[1:]:
            row = report["results"][f"{setting}/{name}"]
            row["fewer_calls"] = base["calls_per_image"] / row["calls_per_image"] if row["images"] else float("nan")
            row["speedup_s_per_image"] = base["s_per_image"] / row["s_per_image"] if row["images"] else float("nan")
            row["all_correct_change_points"] = round(100 * (row["all_correct"] - base["all_correct"]), 2)
    return report


def format_report(report: dict) -> str:
    s = report["sampling"]
    lines = [f"image decoding on {report['n']} held-out t2i prompts (sampled: temperature {s['temperature']}, "
             f"top-k {s['top_k']}, {report['seeds']} seed(s) per prompt; Jacobi drafts: {report['jacobi_init']})",
             f"  {'setting/decoding':22s} {'calls/img':>9s} {'fewer':>6s} {'s/img':>7s} {'speedup':>7s} "
             f"{'all-correct':>11s} {'change':>7s}"]
    for name, r in report["results"].items():
        lines.append(f"  {name:22s} {r['calls_per_image']:9.1f} {r.get('fewer_calls', 1.0):5.2f}x "
                     f"{r['s_per_image']:7.3f} {r.get('speedup_s_per_image', 1.0):6.2f}x {r['all_correct']:11.3f} "
                     f"{r.get('all_correct_change_points', 0.0):+7.1f}"
                     + ("" if "identical_to_sequential" not in r or name.startswith("sampled")
                        else f"  identical: {r['identical_to_sequential']}"))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m calibration.decoding", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--windows", default="4,8,16", help="Jacobi windows, e.g. 4,8,16")
    p.add_argument("--n", type=whole(1), default=200, help="held-out t2i prompts")
    p.add_argument("--temperature", type=number(0.0), default=1.0, help="the sampled setting's temperature")
    p.add_argument("--top-k", type=whole(0), default=64, help="the sampled setting's top-k")
    p.add_argument("--seeds", type=whole(1), default=1, help="seeds per prompt in the sampled setting")
    p.add_argument("--init", default="above", choices=("above", "repeat", "random"), help="how drafts are filled")
    p.add_argument("--threads", type=whole(1))
    p.add_argument("--out", type=Path, help="write the report here (JSON)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        from runtime.errors import InputError

        try:
            windows = [int(w) for w in args.windows.split(",") if w.strip()]
        except ValueError:
            windows = []
        if not windows or min(windows) < 2:
            raise InputError(f"--windows must be whole numbers >= 2, e.g. 4,8,16; got {args.windows!r}")
        t0 = time.perf_counter()
        with ArmorPipeline.load(args.bundle, threads=args.threads, thread_pool="shared") as pipe:
            report = compare(pipe, windows, args.n, {"temperature": args.temperature, "top_k": args.top_k},
                             args.init, args.seeds, progress=not args.quiet)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        if args.out:
            tmp = args.out.with_name(args.out.name + ".tmp")
            tmp.write_text(json.dumps(report, indent=2))
            os.replace(tmp, args.out)
        print(format_report(report))
        return 0

    return boundary("calibration.decoding", body)


if __name__ == "__main__":
    sys.exit(main())
