"""The PyTorch reference's side of armor-bench, run as its own process.

    python -m training_ref.bench CHECKPOINT --workload WORKLOAD.json --out RESULT.json [--threads N]

`armor-bench --checkpoint` writes the workload (prompts, probe image, steps, repeats,
positions) and runs this module, so both engines measure the same things with the same
definitions: time to first token up to the first sampled token of a whole `generate` call,
text tokens/s over greedy tokens with end-of-turn and `<imgbos>` held off, image tokens/s
over one guided image started by the text processor, seconds per image over the t2i prompts
when the model draws by itself, the decoder alone per cached step at each position, vision
encoder and VQ decoder ms, peak RSS. Eager PyTorch, fp32, same weights as the bundle's
source. It knows the reference model and generator; it knows nothing about bundles.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from runtime.bench import median_ms, peak_rss_mb
from training_ref.checkpoint import load_checkpoint
from training_ref.generate import _Stream, generate


@torch.no_grad()
def measure(checkpoint: Path, work: dict) -> dict:
    t0 = time.perf_counter()
    model, tok = load_checkpoint(checkpoint)
    load_s = time.perf_counter() - t0
    cfg = model.config
    v, eos = cfg.n_text_vocab, cfg.eos_token_id

    def no_stop(i, logits):
        logits = logits.copy()
        logits[[eos, v]] = -np.inf
        return logits

    def start_image(i, logits):
        if i == 0:
            logits = np.full_like(logits, -np.inf)
            logits[v] = 0.0
        return logits

    def run(content, **kw) -> dict:
        timings: dict = {}
        generate(model, tok, [{"role": "user", "content": content}], timings=timings, **kw)
        return timings

    repeats, steps = work["repeats"], work["steps"]
    vqa = [{"type": "image", "image": work["image"]}, {"type": "text", "text": work["vqa"]}]
    ttft = statistics.median(run(vqa, max_new_tokens=1)["first_token_s"] for _ in range(repeats))
    text = min((run(work["text"], max_new_tokens=steps, text_processor=no_stop) for _ in range(repeats)),
               key=lambda t: t["text_s"])
    image = min((run(work["t2i"][0], max_new_tokens=1, cfg_scale=3.0, text_processor=start_image)
                 for _ in range(repeats)), key=lambda t: t["image_s"])
    tokens = seconds = n_images = 0
    for prompt in work["t2i"]:
        t0 = time.perf_counter()
        t = run(prompt, max_new_tokens=64)
        if t["image_tokens"]:
            tokens, seconds, n_images = tokens + t["image_tokens"], seconds + time.perf_counter() - t0, n_images + 1
    from runtime.image import preprocess

    size = model.mllm.config.vision_config.image_size[0]
    pixels = torch.from_numpy(preprocess(work["image"], size)[None])
    codes = torch.zeros((1, *cfg.image_grid), dtype=torch.long)
    out = {"engine": "pytorch", "load_s": load_s, "ttft_ms": ttft * 1e3,
           "text_tokens_per_s": text["text_tokens"] / text["text_s"],
           "image_tokens_per_s": image["image_tokens"] / image["image_s"],
           "image_tokens_per_s_e2e": tokens / seconds if n_images else float("nan"),
           "s_per_image": seconds / n_images if n_images else float("nan"),
           "vision_ms": median_ms(lambda: model.encode_images(pixels), repeats * 3),
           "vq_decode_ms": median_ms(lambda: model.vqgan.decode(codes), repeats * 3)}
    for p in work["positions"]:
        out[f"decoder_step_ms@{p}"] = _decoder_step_ms(model, p, steps, repeats)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _decoder_step_ms(model, position: int, steps: int, repeats: int) -> float:
    if position + steps + 1 > model.config.context_length:
        return float("nan")
    rng = np.random.default_rng(0)
    best = float("inf")
    for _ in range(repeats):
        stream = _Stream(model, rng.integers(10, model.config.n_text_vocab, position).tolist())
        stream.feed([11])
        t0 = time.perf_counter()
        for _ in range(steps):
            stream.feed([12])
        best = min(best, (time.perf_counter() - t0) / steps)
    return best * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training_ref.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--workload", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.checkpoint, json.loads(args.workload.read_text()))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
