"""Quality of checkpoints on the shapes world's held-out prompts (docs/model-card.md's table).

    python -m training_ref.evaluate CKPT [CKPT ...] [--names base wohg ...] [--json OUT]

Per checkpoint: VQA exact-match accuracy (understanding), ShapeEval on held-out t2i prompts
(per attribute and all-correct), and interleaved t2ti prompts answered as text + image + text
whose image matches the text before it. Generation is the PyTorch reference, greedy, with
the checkpoint's default classifier-free guidance (`--cfg-scale` overrides). This module knows the world's evaluation sets and the scorers; it
is reused by the runtime's and calibration's parity checks through `score_outputs`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from runtime.sampling import SamplingParams
from training_ref import shapeeval, world

log = logging.getLogger(__name__)

def messages_for(sample: world.Sample, size: int = 64) -> list[dict]:
    """The chat messages of a world sample; its input scene rendered at `size` pixels."""
    if sample.image is None:
        return [{"role": "user", "content": sample.prompt}]
    image = world.render(sample.image, size)
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": sample.prompt}]}]


def score_outputs(kind: str, samples: list[world.Sample], outputs: list[list]) -> dict:
    """Score generated outputs (interleaved lists of str and PIL images) of one evaluation set."""
    if kind == "vqa":
        preds = [next((p for p in out if isinstance(p, str)), "") for out in outputs]
        return {"vqa_accuracy": shapeeval.vqa_accuracy(preds, [s.answer[0] for s in samples]), "n": len(samples)}
    if kind == "t2i":
        specs, images = [], []
        for s, out in zip(samples, outputs):
            img = next((p for p in out if isinstance(p, Image.Image)), None)
            specs.append(s.answer[0])
            images.append(img if img is not None else Image.new("RGB", (64, 64), "white"))
        scores = shapeeval.score_t2i(specs, images)
        scores["image_rate"] = sum(any(isinstance(p, Image.Image) for p in o) for o in outputs) / len(outputs)
        return scores
    if kind == "t2ti":
        shaped = consistent = 0
        for out in outputs:
            kinds = ["image" if isinstance(p, Image.Image) else "text" for p in out]
            if kinds == ["text", "image", "text"]:
                shaped += 1
                consistent += shapeeval.t2ti_consistency(out[0], out[1])
        return {"text_image_text": shaped / len(outputs), "consistent": consistent / len(outputs), "n": len(outputs)}
    raise ValueError(f"unknown evaluation set {kind!r}")


def evaluation_sets(n_vqa: int = 200, n_t2i: int = 200, n_t2ti: int = 20) -> dict[str, list[world.Sample]]:
    return {"vqa": world.heldout_vqa(n_vqa), "t2i": world.heldout_t2i(n_t2i), "t2ti": world.heldout_t2ti(n_t2ti)}


def evaluate(generate_fn, sets: dict[str, list[world.Sample]], label: str = "") -> dict:
    """`generate_fn(messages, max_new_tokens) -> interleaved list`; returns scores per set."""
    report = {}
    for kind, samples in sets.items():
        budget = 24 if kind == "vqa" else 64
        outs = [generate_fn(messages_for(s), budget) for s in tqdm(samples, desc=f"{label} {kind}".strip())]
        report[kind] = score_outputs(kind, samples, outs)
    return report


def vq_ceiling(model, samples: list[world.Sample]) -> dict:
    """ShapeEval of the VQGAN's reconstructions of the t2i targets: the best generation can do."""
    import numpy as np
    import torch

    from runtime.image import pixels_to_image, to_unit_range

    res = model.config.vqgan["resolution"]
    specs = [s.answer[0] for s in samples]
    with torch.no_grad():
        pixels = torch.from_numpy(np.stack([to_unit_range(world.render(sc, res), res) for sc in specs]))
        recon = model.vqgan.decode(model.vqgan.encode(pixels))
    return shapeeval.score_t2i(specs, [pixels_to_image(r.numpy()) for r in recon])


def main(argv=None) -> int:
    import torch

    from training_ref.checkpoint import load_checkpoint
    from training_ref.generate import generate

    p = argparse.ArgumentParser(prog="python -m training_ref.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--names", nargs="*")
    p.add_argument("--n-vqa", type=int, default=200)
    p.add_argument("--n-t2i", type=int, default=200)
    p.add_argument("--n-t2ti", type=int, default=20)
    p.add_argument("--cfg-scale", type=float, help="guidance scale (default: each checkpoint's own)")
    p.add_argument("--skip-generation", action="store_true", help="VQA only (e.g. for the base model)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    names = args.names or [c.name for c in args.checkpoints]
    sets = evaluation_sets(args.n_vqa, args.n_t2i, args.n_t2ti)
    results = {}
    for name, ckpt in zip(names, args.checkpoints):
        model, tok = load_checkpoint(ckpt)
        chosen = {"vqa": sets["vqa"]} if args.skip_generation or name == "base" else sets
        t0 = time.time()
        fn = lambda msgs, n: generate(model, tok, msgs, max_new_tokens=n, cfg_scale=args.cfg_scale,  # noqa: E731
                                      sampling=SamplingParams())
        results[name] = evaluate(fn, chosen, name)
        if "t2i" in chosen:
            results[name]["vq_reconstruction"] = vq_ceiling(model, chosen["t2i"])
        results[name]["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
