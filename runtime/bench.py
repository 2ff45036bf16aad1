"""`armor-bench BUNDLE [--checkpoint CKPT] [--device NAME] --out DIR`: speed and memory.

Measures, on fixed shapes-world prompts: load time, time to first token (image + question),
text decode tokens/s (prefill then cached greedy steps, end-of-turn ignored), image tokens/s
with CFG (one grid of guided steps from `<imgbos>`, so random-weight models are measured
too), end-to-end image tokens/s and seconds per image over whole t2i generations (when the
model answers with an image), vision encoder ms, VQ decode ms, peak RSS, size on disk, and
the decoder alone per cached step with numpy feeds vs ORT IO binding (the KV cache kept as
OrtValues between steps; `decoder_step_ms`, `decoder_step_ms_iobinding`, bench.json only).
Several bundles (say fp32, int8-weight, int4-weight) are measured in one command and
compared with the first; with `--checkpoint`, the same workloads run on the PyTorch
reference (eager, same weights) and the first bundle is compared with it. Each engine and
bundle runs in its own fresh process (one after the other), so each peak RSS is its own.
Writes `bench.json`, `bench.csv` (one row per device, precision and engine) and `bench.png`.
torch is imported only for `--checkpoint`.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime.errors import ArmorError

TEXT_PROMPT = [{"role": "user", "content": "describe the image."}]
T2I_PROMPTS = ["draw a large red circle at the top left.", "draw a small blue square in the center.",
               "draw a large green triangle at the bottom right and a small yellow circle at the top."]
CSV_FIELDS = ["device", "precision", "engine", "bundle_mb", "load_s", "ttft_ms", "text_tokens_per_s", "image_tokens_per_s",
              "image_tokens_per_s_e2e", "s_per_image", "vision_ms", "vq_decode_ms", "peak_rss_mb"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def decoder_step_ms(model, ids: list[int], steps: int) -> float:
    """Prefill `ids`, then ms per cached single-token step through the decoder only (no heads):
    the cache goes back in as the model returns it (numpy, or OrtValues with IO binding)."""
    n = len(ids)
    _, past = model.decode(model.embed(np.asarray([ids])), np.ones((1, n), np.int64), np.arange(n)[None],
                           model.empty_past(1))
    x = model.embed(np.asarray([[ids[-1]]]))
    t = time.perf_counter()
    for i in range(steps):
        _, past = model.decode(x, np.ones((1, n + i + 1), np.int64), np.asarray([[n + i]]), past)
    return (time.perf_counter() - t) * 1e3 / steps


def _decoder_step_pair(m, ids: list[int], steps: int, repeats: int) -> dict:
    """Numpy feeds vs IO binding on the same sessions, interleaved so drift hits both alike."""
    from runtime.engine import BundleModel

    paths = {"decoder_step_ms": m, "decoder_step_ms_iobinding": BundleModel(m.bundle, m.backends, io_binding=True)}
    times = {k: [] for k in paths}
    for r in range(repeats + 1):  # the first round warms up
        for k, model in paths.items():
            ms = decoder_step_ms(model, ids, steps)
            if r:
                times[k].append(ms)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["decoder_step_iobinding_speedup"] = out["decoder_step_ms"] / out["decoder_step_ms_iobinding"]
    return out


def bench_runtime(bundle: Path, device: str, steps: int, repeats: int, threads: int | None) -> dict:
    from runtime.generation import Done, prepare_prompt
    from runtime.image import preprocess
    from runtime.pipeline import ArmorPipeline
    from runtime.sampling import Sampler, SamplingParams

    t0 = time.perf_counter()
    pipe = ArmorPipeline.load(bundle, device=device, threads=threads)
    load_s = time.perf_counter() - t0
    m, tok = pipe.model, pipe.tokenizer
    image = _probe_image(m.vision_size)
    vqa = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "how many shapes are there?"}]}]
    ttft = []
    for _ in range(repeats):
        done = [e for e in pipe.generate(vqa, max_new_tokens=1) if isinstance(e, Done)][0]
        ttft.append(done.timings["first_token_s"])

    def text_decode():  # prefill, then `steps` cached greedy steps through decoder + text head
        from runtime.generation import _Stream, prepare_prompt

        ids, _ = prepare_prompt(m, tok, TEXT_PROMPT)
        stream, sampler = _Stream(m, m.embed(np.asarray([ids])), {}), Sampler(SamplingParams())
        t = time.perf_counter()
        for _ in range(steps):
            idx = sampler(m.text_logits(stream.last)[0, -1])
            stream.feed([min(idx, m.space.n_text_vocab - 1)])
        return steps / (time.perf_counter() - t)

    def image_decode():  # one image's worth of CFG steps: batch-2 decoder + adapter per code
        from runtime.generation import UNCONDITIONAL_MESSAGES, _AdapterCursor, _merge_for_cfg, _Stream, prepare_prompt

        ids, _ = prepare_prompt(m, tok, [{"role": "user", "content": T2I_PROMPTS[0]}])
        uncond, _ = prepare_prompt(m, tok, UNCONDITIONAL_MESSAGES)
        t = time.perf_counter()
        cond = _Stream(m, m.embed(np.asarray([ids + [m.space.img_bos]])), {})
        stream = _merge_for_cfg(cond, _Stream(m, m.embed(np.asarray([uncond + [m.space.img_bos]])), {}))
        adapter, codes = _AdapterCursor(m, stream), []
        for _ in range(m.grid[0] * m.grid[1]):
            logits = adapter.logits()
            code = int(np.argmax(logits[1, :m.space.n_codes] + 3.0 * (logits[0] - logits[1])[:m.space.n_codes]))
            codes.append(code)
            stream.feed([m.space.n_text_vocab + code])
            adapter.advance()
        return len(codes) / (time.perf_counter() - t)

    text_tps = statistics.median(text_decode() for _ in range(repeats))
    img_tps = statistics.median(image_decode() for _ in range(repeats))
    step_ms = _decoder_step_pair(m, prepare_prompt(m, tok, TEXT_PROMPT)[0], steps, repeats)
    e2e_tps, s_img = _image_runs(lambda msgs: [e for e in pipe.generate(msgs, max_new_tokens=4, cfg_scale=3.0)
                                               if isinstance(e, Done)][0],
                                 lambda done: (done.image_tokens, done.timings["total_s"]))
    pixels = np.stack([preprocess(image, m.vision_size)])
    codes = np.zeros((1, *m.grid), np.int64)
    out = {"engine": "runtime", "load_s": load_s, "ttft_ms": statistics.median(ttft) * 1e3,
           "text_tokens_per_s": text_tps, "image_tokens_per_s": img_tps, "s_per_image": s_img,
           "image_tokens_per_s_e2e": e2e_tps,
           "vision_ms": _median_ms(lambda: m.encode_images(pixels), repeats * 3),
           "vq_decode_ms": _median_ms(lambda: m.decode_image(codes), repeats * 3), **step_ms,
           "peak_rss_mb": peak_rss_mb()}
    pipe.close()
    return out


def bench_reference(checkpoint: Path, bundle_dtype: str, steps: int, repeats: int) -> dict:
    import torch

    from runtime.sampling import SamplingParams
    from training_ref.checkpoint import load_checkpoint
    from training_ref.generate import _Stream, generate

    t0 = time.perf_counter()
    model, tok = load_checkpoint(checkpoint)
    load_s = time.perf_counter() - t0
    size = model.mllm.config.vision_config.image_size[0]
    image = _probe_image(size)
    vqa = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "how many shapes are there?"}]}]
    ttft = []
    for _ in range(repeats):
        t = time.perf_counter()
        generate(model, tok, vqa, max_new_tokens=1)
        ttft.append(time.perf_counter() - t)

    @torch.no_grad()
    def text_decode():
        from runtime.chat import format_chat

        ids = tok.encode(format_chat(TEXT_PROMPT, model.config.n_image_tokens), add_special_tokens=False).ids
        stream = _Stream(model, ids)
        t = time.perf_counter()
        for _ in range(steps):
            idx = int(model.text_logits(stream.last)[0, -1].argmax())
            stream.feed([min(idx, model.config.n_text_vocab - 1)])
        return steps / (time.perf_counter() - t)

    @torch.no_grad()
    def image_decode():  # the reference's CFG: two batch-1 streams, adapter per stream
        from runtime.chat import format_chat

        cfg = model.config
        enc = lambda msgs: tok.encode(format_chat(msgs, cfg.n_image_tokens), add_special_tokens=False).ids  # noqa: E731
        t = time.perf_counter()
        cond = _Stream(model, enc([{"role": "user", "content": T2I_PROMPTS[0]}]) + [cfg.img_bos_id])
        uncond = _Stream(model, enc([{"role": "user", "content": ""}]) + [cfg.img_bos_id])
        pc = pu = None
        for i in range(cfg.n_grid):
            lc, pc = cond.image_logits(i, pc)
            lu, pu = uncond.image_logits(i, pu)
            code = int((lu + 3.0 * (lc - lu))[0, -1, :cfg.n_codes].argmax())
            cond.feed([cfg.code_offset + code])
            uncond.feed([cfg.code_offset + code])
        return cfg.n_grid / (time.perf_counter() - t)

    text_tps = statistics.median(text_decode() for _ in range(repeats))
    img_tps = statistics.median(image_decode() for _ in range(repeats))
    n_img = model.config.n_grid + 2

    def run_t2i(msgs):
        t = time.perf_counter()
        out = generate(model, tok, msgs, max_new_tokens=4, cfg_scale=3.0, sampling=SamplingParams())
        return out, time.perf_counter() - t

    e2e_tps, s_img = _image_runs(run_t2i, lambda r: (n_img if any(not isinstance(p, str) for p in r[0]) else 0, r[1]))
    from runtime.image import preprocess

    pixels = torch.from_numpy(np.stack([preprocess(image, size)]))
    codes = torch.zeros((1, *model.config.image_grid), dtype=torch.long)
    with torch.no_grad():
        vision_ms = _median_ms(lambda: model.encode_images(pixels), repeats * 3)
        vq_ms = _median_ms(lambda: model.vqgan.decode(codes), repeats * 3)
    return {"engine": "pytorch", "load_s": load_s, "ttft_ms": statistics.median(ttft) * 1e3,
            "text_tokens_per_s": text_tps, "image_tokens_per_s": img_tps, "s_per_image": s_img,
            "image_tokens_per_s_e2e": e2e_tps, "vision_ms": vision_ms, "vq_decode_ms": vq_ms, "peak_rss_mb": peak_rss_mb()}


def _image_runs(run, count) -> tuple[float, float]:
    """Image tokens/s and seconds per image over the t2i prompts (only runs that made an image)."""
    tokens = seconds = images = 0
    for prompt in T2I_PROMPTS:
        n, s = count(run([{"role": "user", "content": prompt}]))
        if n:
            tokens, seconds, images = tokens + n, seconds + s, images + 1
    if not images:
        return float("nan"), float("nan")
    return tokens / seconds, seconds / images


def _probe_image(size: int):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse((size // 8, size // 8, size // 3, size // 3), fill=(220, 40, 40))
    return im


SPEED_KEYS = ("text_tokens_per_s", "image_tokens_per_s", "image_tokens_per_s_e2e")  # higher is better
TIME_KEYS = ("ttft_ms", "vision_ms", "vq_decode_ms", "s_per_image")  # lower is better


def ratios_against(row: dict, base: dict) -> dict:
    """How many times faster `row` is than `base` on every metric both measured."""
    out = {k: row[k] / base[k] for k in SPEED_KEYS if base[k] and np.isfinite(base[k]) and np.isfinite(row[k])}
    out.update({f"{k}_speedup": base[k] / row[k] for k in TIME_KEYS if row[k] and np.isfinite(row[k])})
    return out


def write_outputs(out: Path, rows: list[dict], meta: dict) -> dict:
    """bench.json (rows, runtime-vs-PyTorch ratios of the first bundle, and every other bundle
    against the first one), bench.csv and bench.png; returns the ratios."""
    out.mkdir(parents=True, exist_ok=True)
    runtime_rows = [r for r in rows if r["engine"] == "runtime"]
    ref = next((r for r in rows if r["engine"] == "pytorch"), None)
    ratios = ratios_against(runtime_rows[0], ref) if runtime_rows and ref else {}
    vs_first = {f"{r['precision']} ({r['bundle']})": ratios_against(r, runtime_rows[0]) for r in runtime_rows[1:]}
    (out / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows, "ratios": ratios,
                                                "ratios_vs_first_bundle": vs_first}, indent=2))
    with open(out / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    _chart(out / "bench.png", rows)
    return {"pytorch": ratios, **vs_first}


def _chart(path: Path, rows: list[dict]) -> None:
    """A small bar chart of tokens/s per engine (Pillow only)."""
    from PIL import Image, ImageDraw

    metrics = ["text_tokens_per_s", "image_tokens_per_s"]
    w, h, pad = max(640, 180 * len(rows) + 80), 320, 40
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    top = max((r[m] for r in rows for m in metrics if np.isfinite(r[m])), default=1.0) or 1.0
    colours = [(60, 110, 200), (230, 140, 40), (80, 170, 90)]
    group_w = (w - 2 * pad) / len(metrics)
    bar_w = group_w / (len(rows) + 1)
    for gi, m in enumerate(metrics):
        x0 = pad + gi * group_w
        d.text((x0, h - pad + 8), m.replace("_", " "), fill="black")
        for ri, r in enumerate(rows):
            v = r[m] if np.isfinite(r[m]) else 0.0
            bh = (h - 2 * pad) * v / top
            x = x0 + ri * bar_w
            d.rectangle((x, h - pad - bh, x + bar_w * 0.9, h - pad), fill=colours[ri % 3])
            d.text((x, h - pad - bh - 12), f"{v:.0f}", fill="black")
    for ri, r in enumerate(rows):
        d.text((pad + ri * 180, 8), f"{r['engine']} ({r['device']}, {r['precision']})", fill=colours[ri % 3])
    im.save(path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="armor-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE",
                   help="one or more bundles (e.g. fp32 then its quantized versions); the first is the baseline")
    p.add_argument("--checkpoint", type=Path, help="also run the PyTorch reference on this checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=64, help="text decode steps per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int)
    return p.parse_args(argv)


def _in_child(fn, *args) -> dict:
    """Run one measurement in a fresh process, so its peak RSS and warm caches are its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        print("armor-bench: error: --steps and --repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        from runtime.bundle import open_bundle

        jobs = []
        for bundle in args.bundles:
            manifest = open_bundle(bundle, verify_hashes=False).manifest
            jobs.append((bundle, manifest.get("calibration", {}).get("scheme") or manifest["dtype"]))
        rows = []
        for bundle, precision in tqdm(jobs, desc="bench"):
            r = _in_child(bench_runtime, bundle, args.device, args.steps, args.repeats, args.threads)
            rows.append({"device": args.device, "precision": precision, "bundle": str(bundle),
                         "bundle_mb": _size_mb(bundle), **r})
        if args.checkpoint:
            r = _in_child(bench_reference, args.checkpoint, jobs[0][1], args.steps, args.repeats)
            rows.append({"device": "cpu", "precision": "fp32", "bundle": str(args.checkpoint),
                         "bundle_mb": _size_mb(args.checkpoint), **r})
    except ArmorError as e:
        print(f"armor-bench: error: {e}", file=sys.stderr)
        return 1
    meta = {"bundles": [str(b) for b in args.bundles], "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version(),
            "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
            "note": "each engine and bundle is measured in its own fresh process"}
    ratios = write_outputs(args.out, rows, meta)
    for r in rows:
        print(", ".join(f"{k} {r[k]:.2f}" if isinstance(r[k], float) else f"{k} {r[k]}" for k in CSV_FIELDS))
    for r in rows:
        if "decoder_step_ms_iobinding" in r:
            print(f"decoder step ({r['precision']}): numpy feeds {r['decoder_step_ms']:.2f} ms, IO binding "
                  f"{r['decoder_step_ms_iobinding']:.2f} ms ({r['decoder_step_iobinding_speedup']:.2f}x)")
    for name, vals in ratios.items():
        if vals:
            against = "runtime / pytorch" if name == "pytorch" else f"{name} / {jobs[0][1]} ({jobs[0][0]})"
            print(f"{against}: " + ", ".join(f"{k} {v:.2f}x" for k, v in vals.items()))
    print(f"armor-bench: wrote {args.out / 'bench.json'}, bench.csv, bench.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
