"""How readable each object's colour is in a checkpoint's decoder hidden states (a diagnostic).

    python -m training_ref.probe CKPT [CKPT ...] [--n-fit 600] [--n-score 200]

WoHG's adapter binds the codes it draws to the prompt through the frozen decoder's last hidden
states of that prompt, so a `base` whose states lose which colour belongs to which object
draws worse (docs/model-card.md, the 15th trial). For each layer (0 = the embeddings), a
linear probe (softmax regression) on the hidden state at each object's shape word predicts
that object's colour; it is fitted on `--n-fit` training-split prompts "draw <2-3 objects in
the canonical phrasing>." and scored on `--n-score` others (chance 1/6). This module knows the
world's canonical phrasing and the decoder's forward pass; it trains nothing it keeps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from runtime.chat import format_chat
from training_ref import world

COLOURS = list(world.COLOURS)


def shape_word_states(model, tokenizer, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states [layers + 1, objects, H] at each object's shape word over `n` prompts of
    2-3 objects, and the objects' colour indices [objects]."""
    rng = np.random.default_rng(seed)
    states, colours = [], []
    for _ in range(n):
        scene = world.canonical(world.sample_scene(rng, n_objects=int(rng.integers(2, world.MAX_OBJECTS + 1))))
        prompt = f"draw {world.describe(scene)}."
        text = format_chat([{"role": "user", "content": prompt}], model.config.n_image_tokens)
        enc = tokenizer.encode(text, add_special_tokens=False)
        with torch.no_grad():
            out = model.mllm.model.language_model(inputs_embeds=model.embed(torch.tensor([enc.ids])),
                                                  output_hidden_states=True)
        hidden = torch.stack(out.hidden_states)[:, 0]  # [layers + 1, T, H]
        cursor = text.index(prompt)
        for obj in scene:  # canonical order is the prompt's order
            end = text.index(f"{obj.colour} {obj.shape}", cursor) + len(f"{obj.colour} {obj.shape}")
            cursor = end
            token = max(k for k, (a, _) in enumerate(enc.offsets) if a < end)  # the shape word's last token
            states.append(hidden[:, token])
            colours.append(COLOURS.index(obj.colour))
    return torch.stack(states, 1), torch.tensor(colours)


def probe_accuracy(x_fit: torch.Tensor, y_fit: torch.Tensor, x_score: torch.Tensor, y_score: torch.Tensor,
                   steps: int = 300) -> float:
    """Fit softmax regression on standardised features; its accuracy on the scored set."""
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-5
    x_fit, x_score = (x_fit - mean) / std, (x_score - mean) / std
    linear = torch.nn.Linear(x_fit.shape[1], len(COLOURS))
    opt = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(linear(x_fit), y_fit).backward()
        opt.step()
    with torch.no_grad():
        return (linear(x_score).argmax(1) == y_score).float().mean().item()


def colour_probe(model, tokenizer, n_fit: int = 600, n_score: int = 200) -> list[float]:
    """Per layer (0 = embeddings), the probe's accuracy at reading each object's colour."""
    torch.manual_seed(0)
    model.eval()
    fit, y_fit = shape_word_states(model, tokenizer, n_fit, seed=1)
    score, y_score = shape_word_states(model, tokenizer, n_score, seed=2)
    return [round(probe_accuracy(fit[k], y_fit, score[k], y_score), 3) for k in range(fit.shape[0])]


def main(argv=None) -> int:
    from training_ref.checkpoint import load_checkpoint

    p = argparse.ArgumentParser(prog="python -m training_ref.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--n-fit", type=int, default=600)
    p.add_argument("--n-score", type=int, default=200)
    args = p.parse_args(argv)
    for ckpt in args.checkpoints:
        model, tok = load_checkpoint(ckpt)
        print(json.dumps({"checkpoint": str(ckpt), "colour_by_layer": colour_probe(model, tok, args.n_fit,
                                                                                   args.n_score)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
