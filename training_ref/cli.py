"""`armor-train`: build and train ARMOR checkpoints.

    armor-train --preset tiny --out runs/tiny                 # the whole pipeline, fixed seed
    armor-train --preset tiny --out runs/t --max-steps 20     # every stage capped (smoke run)
    armor-train --from-pretrained INTERNVL_DIR --vqgan VQGAN --out runs/real [--stages what how better]
    armor-train --preset proxy-1b --out runs/proxy --stages   # random weights, no training

The tiny pipeline: tokenizer -> vq -> base -> what -> how -> better (WoHG), each stage in its
own folder under --out, resumable; `--ablation` also trains the 1-stage model from `base`
(`--stages --ablation`: only that, from the run's `base`, leaving its `final` as it was).
The final checkpoint is `--out/final` (fp16 with `--dtype float16`). Only the CLI prints.

`--workers N` (the tiny preset's default: 2) trains data-parallel: this command checks its
arguments, then starts N processes under torchrun (DDP over gloo), the cores split between
them, each drawing batch / N samples a step. Tiny models run faster that way than as one
process with N threads (docs/design.md); a stop signal reaches the workers, which save.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from runtime.cliutil import ArgumentParser, boundary, number, whole, writable_folder
from runtime.constants import TRAIN_STATE_FILE
from runtime.errors import InputError
from training_ref import train
from training_ref.checkpoint import from_pretrained, load_checkpoint, proxy_1b_config, save_checkpoint, tiny_config
from training_ref.model import ArmorModel
from training_ref.tokenizer import train_tokenizer

log = logging.getLogger("armor-train")

# Steps and batch sizes of the shipped `tiny` checkpoint (fixed seed 0; docs/model-card.md says why
# each, and how long each takes); `onestage` gets the WoHG stages' budget (what + how + better) for a
# fair ablation.
TINY_SCHEDULE = {"vq": (3000, 16), "base": (2400, 32), "what": (400, 32), "how": (10000, 16),
                 "better": (400, 32)}
PRETRAINED_BATCH = 8  # --from-pretrained: 1000 steps of 8 per stage
_WOHG_STEPS = sum(TINY_SCHEDULE[s][0] for s in train.WOHG)
_WOHG_SAMPLES = sum(TINY_SCHEDULE[s][0] * TINY_SCHEDULE[s][1] for s in train.WOHG)
TINY_SCHEDULE["onestage"] = (_WOHG_STEPS, 2 * round(_WOHG_SAMPLES / _WOHG_STEPS / 2))  # WoHG's steps and samples
# (the batch rounded to an even number, which the default 2 workers split)


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="armor-train", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=("tiny", "proxy-1b"))
    src.add_argument("--from-pretrained", type=Path, metavar="INTERNVL_DIR",
                     help="a local InternVL checkpoint in transformers' format")
    p.add_argument("--vqgan", type=Path, help="a local Chameleon VQGAN checkpoint (with --from-pretrained)")
    p.add_argument("--out", type=Path, required=True, help="run folder; stages and `final` go here")
    p.add_argument("--stages", nargs="*", choices=tuple(train.STAGES),
                   help="stages to run (default: the preset's pipeline; none for proxy-1b); the first "
                        "continues from the run's previous stage when --out holds it complete")
    p.add_argument("--ablation", action="store_true", help="also train the 1-stage ablation from `base`")
    p.add_argument("--max-steps", type=whole(1), help="cap every stage at this many steps (>= 1)")
    p.add_argument("--batch-size", type=whole(1), help="samples per step (default: the preset's, per stage)")
    p.add_argument("--workers", type=whole(1), help="data-parallel training processes, the cores split between "
                                                    "them (default: 2 for the tiny preset, else 1)")
    p.add_argument("--seed", type=whole(0), default=0)
    p.add_argument("--save-every", type=whole(1), default=200, help="save a resumable stage every N steps "
                                                                     "(default 200)")
    p.add_argument("--save-seconds", type=number(1.0), default=120.0,
                   help="... and every S seconds of wall time (default 120); Ctrl-C / SIGTERM also save")
    p.add_argument("--adapter-reads", type=whole(1), metavar="LAYER",
                   help="the adapter also reads this decoder layer's states (default: the last layer only); "
                        "set before the adapter first trains (a new run, or one continued up to `how`)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="dtype of `final`")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return boundary("armor-train", lambda: run(args, argv))


def check_args(args: argparse.Namespace, workers: int) -> None:
    """What can be refused before any work (and before workers start)."""
    writable_folder(args.out)
    if args.from_pretrained and not args.vqgan:
        raise InputError("--from-pretrained needs --vqgan PATH (a Chameleon VQGAN checkpoint)")
    if args.preset == "proxy-1b" and any(s in ("vq", "base") for s in args.stages or ()):
        raise InputError("proxy-1b is a random-weight workload; train only WoHG stages on it, if any")
    if args.ablation and "base" not in (args.stages if args.stages is not None else ["base"]) \
            and not (args.out / "base").is_dir():
        raise InputError("--ablation trains from the `base` stage: run it (or keep its folder in --out)")
    batches = ([args.batch_size] if args.batch_size else [PRETRAINED_BATCH] if args.from_pretrained
               else [b for _, b in TINY_SCHEDULE.values()])
    if any(b % workers for b in batches):
        raise InputError(f"--workers {workers} must divide every stage's batch ({', '.join(map(str, batches))})")


def launch_workers(argv: list[str], workers: int) -> int:
    """Run this command as `workers` DDP processes under torchrun: 0, or RuntimeError if one failed.

    The workers run in a session of their own, so a stop signal reaches them once, through
    torchrun (which forwards it): each saves the step in progress and stops."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // workers)),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
           "-m", "training_ref.cli", *argv]
    log.info("training with %d workers (DDP over gloo), %s threads each", workers, env["OMP_NUM_THREADS"])
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        code = proc.wait()
    except KeyboardInterrupt as e:
        proc.send_signal(signal.SIGTERM if str(e) == "terminated" else signal.SIGINT)
        proc.wait()
        raise
    if code:
        raise RuntimeError(f"a training worker failed (exit code {code}); its message is above")
    return 0


def start_model(model: ArmorModel, stages: list[str], pipeline: list[str], out: Path) -> ArmorModel:
    """The model the first requested stage trains: the run's previous stage of the pipeline when
    --out holds it complete (`--stages what how` continues from `out/base`, and trains what one
    command trains), else `model` as built, with a warning (for tests and smoke runs)."""
    if not stages or stages[0] not in pipeline or pipeline.index(stages[0]) == 0:
        return model
    before = pipeline[pipeline.index(stages[0]) - 1]
    state = out / before / TRAIN_STATE_FILE
    try:
        done = json.loads(state.read_text()).get("done") is True
    except (OSError, ValueError, AttributeError):
        done = False
    if not done:
        log.warning("stage %s starts from untrained weights: %s holds no complete `%s` stage", stages[0], out, before)
        return model
    log.info("stage %s starts from %s", stages[0], out / before)
    return load_checkpoint(out / before)[0]


def adapter_reading(model: ArmorModel, layer: int | None, stages: list[str], out: Path) -> ArmorModel:
    """`model` with its adapter also reading decoder `layer` (--adapter-reads). Only before the
    adapter first trains (its mixing weights start as "the last layer only", no random draw),
    so a run continued into `how` trains what one command with the flag trains."""
    if layer is None or model.config.adapter_reads == layer:
        return model
    if not stages or stages[0] not in ("vq", "base", "what", "how") or (out / "how").exists():
        was = model.config.adapter_reads
        raise InputError(f"--adapter-reads {layer}: this run's adapter already trained reading "
                         f"{'the last layer only' if was is None else f'layer {was} too'}; start a new --out folder")
    try:
        cfg = dataclasses.replace(model.config, adapter_reads=layer)
    except ValueError as e:
        raise InputError(f"--adapter-reads: {e}") from e
    with torch.random.fork_rng(devices=[]):  # the stages' random draws stay those of a run without it
        new = ArmorModel(cfg)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert missing == ["adapter.mix"] and not unexpected, (missing, unexpected)
    return new.train(model.training)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    workers = world_size if world_size > 1 else args.workers or (2 if args.preset == "tiny" else 1)
    check_args(args, workers)
    if world_size == 1 and workers > 1:
        return launch_workers(argv or [], workers)
    torch.manual_seed(args.seed)
    if world_size > 1:
        torch.distributed.init_process_group("gloo")
    t0 = time.time()
    if args.from_pretrained:
        model, tokenizer = from_pretrained(args.from_pretrained, args.vqgan)
        stages = args.stages if args.stages is not None else list(train.WOHG)
        schedule = {s: (1000, PRETRAINED_BATCH) for s in train.STAGES}
    else:
        tokenizer = train_tokenizer(seed=args.seed)
        build = tiny_config if args.preset == "tiny" else proxy_1b_config
        model = ArmorModel(build(tokenizer))
        default = ["vq", "base", *train.WOHG] if args.preset == "tiny" else []
        stages = args.stages if args.stages is not None else default
        schedule = TINY_SCHEDULE
    args.out.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %.2fM parameters; stages: %s", model.config.preset, n_params / 1e6, " ".join(stages) or "none")
    pipeline = list(train.WOHG) if args.from_pretrained else ["vq", "base", *train.WOHG]
    model = start_model(model, stages, pipeline, args.out)
    model = adapter_reading(model, args.adapter_reads, stages, args.out)
    base_model = None
    for name in stages:
        steps, batch = schedule[name]
        steps = min(steps, args.max_steps) if args.max_steps else steps
        t_stage = time.time()
        model = train.train_stage(model, tokenizer, train.STAGES[name], args.out / name, steps,
                                  (args.batch_size or batch) // world_size, args.seed, save_every=args.save_every,
                                  save_seconds=args.save_seconds, progress=not args.quiet)
        log.info("stage %s: %d steps in %.0f s (%.0f s since the start)", name, steps, time.time() - t_stage,
                 time.time() - t0)
        if name == "base":
            base_model = args.out / name
    final = args.out / "final"
    ablation_only = args.ablation and not stages  # the run's `final` stays as it was
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0 and ablation_only:
        log.info("no stage ran: %s left as it was", final)
    elif rank == 0:
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
                                (args.batch_size or batch) // world_size, args.seed, save_every=args.save_every,
                                save_seconds=args.save_seconds, progress=not args.quiet)
        log.info("stage onestage: %d steps in %.0f s", steps, time.time() - t_stage)
        if rank == 0:
            save_checkpoint(abl, tokenizer, args.out / "final-onestage", dtype=getattr(torch, args.dtype))
    if rank == 0:
        written = args.out / "final-onestage" if ablation_only else final
        print(f"armor-train: done in {time.time() - t0:.0f} s; checkpoint {written}")
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
