"""`armor-bench BUNDLE --soak N --out DIR`: N mixed generations in one process, RSS over time.

The generations cycle through a text question, a question about an input image, a drawing
request and an interleaved request, with greedy and seeded sampled decoding alternating. The
resident set size is read after the first generation and at every 10% of the run; growth is
measured from the 10% point (after warm-up allocations) to the end. Writes soak.json. It
knows the public pipeline API only.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np
from tqdm import tqdm

from runtime.errors import ArmorError

PROMPTS = ("what is 2 plus 3?", None, "draw a small blue square in the center.",
           "draw a picture with 3 shapes and tell me what it shows.")  # None: the image question


def rss_mb() -> float:
    """The current resident set size in MB."""
    from runtime.bench import memory_mb

    return memory_mb("VmRSS")


def _messages(i: int, image) -> list[dict]:
    prompt = PROMPTS[i % len(PROMPTS)]
    if prompt is None:
        return [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "how many shapes are there?"}]}]
    return [{"role": "user", "content": prompt}]


def soak(bundle, n: int, backend: str = "ort", device: str = "cpu", threads: int | None = None,
         progress: bool = True) -> dict:
    from PIL import Image, ImageDraw

    from runtime.pipeline import ArmorPipeline

    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle((8, 8, 30, 30), fill=(40, 40, 220))
    marks = sorted({max(1, round(n * k / 10)) for k in range(1, 11)})
    series, t0 = [], time.perf_counter()
    with ArmorPipeline.load(bundle, backend=backend, device=device, threads=threads) as pipe:
        series.append({"generations": 0, "rss_mb": rss_mb()})
        for i in tqdm(range(1, n + 1), desc="soak", disable=not progress):
            sampled = i % 2 == 0
            pipe.chat(_messages(i, image), max_new_tokens=48, temperature=0.8 if sampled else 0.0, top_k=40, seed=i)
            if i in marks:
                series.append({"generations": i, "rss_mb": rss_mb(), "seconds": time.perf_counter() - t0})
    first = next(s for s in series if s["generations"] >= marks[0])
    growth = (series[-1]["rss_mb"] - first["rss_mb"]) / first["rss_mb"]
    return {"bundle": str(bundle), "generations": n, "series": series, "growth_from_10pct": growth,
            "seconds": time.perf_counter() - t0, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}


def main(args) -> int:
    if args.soak < 1 or len(args.bundles) != 1:
        print("armor-bench: error: --soak takes N >= 1 and exactly one bundle", file=sys.stderr)
        return 2
    try:
        result = soak(args.bundles[0], args.soak, args.backend, args.device, args.threads)
    except ArmorError as e:
        print(f"armor-bench: error: {e}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "soak.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out / "soak.json")
    rss = ", ".join(f"{s['generations']}: {s['rss_mb']:.1f}" for s in result["series"])
    print(f"soak: {result['generations']} generations in {result['seconds']:.0f} s; RSS MB at "
          f"[generations: MB] {rss}; growth from the 10% point {100 * result['growth_from_10pct']:+.2f}%")
    print(f"armor-bench: wrote {args.out / 'soak.json'}")
    return 0 if np.isfinite(result["growth_from_10pct"]) else 1
