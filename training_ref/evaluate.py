"""Quality of checkpoints on the shapes world's held-out prompts (docs/model-card.md's table).

    python -m training_ref.evaluate CKPT [CKPT ...] [--names base wohg ...] [--json OUT]

Per checkpoint, on held-out scenes, each set twice (the templates training sees, and the
held-out paraphrase templates): VQA exact-match accuracy (understanding), t2t arithmetic exact
match, ShapeEval on t2i prompts (per attribute and all-correct against what the prompt asked),
and interleaved t2ti prompts answered as text + image + text whose image matches the text
before it (for a checkpoint that only understands, like `base`: t2ti's text up to where the
image would start, and whether it restates the request); plus `t2i_stated` and
`t2i_canonical`, t2i prompts that state every size (the t2i sets leak through open sizes:
world.heldout_t2i). Generation is the PyTorch reference, greedy, with the checkpoint's default
classifier-free guidance (`--cfg-scale` overrides). This module knows the world's evaluation
sets and the scorers; it is reused by the runtime's and calibration's parity checks through
`score_outputs`.
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


def _spec(sample: world.Sample):
    """What a drawing sample asked for: its request, or the whole scene when it names none."""
    return sample.request if sample.request is not None else next(p for p in sample.answer if not isinstance(p, str))


def score_outputs(kind: str, samples: list[world.Sample], outputs: list[list]) -> dict:
    """Score generated outputs (interleaved lists of str and PIL images) of one evaluation set.

    `kind` is a set's name without its `_paraphrase` suffix: vqa, arithmetic (exact match of
    the first text; `text_only`: answers without an image), t2i (ShapeEval of the first image
    against the request) or t2ti (text + image + text, the image matching the text before it,
    and, for prompts that state objects, the image fulfilling them)."""
    kind = _kind(kind)
    if kind in ("vqa", "arithmetic"):
        preds = [next((p for p in out if isinstance(p, str)), "") for out in outputs]
        scores = {f"{kind}_accuracy": shapeeval.vqa_accuracy(preds, [s.answer[0] for s in samples]), "n": len(samples)}
        if kind == "arithmetic":
            scores["text_only"] = sum(all(isinstance(p, str) for p in o) for o in outputs) / max(len(outputs), 1)
        return scores
    if kind == "t2i":
        specs, images = [], []
        for s, out in zip(samples, outputs):
            img = next((p for p in out if isinstance(p, Image.Image)), None)
            specs.append(_spec(s))
            images.append(img if img is not None else Image.new("RGB", (64, 64), "white"))
        scores = shapeeval.score_t2i(specs, images)
        scores["image_rate"] = sum(any(isinstance(p, Image.Image) for p in o) for o in outputs) / len(outputs)
        return scores
    if kind == "t2ti":
        shaped = consistent = fulfilled = told = asked = 0
        for s, out in zip(samples, outputs):
            kinds = ["image" if isinstance(p, Image.Image) else "text" for p in out]
            asked += s.request is not None
            if kinds == ["text", "image", "text"]:
                shaped += 1
                consistent += shapeeval.t2ti_consistency(out[0], out[1])
                if s.request is not None:
                    fulfilled += shapeeval.fulfils(s.request, shapeeval.detect(out[1]))
                    told += shapeeval.text_fulfils(s.request, out[0])
        # text_fulfils_request: the "here is ..." sentence restates what was asked (an image
        # that follows the prompt cannot match a sentence that does not)
        return {"text_image_text": shaped / len(outputs), "consistent": consistent / len(outputs),
                "fulfils_request": fulfilled / max(asked, 1), "text_fulfils_request": told / max(asked, 1),
                "n": len(outputs)}
    raise ValueError(f"unknown evaluation set {kind!r}")


class Undrawn:
    """Stands in an answer for an image the model started and the evaluation did not draw (a
    checkpoint scored on its text only): the answer is not text-only, and no image is scored."""

    def __repr__(self) -> str:
        return "<image not drawn>"


def answer_until_image(model, tokenizer, messages: list[dict], max_new_tokens: int) -> list:
    """The greedy answer to `messages` up to where it starts an image, then `Undrawn()` if it
    started one: text-only scoring without the cost of drawing (`--skip-generation`, `base`)."""
    from training_ref.generate import generate

    out, ids = generate(model, tokenizer, messages, max_new_tokens=max_new_tokens, return_ids=True,
                        sampling=SamplingParams(), stop_at_image=True)
    return [*out, Undrawn()] if ids[-1:] == [model.config.img_bos_id] else list(out)


def score_sentences(samples: list[world.Sample], outputs: list[list]) -> dict:
    """t2ti answers cut where the image starts (`answer_until_image`, for a checkpoint that only
    understands, like `base`): how often the answer is text and then an image, and whether that
    text restates what was asked (`text_fulfils_request`, as in score_outputs' t2ti)."""
    started = told = asked = 0
    for s, out in zip(samples, outputs):
        cut = len(out) == 2 and isinstance(out[0], str) and isinstance(out[1], Undrawn)
        started += cut
        if s.request is not None:
            asked += 1
            told += cut and shapeeval.text_fulfils(s.request, out[0])
    return {"text_then_image": started / max(len(outputs), 1), "text_fulfils_request": told / max(asked, 1),
            "n": len(outputs)}


SET_NAMES = ("vqa", "t2i", "t2ti", "arithmetic", "vqa_paraphrase", "t2i_paraphrase", "t2ti_paraphrase",
             "arithmetic_paraphrase", "t2i_stated", "t2i_stated_paraphrase", "t2i_canonical")


def _kind(name: str) -> str:
    """A set's scoring kind: 't2i' for t2i, t2i_paraphrase, t2i_stated(_paraphrase), t2i_canonical."""
    return name.removesuffix("_paraphrase").removesuffix("_stated").removesuffix("_canonical")


_BUILDERS = {"vqa": world.heldout_vqa, "t2i": world.heldout_t2i, "t2ti": world.heldout_t2ti,
             "arithmetic": world.heldout_arithmetic}
BUDGETS = {"vqa": 24, "arithmetic": 24, "t2i": 64, "t2ti": 96}  # text tokens (an image always completes)


def evaluation_sets(n_vqa: int = 200, n_t2i: int = 200, n_t2ti: int = 200, n_arithmetic: int = 0,
                    paraphrase: bool = False, canonical: bool = False,
                    stated: bool = False) -> dict[str, list[world.Sample]]:
    """The fixed held-out sets by name (sets of size 0 left out); with paraphrase=True the
    `_paraphrase` twins too (held-out templates, language.PARAPHRASE_*), of the same sizes.
    canonical=True: the t2i set in the world's canonical phrasing (`world.canonical_t2i`), as
    the gates comparing two builds of one checkpoint use it. stated=True adds `t2i_stated`
    (and its paraphrase twin), t2i prompts that state every size, and `t2i_canonical`, the
    canonical phrasing's set: the sets whose all_correct_sized does not leak."""
    sizes = {"vqa": n_vqa, "t2i": n_t2i, "t2ti": n_t2ti, "arithmetic": n_arithmetic}
    sets = {k: (world.canonical_t2i(n) if canonical and k == "t2i" else _BUILDERS[k](n))
            for k, n in sizes.items() if n}
    if stated and n_t2i:
        sets["t2i_stated"] = world.heldout_t2i(n_t2i, every_size=True)
        sets["t2i_canonical"] = world.canonical_t2i(n_t2i)
    if paraphrase:
        sets.update({f"{k}_paraphrase": _BUILDERS[k](n, paraphrase=True) for k, n in sizes.items() if n})
        if stated and n_t2i:
            sets["t2i_stated_paraphrase"] = world.heldout_t2i(n_t2i, paraphrase=True, every_size=True)
    return sets


def evaluate(generate_fn, sets: dict[str, list[world.Sample]], label: str = "") -> dict:
    """`generate_fn(messages, max_new_tokens) -> interleaved list`; returns scores per set."""
    report = {}
    for kind, samples in sets.items():
        budget = BUDGETS[_kind(kind)]
        outs = [generate_fn(messages_for(s), budget) for s in tqdm(samples, desc=f"{label} {kind}".strip())]
        report[kind] = score_outputs(kind, samples, outs)
    return report


def vq_ceiling(model, samples: list[world.Sample]) -> dict:
    """ShapeEval of the VQGAN's reconstructions of the t2i targets: the best generation can do."""
    import numpy as np
    import torch

    from runtime.image import pixels_to_image, to_unit_range

    res = model.config.vqgan["resolution"]
    specs = [s.answer[0] for s in samples]  # the target scenes, scored against what was asked
    with torch.no_grad():
        pixels = torch.from_numpy(np.stack([to_unit_range(world.render(sc, res), res) for sc in specs]))
        recon = model.vqgan.decode(model.vqgan.encode(pixels))
    return shapeeval.score_t2i([_spec(s) for s in samples], [pixels_to_image(r.numpy()) for r in recon])


def main(argv=None) -> int:
    import torch

    from training_ref.checkpoint import load_checkpoint
    from training_ref.generate import generate

    p = argparse.ArgumentParser(prog="python -m training_ref.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--names", nargs="*")
    p.add_argument("--n-vqa", type=int, default=200)
    p.add_argument("--n-t2i", type=int, default=200)
    p.add_argument("--n-t2ti", type=int, default=200)
    p.add_argument("--n-arithmetic", type=int, default=200)
    p.add_argument("--no-paraphrase", action="store_true", help="in-distribution sets only")
    p.add_argument("--sets", nargs="+", choices=SET_NAMES, help="only these sets (default: all)")
    p.add_argument("--cfg-scale", type=float, help="guidance scale (default: each checkpoint's own)")
    p.add_argument("--skip-generation", action="store_true",
                   help="no images: VQA, arithmetic and t2ti's text before the image (as for `base`)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    names = args.names or [c.name for c in args.checkpoints]
    if len(names) != len(args.checkpoints) or len(set(names)) != len(names):
        # results are keyed by name: runs/a/base and runs/b/base would overwrite each other
        p.error(f"each checkpoint needs its own name (--names): got {len(args.checkpoints)} checkpoints "
                f"named {' '.join(names)}")
    sets = evaluation_sets(args.n_vqa, args.n_t2i, args.n_t2ti, args.n_arithmetic, not args.no_paraphrase,
                           stated=True)
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets}
    understanding = {k: v for k, v in sets.items() if k.startswith(("vqa", "arithmetic"))}
    results = {}
    for name, ckpt in zip(names, args.checkpoints):
        model, tok = load_checkpoint(ckpt)
        only_text = args.skip_generation or name == "base"
        t0 = time.time()
        if only_text:  # nothing drawn; t2ti's sentence before the image is what `base` contributes
            fn = lambda msgs, n: answer_until_image(model, tok, msgs, n)  # noqa: E731
            results[name] = evaluate(fn, understanding, name)
            for kind in (k for k in sets if _kind(k) == "t2ti"):
                outs = [answer_until_image(model, tok, messages_for(s), BUDGETS["t2ti"])
                        for s in tqdm(sets[kind], desc=f"{name} {kind} (text)")]
                results[name][kind] = score_sentences(sets[kind], outs)
        else:
            fn = lambda msgs, n: generate(model, tok, msgs, max_new_tokens=n, cfg_scale=args.cfg_scale,  # noqa: E731
                                          sampling=SamplingParams())
            results[name] = evaluate(fn, sets, name)
            if "t2i" in sets:  # the ceiling of the in-distribution set
                results[name]["vq_reconstruction"] = vq_ceiling(model, sets["t2i"])
        results[name]["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
