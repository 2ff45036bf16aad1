"""Training stages: the VQGAN, the base MLLM, and ARMOR's WoHG steps (plus the 1-stage ablation).

WoHG ("what or how to generate", docs/design.md): decoder layers and the original embeddings are
always frozen, and

    stage   trainable                                   loss
    what    new embeddings + text head                  text CE            (alpha=1, beta=0)
    how     new embeddings + adapter + visual head      image CE + cell loss (alpha=0, beta=1, cell 1)
    better  new embeddings + text head + adapter + visual head   alpha*text + beta*image, interleaved
    onestage (ablation) the `better` set from the base model, all data at once (+ cell loss)

The cell loss (ArmorLoss) is a train-only head on the adapter's output that names the object
in the 3x3 cell of each code being predicted: it teaches the adapter which phrase of the prompt
a code belongs to directly, not through 1,024 codes (docs/model-card.md's trials: 2000 `how`
steps give all-correct 0.21 with it, 0.055 without).

`how` trains the code embeddings too, at the cost of the frozen decoder's backward pass: the
adapter reads the codes drawn so far only through the decoder's hidden states, and through a
frozen decoder untrained code embeddings are nearly indistinguishable (docs/model-card.md).

`vq` trains the VQGAN alone (L1 + L2 reconstruction + codebook/commitment; dead codes are
re-seeded from encoder outputs). `base` trains the whole MLLM on understanding (t2t, ti2t) and
on the drawing prompts' text side (`<imgbos>`, t2ti's sentences): only the embedded default
needs it, real users start from a pretrained MLLM. A stage may end with a `Phase` on other data
(`RESTATING`, tried for `base`; not shipped).

Every stage resumes after a kill: its folder holds the last checkpoint (written atomically)
plus `train_state.json` and the optimizer moments; the data stream of step s is drawn from a
generator seeded by (seed, stage, step, rank), so a resumed run sees the same batches.
Under torchrun (WORLD_SIZE > 1) it trains with DDP over gloo and checks the replicas agree.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from runtime.constants import TRAIN_STATE_FILE
from runtime.image import to_unit_range
from training_ref import world
from training_ref.checkpoint import load_checkpoint, save_checkpoint
from training_ref.data import CELL_CLASSES, IGNORE, Batch, CodeCache, make_batch
from training_ref.model import ArmorModel

log = logging.getLogger(__name__)

OPTIM_FILE = "optimizer.safetensors"
ALWAYS_FROZEN = ("decoder", "original_embeddings", "vision", "vqgan")


@dataclass(frozen=True)
class Phase:
    """The last `share` of a stage's steps, trained on its own data mix with its own learning-rate
    cycle (warmup and cosine again)."""
    share: float
    mix: tuple[tuple[str, float], ...]
    lr: float
    p_multi: float = 0.0  # share of t2ti samples that ask for two or three objects


@dataclass(frozen=True)
class Stage:
    name: str
    trainable: tuple[str, ...]  # parameter groups of ArmorModel.param_groups()
    alpha: float  # text loss weight
    beta: float  # image loss weight
    mix: tuple[tuple[str, float], ...]  # data modes and their shares
    lr: float
    p_uncond: float = 0.0
    # (share of the steps, max objects in the scenes to draw) phases, in order; after the last
    # phase scenes have 1..world.MAX_OBJECTS objects. Single objects first make the drawn colour
    # follow the prompt's colour word (docs/model-card.md).
    curriculum: tuple[tuple[float, int], ...] = ()
    cell_weight: float = 0.0  # weight of the auxiliary cell loss (ArmorLoss); 0 = none
    # share of t2ti samples whose image follows the answer's own text, not the prompt (data.make_batch);
    # no shipped stage uses it (its trials: docs/model-card.md)
    p_text_leads: float = 0.0
    # a last phase on other data; no shipped stage has one (the 15th trial's `base` ended with
    # RESTATING, and its `how` drew worse: docs/model-card.md)
    then: Phase | None = None

    def phase_at(self, step: int, steps: int) -> tuple[int, int, tuple[tuple[str, float], ...], float, float]:
        """(first step, steps, data mix, lr, p_multi) of the phase that `step` of `steps` is in."""
        split = steps - round(self.then.share * steps) if self.then else steps
        if step < split:
            return 0, split, self.mix, self.lr, 0.0
        return split, steps - split, self.then.mix, self.then.lr, self.then.p_multi

    def max_objects(self, step: int, steps: int) -> int:
        """The object cap of the scenes drawn at `step` of `steps`."""
        for share, cap in self.curriculum:
            if step < share * steps:
                return cap
        return world.MAX_OBJECTS


# restating practice: t2ti's "here is ..." for two- and three-object requests, which v2's `base`
# mix does not teach (docs/model-card.md, the 15th trial: `Stage.then` of a 3600-step `base`)
RESTATING = Phase(1 / 3, (("t2t", 0.1), ("ti2t", 0.15), ("t2i", 0.05), ("t2ti", 0.7)), 1e-3, p_multi=0.8)
CURRICULUM = ((0.15, 1), (0.3, 2))  # the stages that first learn to draw: 1 object, then <= 2, then 1-3

STAGES = {
    "vq": Stage("vq", ("vqgan",), 0.0, 0.0, (), 1e-3),
    "base": Stage("base", ("vision", "decoder", "original_embeddings", "text_head", "imgbos_head"), 1.0, 0.0,
                  (("t2t", 0.35), ("ti2t", 0.45), ("t2i", 0.1), ("t2ti", 0.1)), 2e-3),
    "what": Stage("what", ("new_embeddings", "text_head", "imgbos_head"), 1.0, 0.0,
                  (("t2t", 0.1), ("ti2t", 0.3), ("t2i", 0.3), ("t2ti", 0.3)), 2e-3),
    "how": Stage("how", ("new_embeddings", "adapter", "visual_head"), 0.0, 1.0,
                 (("t2i", 0.6), ("t2ti", 0.4)), 1.5e-3, p_uncond=0.1, curriculum=CURRICULUM, cell_weight=1.0),
    "better": Stage("better", ("new_embeddings", "text_head", "imgbos_head", "adapter", "visual_head"), 1.0, 1.0,
                    (("t2t", 0.1), ("ti2t", 0.3), ("t2i", 0.2), ("t2ti", 0.4)), 5e-4, p_uncond=0.1),
    "onestage": Stage("onestage", ("new_embeddings", "text_head", "imgbos_head", "adapter", "visual_head"),
                      1.0, 1.0,
                      (("t2t", 0.1), ("ti2t", 0.3), ("t2i", 0.3), ("t2ti", 0.3)), 2e-3, p_uncond=0.1,
                      curriculum=CURRICULUM, cell_weight=1.0),
}
WOHG = ("what", "how", "better")


def uses_every_group(stage: Stage) -> bool:
    """Whether every training step of `stage` gives each of its trainable groups a gradient: the
    VQGAN's, and a stage whose samples all draw (the image loss reaches the embeddings, adapter,
    visual head and cell head through every sample). DDP skips its unused-parameter search then."""
    return stage.name == "vq" or (stage.beta > 0 and {mode for mode, _ in stage.mix} <= {"t2i", "t2ti"}
                                  and not {"text_head", "imgbos_head", "vision"} & set(stage.trainable))


def set_trainable(model: ArmorModel, stage: Stage) -> list[torch.nn.Parameter]:
    """Apply the freeze table: exactly the stage's groups require gradients."""
    groups = model.param_groups()
    for params in groups.values():
        for p in params:
            p.requires_grad_(False)
    trainable = []
    for name in stage.trainable:
        for p in groups[name]:
            p.requires_grad_(True)
            trainable.append(p)
    return trainable


class ArmorLoss(torch.nn.Module):
    """alpha * text CE + beta * image CE (+ cell_weight * the cell loss) over a batch (the module
    DDP wraps).

    The cell loss is train-only: a linear head on the adapter's output at each segment input
    names the (colour, shape, size) of the object in the cell of the code it predicts
    (data.cell_labels). It is never saved with the model; its weights travel in the stage's
    optimizer file so a resumed stage continues it."""

    def __init__(self, model: ArmorModel, alpha: float, beta: float, cell_weight: float = 0.0):
        super().__init__()
        self.model, self.alpha, self.beta, self.cell_weight = model, alpha, beta, cell_weight
        self.cell_head = torch.nn.Linear(model.config.hidden_size, sum(CELL_CLASSES)) if cell_weight else None

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        m, cfg = self.model, self.model.config
        ids, mask, pos = batch.ids, batch.attention_mask, batch.position_ids
        if not self.alpha and len(batch.image_rows):  # image loss only: nothing after the last segment matters
            end = int(batch.image_starts.max()) + cfg.n_grid + 1  # causal and right-padded: exact
            ids, mask, pos = ids[:, :end], mask[:, :end], pos[:, :end]
        # nothing below the adapter trains (a `how` without embeddings): the frozen decoder runs without a graph
        upstream = [*m.embedding.parameters(), *m.mllm.model.parameters()]
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in upstream)):
            image_embeds = m.encode_images(batch.pixel_values) if batch.pixel_values is not None else None
            x = m.embed(ids, image_embeds)  # [B, T, H]
            hidden, _ = m.decode(x, mask, pos)  # [B, T, W] (W = H, or 2H with `adapter_reads`)
        loss, stats = hidden.new_zeros(()), {}
        if self.alpha:
            sel = batch.text_labels != IGNORE  # [B, T]
            text = F.cross_entropy(m.text_logits(hidden[sel]), batch.text_labels[sel])
            loss = loss + self.alpha * text
            stats["text"] = text.item()
        if self.beta and len(batch.image_rows):
            # the adapter reads each image row up to the end of its segment: context, then segment
            offsets = batch.image_starts[:, None] + torch.arange(cfg.n_grid + 1)  # [B_img, N+1]
            length = int(offsets[:, -1].max()) + 1
            rel = torch.arange(length)[None] - batch.image_starts[:, None]  # [B_img, L]
            context = m.adapter.context_start + torch.arange(length)[None]  # right padding: token t is context t
            positions = torch.where((rel >= 0) & (rel <= cfg.n_grid), rel, context)
            x, _ = m.adapter(hidden[batch.image_rows, :length], positions)  # [B_img, L, H]
            # the visual head (m.image_logits' second half) only where a target is: the segment
            x = x[torch.arange(len(offsets))[:, None], offsets]  # [B_img, N+1, H]
            logits = m.visual_head(x)  # [B_img, N+1, n_codes + 2]
            image = F.cross_entropy(logits.flatten(0, 1), batch.image_labels.flatten())
            loss = loss + self.beta * image
            stats["image"] = image.item()
            if self.cell_head is not None and bool((batch.image_cells != IGNORE).any()):
                parts = self.cell_head(x).split(CELL_CLASSES, -1)  # 3 x [B_img, N+1, classes]
                cell = sum(F.cross_entropy(z.flatten(0, 1), batch.image_cells[..., k].flatten(), ignore_index=IGNORE)
                           for k, z in enumerate(parts)) / len(parts)
                loss = loss + self.cell_weight * cell
                stats["cell"] = cell.item()
        return loss, stats


class VQLoss(torch.nn.Module):
    """L1 + L2 reconstruction + codebook/commitment loss of the VQGAN (the module DDP wraps)."""

    def __init__(self, vqgan):
        super().__init__()
        self.vqgan = vqgan

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        recon, q_loss, _ = self.vqgan(pixels)  # [B, 3, S, S]
        l1, l2 = (recon - pixels).abs().mean(), F.mse_loss(recon, pixels)
        return l1 + l2 + q_loss, {"l1": l1.item(), "q": q_loss.item()}


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _lr_at(step: int, total: int, base: float, warmup: int = 50) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train_stage(model: ArmorModel, tokenizer, stage: Stage, out_dir: Path, steps: int, batch_size: int,
                seed: int, save_every: int = 200, save_seconds: float = 120.0, progress: bool = True) -> ArmorModel:
    """Train one stage for `steps` steps, resuming from `out_dir` if a partial run is there.

    Saves every `save_every` steps, every `save_seconds` of wall time, and at the end of the step
    in progress when SIGINT or SIGTERM arrives (then raises KeyboardInterrupt; a second signal
    stops at once)."""
    rank, world_size = _rank_world()
    if steps < 1 or batch_size < 1 or save_every < 1 or not save_seconds > 0:
        raise ValueError(f"steps, batch_size and save_every must be >= 1 and save_seconds > 0; got {steps}, "
                         f"{batch_size}, {save_every}, {save_seconds}")
    _recover(out_dir)
    state_path = out_dir / TRAIN_STATE_FILE
    start = 0
    if state_path.is_file():
        st = json.loads(state_path.read_text())
        if st.get("done"):
            log.info("stage %s already complete in %s", stage.name, out_dir)
            return load_checkpoint(out_dir)[0].train()
        model = load_checkpoint(out_dir)[0]
        start = st["step"]
        log.info("resuming stage %s at step %d", stage.name, start)
    model.train()
    params = set_trainable(model, stage)
    step_fn = _vq_step if stage.name == "vq" else _armor_step
    loss_module = (VQLoss(model.vqgan) if stage.name == "vq"
                   else ArmorLoss(model, stage.alpha, stage.beta, stage.cell_weight))
    train_only = dict(loss_module.cell_head.named_parameters()) if getattr(loss_module, "cell_head", None) else {}
    params += list(train_only.values())  # last: the model's parameter indices in OPTIM_FILE stay as they were
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0 if stage.name == "vq" else 0.01,
                            betas=(0.9, 0.95))
    if start and (out_dir / OPTIM_FILE).is_file():
        _load_optimizer(opt, params, out_dir / OPTIM_FILE, start, train_only)
    if world_size > 1:
        # a mixed batch may lack a head's inputs: only then does DDP search the graph for unused ones
        loss_module = torch.nn.parallel.DistributedDataParallel(loss_module,
                                                                find_unused_parameters=not uses_every_group(stage))
    codes = None if stage.name == "vq" else CodeCache(model.vqgan, model.config.vqgan["resolution"])
    vision_size = model.mllm.config.vision_config.image_size[0]
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=stage.name, disable=not progress or rank != 0)
    last_save = time.monotonic()
    with _Stop() as stop:
        for step in bar:
            rng = np.random.default_rng([seed, list(STAGES).index(stage.name), step, rank])
            first, length, mix, lr, p_multi = stage.phase_at(step, steps)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step - first, length, lr)
            loss, stats = step_fn(model, loss_module, stage, rng, batch_size, tokenizer, codes, vision_size,
                                  stage.max_objects(step, steps), mix, p_multi)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.3f}" for k, v in stats.items()})
            if stage.name == "vq" and step % 100 == 99 and step < 0.8 * steps:  # then let the codebook settle
                # one stream for every rank (not the rank's data stream): the replicas stay equal
                _reseed_dead_codes(model, np.random.default_rng([seed, list(STAGES).index(stage.name), step, 1 << 20]))
            done = step + 1 == steps
            stopping, timed = bool(stop.requested), time.monotonic() - last_save >= save_seconds
            if world_size > 1:  # all ranks stop and save after the same step, else one waits for the others forever
                flags = torch.tensor([int(stopping), int(timed)])
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                stopping, timed = bool(flags[0]), bool(flags[1])
            if (step + 1) % save_every == 0 or done or stopping or timed:
                _save(model, tokenizer, opt, params, out_dir, stage, step + 1, done, rank, train_only)
                last_save = time.monotonic()
            if stopping and not done:
                log.warning("stage %s saved at step %d of %d; run the same command to resume", stage.name, step + 1, steps)
                raise KeyboardInterrupt(stop.requested or "terminated")
    if steps == start:  # nothing left to do but mark completion
        _save(model, tokenizer, opt, params, out_dir, stage, steps, True, rank, train_only)
    if world_size > 1:
        _check_replicas_agree(params, out_dir, rank)
    return model


class _Stop:
    """SIGINT / SIGTERM set `requested` (the step in progress finishes and is saved); a second one
    interrupts at once. Only in the main thread; the previous handlers come back on exit."""

    def __enter__(self):
        self.requested, self._previous = "", {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt(self.requested)
        self.requested = "terminated" if signum == signal.SIGTERM else "interrupted"

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _recover(out_dir: Path) -> None:
    """After a kill: a stage folder caught between its two renames comes back from `.NAME.old-*`,
    and temporary folders of dead saves go."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f".{out_dir.name}.old-*"))
    if not out_dir.exists() and olds:
        olds[-1].rename(out_dir)
        log.warning("recovered %s from an interrupted save", out_dir)
    for stale in [*parent.glob(f".{out_dir.name}.old-*"), *parent.glob(f".{out_dir.name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    Path(str(out_dir) + ".optim.tmp").unlink(missing_ok=True)
    for stale in parent.glob(".tmp??????"):  # safetensors' own temporary file of a killed save_file
        if stale.is_file():
            stale.unlink()


def _armor_step(model, loss_module, stage, rng, batch_size, tokenizer, codes, vision_size, max_objects, mix,
                p_multi):
    batch = make_batch(rng, dict(mix), batch_size, tokenizer, model.config, codes, vision_size, stage.p_uncond,
                       max_objects, stage.p_text_leads, p_multi)
    return loss_module(batch)


def _vq_step(model, loss_module, stage, rng, batch_size, tokenizer, codes, vision_size, _max_objects, _mix,
             _p_multi):
    res = model.config.vqgan["resolution"]
    pixels = torch.from_numpy(np.stack([to_unit_range(world.render(world.sample_scene(rng), res), res)
                                        for _ in range(batch_size)]))
    return loss_module(pixels)


@torch.no_grad()
def _reseed_dead_codes(model: ArmorModel, rng: np.random.Generator) -> None:
    """Codes no image of a probe batch uses are moved onto encoder outputs drawn with
    probability proportional to their quantization error.

    Uniform draws land mostly on the world's (white) background patches, so spare codes go
    where reconstruction needs them least. Under DDP every rank draws the same probe (`rng`
    is shared) and rank 0's codebook is broadcast, so the replicas stay identical."""
    vq, res = model.vqgan, model.config.vqgan["resolution"]
    pixels = torch.from_numpy(np.stack([to_unit_range(world.render(world.sample_scene(rng), res), res)
                                        for _ in range(64)]))
    z = vq.latents(pixels)  # [64, D, h, w]
    codes = vq.quantize.codes(z)  # [64, h, w]
    used = torch.zeros(vq.quantize.embedding.num_embeddings, dtype=torch.bool)
    used[codes.flatten()] = True
    dead = (~used).nonzero().flatten()
    if len(dead):
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # [N, D]
        err = (flat - vq.quantize.embedding.weight[codes.flatten()]).pow(2).sum(1).double().numpy()
        n = min(len(dead), int((err > 0).sum()))
        if n:
            pick = torch.from_numpy(rng.choice(len(flat), n, replace=False, p=err / err.sum()))
            vq.quantize.embedding.weight[dead[:n]] = flat[pick]
            log.debug("re-seeded %d of %d dead codes", n, len(dead))
    if dist.is_initialized():
        dist.broadcast(vq.quantize.embedding.weight.data, 0)


def _save(model, tokenizer, opt, params, out_dir, stage, step, done, rank, train_only=None) -> None:
    if rank != 0:
        if dist.is_initialized():
            dist.barrier()
        return
    index = {id(p): i for i, p in enumerate(params)}
    moments = {}
    for p, st in opt.state.items():
        if id(p) in index:
            moments[f"{index[id(p)]}.exp_avg"] = st["exp_avg"].contiguous()
            moments[f"{index[id(p)]}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
            # a parameter's own Adam step: fewer than the stage's when its first gradient came late
            moments[f"{index[id(p)]}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    for name, p in (train_only or {}).items():  # train-only weights (the cell head): not in the checkpoint
        moments[f"train_only.{name}"] = p.detach().contiguous()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out_dir) + ".optim.tmp")
    save_file(moments, str(tmp))
    state = {"stage": stage.name, "step": step, "done": done}
    save_checkpoint(model, tokenizer, out_dir, extra_files={TRAIN_STATE_FILE: json.dumps(state)})
    os.replace(tmp, out_dir / OPTIM_FILE)  # a kill between the two resumes with fresh moments at worst
    if dist.is_initialized():
        dist.barrier()


def _load_optimizer(opt, params, path: Path, step: int, train_only=None) -> None:
    moments = load_file(str(path))
    with torch.no_grad():
        for name, p in (train_only or {}).items():
            if f"train_only.{name}" in moments:
                p.copy_(moments[f"train_only.{name}"])
    for i, p in enumerate(params):
        if f"{i}.exp_avg" in moments:
            own = moments.get(f"{i}.step")  # absent in files written before it was saved
            opt.state[p] = {"step": torch.tensor(float(step) if own is None else float(own[0])),
                            "exp_avg": moments[f"{i}.exp_avg"], "exp_avg_sq": moments[f"{i}.exp_avg_sq"]}


def _check_replicas_agree(params, out_dir: Path, rank: int) -> None:
    """All ranks must hold identical trainable weights after DDP training."""
    local = torch.stack([p.detach().double().sum() for p in params])
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    max_diff = max((g - gathered[0]).abs().max().item() for g in gathered)
    if rank == 0:
        (out_dir.parent / "ddp_check.json").write_text(json.dumps(
            {"world_size": dist.get_world_size(), "max_param_sum_diff": max_diff, "n_params": len(params)}))
    if max_diff > 1e-9:
        raise RuntimeError(f"DDP replicas diverged (max difference of parameter sums {max_diff})")
