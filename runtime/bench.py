"""`armor-bench BUNDLE [BUNDLE ...] [--checkpoint CKPT] --out DIR`: speed and memory, as ratios.

Every measurement goes through the same public calls a user makes (`ArmorPipeline.generate`),
on fixed shapes-world prompts:
- time to first token: a whole `generate(max_new_tokens=1)` on an image + question, up to the
  first sampled token (`first_token_s`; the PyTorch reference reports the same definition);
- text tokens/s: `steps` greedy text tokens (end-of-turn and `<imgbos>` held off by a logits
  processor, so random-weight models are measured too), and per token the time inside graph
  calls and outside them (sampling, masks, tokenizer, Python: the loop's own cost);
- image tokens/s with CFG: one guided image (batch 2), started by the logits processor, with
  its in-graph / outside split per code; seconds per image end to end over t2i prompts when
  the model draws by itself;
- the decoder alone per cached single-token step at `--positions` (e.g. 64 and 1024 tokens
  of context), beside its memory roofline: (weight bytes + KV bytes read per step) / the
  memory read bandwidth measured in the same command with the same number of threads;
- vision encoder and VQ decoder ms, the text head per call, peak RSS, size on disk.

`--backend` names one backend for every bundle or one per bundle (`ort,ort,llamacpp`), so one
command compares ORT bundles with llama.cpp ones. A llamacpp row's decoder step is llama.cpp's
decode of one token, text head included (llama.cpp computes the logits in the same decode); its
roofline reads the bytes of every text.gguf tensor but `token_embd` (the manifest's
`gguf.step_bytes`; the whole file's size, an upper bound, for a bundle exported without it) and
an f32 KV cache.

Several bundles are compared with the first; with `--checkpoint`, the PyTorch reference runs
the same workload (`python -m training_ref.bench`, its own process: the runtime imports no
other package) and the first bundle is compared with it. Each bundle also runs in its own
fresh process, so each peak RSS is its own. `--soak N` instead runs N mixed generations in
one process and reports RSS growth (runtime/soak.py). Writes bench.json (the source of truth),
bench.csv and, with matplotlib installed (the `bench` extra), bench.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime.cliutil import ArgumentParser, boundary, whole
from runtime.constants import GGUF_FILE
from runtime.errors import ArmorError, InputError

log = logging.getLogger(__name__)

VQA_QUESTION = "how many shapes are there?"
TEXT_PROMPT = "describe the image."
T2I_PROMPTS = ["draw a large red circle at the top left.", "draw a small blue square in the center.",
               "draw a large green triangle at the bottom right and a small yellow circle at the top."]
CSV_FIELDS = ["device", "precision", "engine", "backend", "bundle_mb", "load_s", "ttft_ms", "text_tokens_per_s",
              "text_outside_ms", "image_tokens_per_s", "image_outside_ms", "image_tokens_per_s_e2e", "s_per_image",
              "vision_ms", "vq_decode_ms", "text_head_ms", "peak_rss_mb"]
SPEED_KEYS = ("text_tokens_per_s", "image_tokens_per_s", "image_tokens_per_s_e2e")  # higher is better
TIME_KEYS = ("ttft_ms", "vision_ms", "vq_decode_ms", "s_per_image")  # lower is better


def memory_mb(field: str = "VmHWM") -> float:
    """A line of /proc/self/status in MB: VmHWM, this process's own peak resident set (ru_maxrss
    keeps the parent's peak across fork and exec), or VmRSS, the current one; elsewhere ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_rss_mb() -> float:
    return memory_mb("VmHWM")


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def workload(out: Path, size: int, steps: int, repeats: int, positions: list[int], jacobi: list[int]) -> dict:
    """The prompts and settings every engine runs (written as JSON for the reference process)."""
    from PIL import Image, ImageDraw

    image = out / "probe.png"
    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse((size // 8, size // 8, size // 3, size // 3), fill=(220, 40, 40))
    im.save(image)
    return {"image": str(image), "vqa": VQA_QUESTION, "text": TEXT_PROMPT, "t2i": T2I_PROMPTS, "steps": steps,
            "repeats": repeats, "positions": positions, "jacobi": jacobi}


def no_stop(space):
    """A text processor that never lets the answer end or start an image (text decode runs)."""
    def process(i, logits):
        logits = logits.copy()
        logits[[space.eos, space.n_text_vocab]] = -np.inf  # head index V is <imgbos>
        return logits
    return process


def start_image(space):
    """A text processor whose first token is `<imgbos>` (one image, whatever the weights)."""
    def process(i, logits):
        if i == 0:
            logits = np.full_like(logits, -np.inf)
            logits[space.n_text_vocab] = 0.0
        return logits
    return process


def bench_runtime(bundle: Path, backend: str, device: str, work: dict, threads: int | None, options: dict) -> dict:
    """Every runtime measurement of one bundle (runs in a fresh process)."""
    from runtime.generation import Done
    from runtime.image import preprocess
    from runtime.pipeline import ArmorPipeline

    t0 = time.perf_counter()
    pipe = ArmorPipeline.load(bundle, backend=backend, device=device, threads=threads, **options)
    load_s = time.perf_counter() - t0
    m = pipe.model
    done = lambda msgs, **kw: next(e for e in pipe.generate(msgs, **kw) if isinstance(e, Done))  # noqa: E731
    user = lambda content: [{"role": "user", "content": content}]  # noqa: E731
    vqa = user([{"type": "image", "image": work["image"]}, {"type": "text", "text": work["vqa"]}])
    repeats, steps = work["repeats"], work["steps"]
    ttft = statistics.median(done(vqa, max_new_tokens=1).timings["first_token_s"] for _ in range(repeats))
    texts = [done(user(work["text"]), max_new_tokens=steps, text_processor=no_stop(m.space)) for _ in range(repeats)]
    text = min(texts, key=lambda d: d.timings["text_s"])  # the quietest repeat
    images = [done(user(work["t2i"][0]), max_new_tokens=1, cfg_scale=3.0, text_processor=start_image(m.space))
              for _ in range(repeats)]
    image = min(images, key=lambda d: d.timings["image_s"])
    e2e_tokens = e2e_seconds = n_images = 0
    for prompt in work["t2i"]:
        d = done(user(prompt), max_new_tokens=64)
        if d.image_tokens:
            e2e_tokens, e2e_seconds, n_images = e2e_tokens + d.image_tokens, e2e_seconds + d.timings["total_s"], n_images + 1
    pixels = preprocess(work["image"], m.vision_size)[None]
    codes = np.zeros((1, *m.grid), np.int64)
    hidden = np.zeros((1, 1, m.table.shape[1]), m.float)
    t, i = text.timings, image.timings
    out = {"engine": "runtime", "backend": backend, "load_s": load_s, "ttft_ms": ttft * 1e3,
           "text_tokens_per_s": text.text_tokens / t["text_s"],
           "text_graph_ms": t["text_graph_s"] / text.text_tokens * 1e3,
           "text_outside_ms": (t["text_s"] - t["text_graph_s"]) / text.text_tokens * 1e3,
           "image_tokens_per_s": image.image_tokens / i["image_s"],
           "image_graph_ms": i["image_graph_s"] / image.image_tokens * 1e3,
           "image_outside_ms": (i["image_s"] - i["image_graph_s"]) / image.image_tokens * 1e3,
           "image_tokens_per_s_e2e": e2e_tokens / e2e_seconds if n_images else float("nan"),
           "s_per_image": e2e_seconds / n_images if n_images else float("nan"),
           "vision_ms": median_ms(lambda: m.encode_images(pixels), repeats * 3),
           "vq_decode_ms": median_ms(lambda: m.decode_image(codes), repeats * 3),
           "text_head_ms": median_ms(lambda: m.text_logits(hidden), repeats * 10),
           **decoder_steps(m, work["positions"], steps, repeats),
           **(window_calls(m, work["jacobi"], repeats) if work.get("jacobi") else {})}
    out["text_outside_share"] = out["text_outside_ms"] / (out["text_graph_ms"] + out["text_outside_ms"])
    out["image_outside_share"] = out["image_outside_ms"] / (out["image_graph_ms"] + out["image_outside_ms"])
    out["peak_rss_mb"] = peak_rss_mb()
    pipe.close()
    return out


def decoder_steps(model, positions: list[int], steps: int, repeats: int) -> dict:
    """ms per cached single-token decoder step (no head) after a context of P tokens, per P."""
    out = {}
    rng = np.random.default_rng(0)
    for p in positions:
        if p + steps + 1 > model.context_length:
            out[f"decoder_step_ms@{p}"] = float("nan")
            continue
        times = []
        for _ in range(repeats):
            stream = model.start(rng.integers(10, model.space.n_text_vocab, p))
            stream.append([11])  # warm-up step
            t0 = time.perf_counter()
            for _ in range(steps):
                stream.append([12])
            times.append((time.perf_counter() - t0) / steps)
        out[f"decoder_step_ms@{p}"] = min(times) * 1e3
    return out


def window_calls(model, windows: list[int], repeats: int, context: int = 64) -> dict:
    """ms of one image-mode call at batch 2 (a CFG pair): W codes through the decoder and the
    adapter + visual head, then rolled back (what one Jacobi iteration costs), per W; W = 1 is
    the sequential step."""
    out = {}
    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(10, model.space.n_text_vocab, n).tolist()  # noqa: E731
    n_grid = model.grid[0] * model.grid[1]
    for w in [1] + [w for w in windows if w != 1]:
        if context + n_grid + w + 2 > model.context_length:
            out[f"image_call_ms@{w}"] = float("nan")
            continue
        pair = model.start(ids(context) + [model.space.img_bos]).pair(model.start(ids(context // 2)
                                                                                   + [model.space.img_bos]))
        cursor = model.start_image(pair)
        cursor.prefill()
        codes = [model.space.image_index_to_id(int(c)) for c in rng.integers(0, model.space.n_codes, w)]

        def call():
            base, segment = pair.length, cursor.segment
            cursor.append(pair.append(codes))
            pair.truncate(base)
            cursor.truncate(segment)

        out[f"image_call_ms@{w}"] = median_ms(call, repeats * 3)
    return out


def projected_jacobi(row: dict, decoding: dict) -> dict:
    """Seconds per image projected from this bundle's call costs and the calls per image that a
    decoding report measured (on a real model): sequential calls x cost@1 / (Jacobi calls x cost@W)."""
    out = {}
    for setting in ("greedy", "sampled"):
        base = decoding["results"].get(f"{setting}/sequential")
        for name, r in decoding["results"].items():
            if not name.startswith(f"{setting}/jacobi-") or not base:
                continue
            w = int(name.rsplit("-", 1)[1])
            one, many = row.get("image_call_ms@1"), row.get(f"image_call_ms@{w}")
            if one and many and np.isfinite(one) and np.isfinite(many):
                out[f"projected_image_speedup_{setting}@{w}"] = (base["calls_per_image"] * one) / (r["calls_per_image"] * many)
    return out


def read_bandwidth_gbs(threads: int, mib: int = 512, repeats: int = 5) -> float:
    """The best memory read bandwidth (GB/s) of `threads` threads summing their own arrays
    (numpy releases the GIL in reductions), each array far larger than the caches."""
    arrays = [np.ones(mib * 2**20 // 4 // threads, np.float32) for _ in range(threads)]
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=np.add.reduce, args=(a,)) for a in arrays]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, sum(a.nbytes for a in arrays) / (time.perf_counter() - t0) / 1e9)
    return best


def roofline(manifest: dict, positions: list[int], bandwidth_gbs: float, backend: str = "ort") -> dict:
    """ms per decoder step if it only had to read its weights and its KV cache once at
    `bandwidth_gbs`: weight bytes from the decoder's files (llamacpp: text.gguf's tensors but the
    embedding), KV bytes at each position."""
    m = manifest["model"]
    if backend == "llamacpp":
        gguf = manifest.get("gguf", {})
        weights = gguf.get("step_bytes") or manifest["files"][GGUF_FILE]["bytes"]
        source = "text.gguf tensors but token_embd" if gguf.get("step_bytes") else "text.gguf size (upper bound)"
        elem, static = 4, False  # llama.cpp's KV cache is f32 here and holds only the filled cells
    else:
        weights = sum(f["bytes"] for f in manifest["files"].values() if f["role"] in ("decoder", "decoder.weights"))
        source, elem = "decoder files", 2 if manifest["dtype"] == "fp16" else 4
        static = m.get("kv_cache") == "static"
    kv_row = 2 * m["n_layers"] * m["n_kv_heads"] * m["head_dim"] * elem  # bytes per cached token
    out = {"decoder_weight_mb": weights / 1e6, "roofline_weights": source}
    for p in positions:
        read = m.get("kv_capacity", p) if static else p
        out[f"roofline_ms@{p}"] = (weights + kv_row * read) / (bandwidth_gbs * 1e9) * 1e3
    return out


def ratios_against(row: dict, base: dict) -> dict:
    """How many times faster `row` is than `base` on every metric both measured."""
    ok = lambda v: isinstance(v, (int, float)) and np.isfinite(v) and v > 0  # noqa: E731
    out = {k: row[k] / base[k] for k in SPEED_KEYS if ok(base.get(k)) and ok(row.get(k))}
    out.update({f"{k}_speedup": base[k] / row[k] for k in TIME_KEYS if ok(base.get(k)) and ok(row.get(k))})
    for k in row:
        if k.startswith("decoder_step_ms@") and ok(row[k]) and ok(base.get(k)):
            out[f"{k}_speedup"] = base[k] / row[k]
    return out


def write_outputs(out: Path, rows: list[dict], meta: dict) -> dict:
    """bench.json (rows, runtime-vs-PyTorch ratios of the first bundle, and every other bundle
    against the first one), bench.csv and bench.png; returns the ratios."""
    out.mkdir(parents=True, exist_ok=True)
    runtime_rows = [r for r in rows if r["engine"] == "runtime"]
    ref = next((r for r in rows if r["engine"] == "pytorch"), None)
    ratios = ratios_against(runtime_rows[0], ref) if runtime_rows and ref else {}
    vs_first = {f"{r['precision']} ({r['bundle']})": ratios_against(r, runtime_rows[0]) for r in runtime_rows[1:]}
    _atomic_write(out / "bench.json", json.dumps({"meta": meta, "rows": rows, "ratios": ratios,
                                                  "ratios_vs_first_bundle": vs_first}, indent=2))
    extra = sorted({k for r in rows for k in r if "@" in k})
    if any(r["engine"] == "projection" for r in rows):
        extra += ["compute", "decoder_bound", "resident_mb", "fits"]
    fields = CSV_FIELDS + extra
    with open(out / "bench.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(out / "bench.csv.tmp", out / "bench.csv")
    chart(out / "bench.png", rows)
    return {"pytorch": ratios, **vs_first}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def chart(path: Path, rows: list[dict]) -> None:
    """Tokens/s per engine with each bar's ratio to the first row (matplotlib, when installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed (the `bench` extra): no bench.png; bench.json and bench.csv are written")
        return
    metrics = [("text_tokens_per_s", "text decode"), ("image_tokens_per_s", "image decode (CFG)")]
    labels = [f"{r.get('backend', r['engine'])} {r['precision']}\n{r['device']}" for r in rows]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 + 1.6 * len(rows), 3.6))
    for ax, (key, title) in zip(axes, metrics):
        values = [r.get(key, float("nan")) for r in rows]
        bars = ax.bar(range(len(rows)), values, color=[f"C{i}" for i in range(len(rows))])
        base = values[0]
        for bar, v in zip(bars, values):
            if np.isfinite(v):
                ax.annotate(f"{v:.0f}\n({v / base:.2f}x)", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                            va="bottom", fontsize=8)
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_ylabel("tokens / s")
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.25)
    fig.suptitle("armor-bench (ratios against the first row)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path.with_name(path.name + ".tmp.png"), dpi=110)
    plt.close(fig)
    os.replace(path.with_name(path.name + ".tmp.png"), path)


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="armor-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE",
                   help="one or more bundles (e.g. fp32 then its quantized versions); the first is the baseline")
    p.add_argument("--checkpoint", type=Path, help="also run the PyTorch reference on this checkpoint")
    p.add_argument("--backend", default="ort", metavar="NAME[,NAME...]",
                   help="ort, tensorrt or llamacpp for every bundle, or a comma list with one per bundle "
                        "(e.g. ort,ort,llamacpp; default ort)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=whole(1), default=64, help="text tokens and decoder steps per run")
    p.add_argument("--repeats", type=whole(1), default=3)
    p.add_argument("--positions", default="64", help="context lengths of the decoder-step timing, e.g. 64,1024")
    p.add_argument("--threads", type=whole(1))
    p.add_argument("--ort-spinning", action="store_true", help="let ORT's intra-op threads spin between calls")
    p.add_argument("--ort-thread-pool", default="shared", choices=("shared", "session"),
                   help="one intra-op thread pool for every graph (default) or one per session")
    p.add_argument("--jacobi", default="", metavar="W,...",
                   help="also time one batch-2 image call of W codes (a Jacobi iteration) per W, e.g. 4,8,16")
    p.add_argument("--jacobi-prompts", type=whole(0), default=0, metavar="N",
                   help="with --jacobi: compare sequential and Jacobi decoding of the first bundle on N held-out "
                        "t2i prompts (calls and seconds per image, ShapeEval; python -m calibration.decoding, "
                        "the `train` extra)")
    p.add_argument("--jacobi-calls", type=Path, metavar="REPORT",
                   help="with --jacobi: project seconds per image from a calibration.decoding report's calls "
                        "per image (e.g. measured on tiny, for a random-weight proxy)")
    p.add_argument("--temperature", type=float, default=1.0, help="the sampled setting of --jacobi-prompts")
    p.add_argument("--top-k", type=whole(0), default=64, help="the sampled setting of --jacobi-prompts")
    p.add_argument("--soak", type=whole(1), metavar="N", help="instead: N mixed generations in one process, RSS series")
    p.add_argument("--project", default="", metavar="DEVICE[,DEVICE...]",
                   help="add a roofline projection row per bundle for each device (agx-orin-64gb, orin-nx-16gb, "
                        "orin-nano-8gb, orin-nano-super, rtx-4060-laptop): runtime/project.py")
    p.add_argument("--no-measure", action="store_true", help="with --project: only the projections, nothing is run")
    return p.parse_args(argv)


def _in_child(fn, *args) -> dict:
    """Run one measurement in a fresh process, so its peak RSS and warm caches are its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _reference(checkpoint: Path, work_file: Path, threads: int | None) -> dict:
    """The PyTorch reference's numbers from its own process (training_ref's public bench entry)."""
    result = work_file.with_name("reference.json")
    cmd = [sys.executable, "-m", "training_ref.bench", str(checkpoint), "--workload", str(work_file),
           "--out", str(result)] + (["--threads", str(threads)] if threads else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArmorError(f"the PyTorch reference failed (needs the `train` extra): {tail}")
    return json.loads(result.read_text())


def _decoding(bundle: Path, windows: list[int], args, out: Path) -> dict:
    """Sequential vs Jacobi decoding on held-out prompts (calibration.decoding, its own process)."""
    cmd = [sys.executable, "-m", "calibration.decoding", str(bundle), "--windows", ",".join(map(str, windows)),
           "--n", str(args.jacobi_prompts), "--temperature", str(args.temperature), "--top-k", str(args.top_k),
           "--out", str(out), "--quiet"] + (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArmorError(f"the decoding comparison failed (needs the `train` extra): {tail}")
    print(done.stdout.rstrip())
    return json.loads(out.read_text())


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20


def _projections(args, devices: list, manifests: list[dict], positions: list[int]) -> list[dict]:
    """--project: one roofline row per bundle and device (runtime/project.py)."""
    from runtime.project import load_costs, project_row

    rows = []
    for bundle, manifest in zip(args.bundles, manifests):
        costs = load_costs(bundle, manifest) if devices else None
        for dev in devices:
            rows.append({"precision": _precision(manifest, "tensorrt"), "bundle": str(bundle),
                         "kv_cache": manifest["model"]["kv_cache"], "bundle_mb": _size_mb(bundle),
                         **project_row(costs, manifest, dev, positions)})
    return rows


def _project_only(args, devices: list, manifests: list[dict], positions: list[int]) -> int:
    rows = _projections(args, devices, manifests, positions)
    meta = {"bundles": [str(b) for b in args.bundles], "date": time.strftime("%Y-%m-%d"), "positions": positions,
            "projected": args.project, "note": "projections only (--no-measure): nothing was run"}
    write_outputs(args.out, rows, meta)
    for r in rows:
        print(f"{r['device']} {r['precision']} ({r['compute']}): decoder step {r[f'decoder_step_ms@{positions[0]}']:.2f} ms "
              f"({r['decoder_bound']}-bound), text {r['text_tokens_per_s']:.0f} tok/s, image {r['image_tokens_per_s']:.0f} "
              f"tok/s with CFG, TTFT {r['ttft_ms']:.1f} ms, vision {r['vision_ms']:.2f} ms, VQ {r['vq_decode_ms']:.2f} ms, "
              f"{r['resident_mb']:.0f} MB resident{'' if r['fits'] else ' (does not fit)'}  [projection]")
        if r.get("unresolved"):
            print(f"  warning: shapes unresolved at {', '.join(r['unresolved'][:3])}...: their FLOPs are not counted")
    print(f"armor-bench: wrote {args.out / 'bench.json'}, bench.csv (roofline projections, not measurements)")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return boundary("armor-bench", lambda: _bench(args))


def _numbers(text: str, flag: str, minimum: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        raise InputError(f"{flag} must be a comma-separated list of whole numbers >= {minimum}, got {text!r}")
    return values


def backends_for(text: str, n_bundles: int) -> list[str]:
    """`--backend`: one name for all bundles, or exactly one per bundle."""
    from runtime.backends import BACKENDS

    names = [b.strip() for b in text.split(",")]
    if "" in names or len(names) not in (1, n_bundles):
        raise InputError(f"--backend takes one backend or one per bundle ({n_bundles}), comma-separated; got {text!r}")
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        raise InputError(f"--backend {', '.join(unknown)}: unknown; choose from {', '.join(BACKENDS)}")
    return names * n_bundles if len(names) == 1 else names


def _precision(manifest: dict, backend: str) -> str:
    """The row's label: text.gguf's type on llamacpp, the TensorRT form's precision on tensorrt, else
    the calibration scheme or dtype."""
    if backend == "llamacpp" and GGUF_FILE in manifest["files"]:
        return "gguf-" + manifest["files"][GGUF_FILE].get("dtype", "?")
    if backend == "tensorrt" and "tensorrt" in manifest:
        return "trt-" + manifest["tensorrt"]["precision"]
    return manifest.get("calibration", {}).get("scheme") or manifest["dtype"]


def _bench(args) -> int:
    positions = _numbers(args.positions, "--positions", 1)
    jacobi = _numbers(args.jacobi, "--jacobi", 2) if args.jacobi else []
    if args.soak is not None:
        from runtime.soak import main as soak_main

        return soak_main(args)
    backends = backends_for(args.backend, len(args.bundles))
    from runtime.devices import device

    devices = [device(n.strip()) for n in args.project.split(",") if n.strip()]  # unknown ones fail before any work
    if args.no_measure and not devices:
        raise InputError("--no-measure needs --project DEVICE")
    from runtime.bundle import open_bundle

    manifests = [open_bundle(b, verify_hashes=False).manifest for b in args.bundles]
    for bundle, backend, m in zip(args.bundles, backends, manifests):
        if backend == "llamacpp" and GGUF_FILE not in m["files"]:
            raise InputError(f"{bundle} has no {GGUF_FILE} for --backend llamacpp: add one with "
                             f"armor-export CHECKPOINT --target gguf --out {bundle}")
    jobs = [(b, _precision(m, k), m, k) for b, m, k in zip(args.bundles, manifests, backends)]
    if args.no_measure:
        return _project_only(args, devices, manifests, positions)
    threads = args.threads or os.cpu_count() or 1
    bandwidth = read_bandwidth_gbs(threads)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        work = workload(Path(tmp), manifests[0]["model"]["vision_image_size"], args.steps, args.repeats, positions,
                        jacobi)
        work_file = Path(tmp) / "workload.json"
        work_file.write_text(json.dumps(work))
        rows = []
        for bundle, precision, manifest, backend in tqdm(jobs, desc="bench"):
            options = {"allow_spinning": True} if args.ort_spinning else {}
            if backend in ("ort", "llamacpp"):  # llamacpp's adapter, vision and VQ graphs run on ORT
                options["thread_pool"] = args.ort_thread_pool
            r = _in_child(bench_runtime, bundle, backend, args.device, work, args.threads, options)
            rows.append({"device": args.device, "precision": precision, "bundle": str(bundle),
                         "kv_cache": "llama.cpp f32" if backend == "llamacpp" else manifest["model"]["kv_cache"],
                         "bundle_mb": _size_mb(bundle), **r, **roofline(manifest, positions, bandwidth, backend)})
        decoding = None
        if jacobi and args.jacobi_prompts:
            decoding = _decoding(args.bundles[0], jacobi, args, Path(tmp) / "decoding.json")
        elif jacobi and args.jacobi_calls:
            decoding = json.loads(args.jacobi_calls.read_text())
        if decoding:
            for r in rows:
                r.update(projected_jacobi(r, decoding))
        if args.checkpoint:
            r = _reference(args.checkpoint, work_file, args.threads)
            rows.append({"device": "cpu", "precision": "fp32", "bundle": str(args.checkpoint),
                         "bundle_mb": _size_mb(args.checkpoint), **r})
    rows += _projections(args, devices, manifests, positions)
    meta = {"bundles": [str(b) for b in args.bundles], "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "steps": args.steps, "repeats": args.repeats,
            "positions": positions, "threads": args.threads, "read_bandwidth_gbs": bandwidth,
            "bandwidth_threads": threads, "backends": backends, "ort_spinning": args.ort_spinning,
            "ort_thread_pool": args.ort_thread_pool,
            "note": "each engine and bundle is measured in its own fresh process"}
    if decoding:
        meta["image_decoding"] = decoding
    ratios = write_outputs(args.out, rows, meta)
    print(f"memory read bandwidth ({threads} threads): {bandwidth:.1f} GB/s")
    for r in rows:
        print(", ".join(f"{k} {r[k]:.2f}" if isinstance(r.get(k), float) else f"{k} {r.get(k)}"
                        for k in CSV_FIELDS if k in r))
        for p in positions:
            step, roof = r.get(f"decoder_step_ms@{p}"), r.get(f"roofline_ms@{p}")
            if step is not None and np.isfinite(step):
                vs = f" (roofline {roof:.2f} ms, {step / roof:.2f}x)" if roof else ""
                print(f"  decoder step @{p}: {step:.2f} ms{vs}")
        calls = {k: v for k, v in r.items() if k.startswith(("image_call_ms@", "projected_image_speedup"))}
        if calls:
            print("  " + ", ".join(f"{k} {v:.2f}" for k, v in calls.items()))
    for name, vals in ratios.items():
        if vals:
            against = "runtime / pytorch" if name == "pytorch" else f"{name} / {jobs[0][1]} ({jobs[0][0]})"
            print(f"{against}: " + ", ".join(f"{k} {v:.2f}x" for k, v in vals.items()))
    print(f"armor-bench: wrote {args.out / 'bench.json'}, bench.csv" + (", bench.png" if (args.out / "bench.png").exists()
                                                                        else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
