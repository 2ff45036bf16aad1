"""`armor-train`: build and train ARMOR checkpoints.

    armor-train --preset tiny --out runs/tiny                 # the whole pipeline, fixed seed
    armor-train --preset tiny --out runs/t --max-steps 20     # every stage capped (smoke run)
    armor-train --from-pretrained INTERNVL_DIR --vqgan VQGAN --out runs/real [--stages what how better]
    armor-train --preset proxy-1b --out runs/proxy --stages   # random weights, no training

The tiny pipeline: tokenizer -> vq -> base -> what -> how -> better (WoHG), each stage in its
own folder under --out, resumable; `--ablation` also trains the 1-stage model from `base`.
The final checkpoint is `--out/final` (fp16 with `--dtype float16`). Only the CLI prints.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

from runtime.cliutil import ArgumentParser, boundary, number, whole, writable_folder
from runtime.errors import InputError
from training_ref import train
from training_ref.checkpoint import from_pretrained, load_checkpoint, proxy_1b_config, save_checkpoint, tiny_config
from training_ref.model import ArmorModel
from training_ref.tokenizer import train_tokenizer

log = logging.getLogger("armor-train")

# Steps and batch sizes of the shipped `tiny` checkpoint (fixed seed 0; docs/model-card.md says why
# each, and how long each takes); `onestage` gets the WoHG stages' budget (what + how + better) for a
# fair ablation.
TINY_SCHEDULE = {"vq": (3000, 16), "base": (2400, 32), "what": (400, 32), "how": (4500, 16),
                 "better": (400, 32)}
_WOHG_STEPS = sum(TINY_SCHEDULE[s][0] for s in train.WOHG)
TINY_SCHEDULE["onestage"] = (_WOHG_STEPS, round(sum(TINY_SCHEDULE[s][0] * TINY_SCHEDULE[s][1] for s in train.WOHG)
                                                / _WOHG_STEPS))  # as many steps and samples as WoHG


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="armor-train", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=("tiny", "proxy-1b"))
    src.add_argument("--from-pretrained", type=Path, metavar="INTERNVL_DIR",
                     help="a local InternVL checkpoint in transformers' format")
    p.add_argument("--vqgan", type=Path, help="a local Chameleon VQGAN checkpoint (with --from-pretrained)")
    p.add_argument("--out", type=Path, required=True, help="run folder; stages and `final` go here")
    p.add_argument("--stages", nargs="*", choices=tuple(train.STAGES),
                   help="stages to run (default: the preset's pipeline; none for proxy-1b)")
    p.add_argument("--ablation", action="store_true", help="also train the 1-stage ablation from `base`")
    p.add_argument("--max-steps", type=whole(1), help="cap every stage at this many steps (>= 1)")
    p.add_argument("--batch-size", type=whole(1), help="samples per step (default: the preset's, per stage)")
    p.add_argument("--seed", type=whole(0), default=0)
    p.add_argument("--save-every", type=whole(1), default=200, help="save a resumable stage every N steps "
                                                                     "(default 200)")
    p.add_argument("--save-seconds", type=number(1.0), default=120.0,
                   help="... and every S seconds of wall time (default 120); Ctrl-C / SIGTERM also save")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="dtype of `final`")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return boundary("armor-train", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        torch.distributed.init_process_group("gloo")
    t0 = time.time()
    writable_folder(args.out)
    if args.from_pretrained:
        if not args.vqgan:
            raise InputError("--from-pretrained needs --vqgan PATH (a Chameleon VQGAN checkpoint)")
        model, tokenizer = from_pretrained(args.from_pretrained, args.vqgan)
        stages = args.stages if args.stages is not None else list(train.WOHG)
        schedule = {s: (1000, 8) for s in train.STAGES}
    else:
        tokenizer = train_tokenizer(seed=args.seed)
        build = tiny_config if args.preset == "tiny" else proxy_1b_config
        model = ArmorModel(build(tokenizer))
        default = ["vq", "base", *train.WOHG] if args.preset == "tiny" else []
        stages = args.stages if args.stages is not None else default
        schedule = TINY_SCHEDULE
    if args.preset == "proxy-1b" and any(s in ("vq", "base") for s in stages):
        raise InputError("proxy-1b is a random-weight workload; train only WoHG stages on it, if any")
    args.out.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %.2fM parameters; stages: %s", model.config.preset, n_params / 1e6, " ".join(stages) or "none")
    base_model = None
    for name in stages:
        steps, batch = schedule[name]
        steps = min(steps, args.max_steps) if args.max_steps else steps
        t_stage = time.time()
        model = train.train_stage(model, tokenizer, train.STAGES[name], args.out / name, steps,
                                  args.batch_size or batch, args.seed, save_every=args.save_every,
                                  save_seconds=args.save_seconds, progress=not args.quiet)
        log.info("stage %s: %d steps in %.0f s (%.0f s since the start)", name, steps, time.time() - t_stage,
                 time.time() - t0)
        if name == "base":
            base_model = args.out / name
    final = args.out / "final"
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0:
        dtype = getattr(torch, args.dtype)
        save_checkpoint(model, tokenizer, final, dtype=dtype)
        log.info("final checkpoint: %s (%s)", final, args.dtype)
    if args.ablation:
        if base_model is None and (args.out / "base").is_dir():
            base_model = args.out / "base"
        if base_model is None:
            raise InputError("--ablation trains from the `base` stage: run it (or keep its folder in --out)")
        abl, _ = load_checkpoint(base_model)
        steps, batch = schedule["onestage"]
        steps = min(steps, args.max_steps) if args.max_steps else steps
        t_stage = time.time()
        abl = train.train_stage(abl, tokenizer, train.STAGES["onestage"], args.out / "onestage", steps,
                                args.batch_size or batch, args.seed, save_every=args.save_every,
                                save_seconds=args.save_seconds, progress=not args.quiet)
        log.info("stage onestage: %d steps in %.0f s", steps, time.time() - t_stage)
        if rank == 0:
            save_checkpoint(abl, tokenizer, args.out / "final-onestage", dtype=getattr(torch, args.dtype))
    if rank == 0:
        print(f"armor-train: done in {time.time() - t0:.0f} s; checkpoint {final}")
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
