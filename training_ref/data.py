"""Turns shapes-world samples into training batches for the ARMOR model.

A sample becomes one token sequence: the chat prompt (with `<IMG_CONTEXT>` placeholders for
an input image), then the assistant's answer, where a generated image is `<imgbos>`, its
codes (from the frozen VQGAN) and `<imgend>`, and the turn ends with `<|im_end|>`.

Labels are next-token targets split by head:
- text labels: at every answer position whose next token is text (or `<imgbos>`), in the
  text head's index space (`<imgbos>` is index V); -100 elsewhere (prompt, image segment);
- image labels: for the segment inputs `<imgbos>, c0 .. c_{N-1}` the targets
  `c0 .. c_{N-1}, <imgend>` in the visual head's index space.
Unconditional samples (condition dropped for classifier-free guidance) are the empty-user
template followed by the image; they carry image labels only.

Cell labels (train-only, for `how`'s auxiliary loss): for each segment input, what the 3x3 cell
of the code it predicts holds, as (colour, shape, size) indices, 0 for an empty cell: the
object the adapter must bind to that code, stated directly instead of through 1,024 codes.

It knows the sequence layout and the world's samples; not the optimizer or the stages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from runtime.chat import format_chat
from runtime.image import preprocess, to_unit_range
from training_ref import world
from training_ref.model import ArmorConfig

IGNORE = -100


@dataclass
class Encoded:
    ids: list[int]
    text_labels: list[int]
    image_start: int | None  # index of <imgbos> in ids
    image_labels: list[int] | None
    input_scene: tuple | None
    image_cells: np.ndarray | None = None  # [N+1, 3] cell labels of the image segment (IGNORE: none)


@dataclass
class Batch:
    ids: torch.Tensor  # [B, T] unified ids, right-padded
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    text_labels: torch.Tensor  # [B, T] text-head index space, IGNORE elsewhere
    pixel_values: torch.Tensor | None  # [N_img, 3, S, S] input images in row order
    image_rows: torch.Tensor  # [B_img] rows holding a generated image
    image_starts: torch.Tensor  # [B_img] index of <imgbos> in those rows
    image_labels: torch.Tensor  # [B_img, N+1] visual-head index space
    image_cells: torch.Tensor  # [B_img, N+1, 3] (colour, shape, size) of each target's cell, IGNORE where none


class CodeCache:
    """Scene -> VQGAN codes of its rendering (the VQGAN is frozen after its own stage).

    With `local_patches` every patch is encoded on its own, so its code depends on its pixels
    only: codes are cached per patch content, and a new scene costs the encoder only the
    patches never seen before (the world's pictures share most patches: background, the same
    shape in the same cell). Equal to encoding whole images up to float rounding at ties."""

    def __init__(self, vqgan, resolution: int, max_items: int = 200_000):
        self.vqgan, self.resolution, self.max_items = vqgan, resolution, max_items
        self.cache: dict[tuple, list[int]] = {}
        self.patch_codes: dict[bytes, int] = {}

    @torch.no_grad()
    def __call__(self, scenes: list[tuple]) -> list[list[int]]:
        todo = [s for s in dict.fromkeys(scenes) if s not in self.cache]
        if todo:
            if self.vqgan.config.local_patches:
                codes = self._by_patch(todo)
            else:
                pixels = torch.from_numpy(np.stack([to_unit_range(world.render(s, self.resolution), self.resolution)
                                                    for s in todo]))
                codes = self.vqgan.encode(pixels).flatten(1).tolist()  # [n, h*w]
            if len(self.cache) + len(todo) > self.max_items:
                self.cache.clear()
            self.cache.update(zip(todo, codes))
        return [self.cache[s] for s in scenes]

    def _by_patch(self, scenes: list[tuple]) -> list[list[int]]:
        f, res = self.vqgan.config.downsample, self.resolution
        g = res // f
        images = np.stack([np.asarray(world.render(s, res)) for s in scenes])  # [n, S, S, 3] uint8
        patches = images.reshape(len(scenes), g, f, g, f, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, f, f, 3)
        keys = [p.tobytes() for p in patches]  # row-major over the grid, as VQGAN.latents unfolds
        new = {k: i for i, k in enumerate(keys) if k not in self.patch_codes}
        if new:
            if len(self.patch_codes) + len(new) > self.max_items:
                self.patch_codes.clear()
                new = {k: i for i, k in enumerate(keys)}
            unit = patches[list(new.values())].astype(np.float32) / 127.5 - 1.0  # to_unit_range's mapping
            # each patch is an f x f image of its own: one code each
            codes = self.vqgan.encode(torch.from_numpy(unit.transpose(0, 3, 1, 2).copy()))  # [m, 1, 1]
            self.patch_codes.update(zip(new, codes.flatten().tolist()))
        flat = [self.patch_codes[k] for k in keys]
        n = g * g
        return [flat[i * n:(i + 1) * n] for i in range(len(scenes))]


CELL_CLASSES = (1 + len(world.COLOURS), 1 + len(world.SHAPES), 1 + len(world.SIZES))  # 0: empty cell


def cell_labels(scene: tuple, grid: tuple[int, int]) -> np.ndarray:
    """[h*w, 3] per code patch (row-major): (colour, shape, size) of the object in the 3x3 cell
    holding the patch's centre, each 1 + its index in world's tables, or 0 for an empty cell."""
    colours, h, w = list(world.COLOURS), grid[0], grid[1]
    cells = np.zeros((9, 3), dtype=np.int64)
    for o in scene:
        cells[world.POSITION_INDEX[o.position]] = (1 + colours.index(o.colour), 1 + world.SHAPES.index(o.shape),
                                                   1 + world.SIZES.index(o.size))
    rows = ((np.arange(h) + 0.5) * 3 / h).astype(np.int64)  # cell row of each patch row
    cols = ((np.arange(w) + 0.5) * 3 / w).astype(np.int64)
    return cells[(rows[:, None] * 3 + cols[None, :]).reshape(-1)]


def encode_sample(sample: world.Sample, tokenizer, cfg: ArmorConfig, codes: list[int] | None,
                  unconditional: bool = False, train_text: bool = True) -> Encoded:
    """One sample -> ids and labels. `codes` are the codes of the sample's (single) generated image;
    with train_text=False no token is a text target (the image alone is learnt)."""
    tok = lambda s: tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
    if unconditional:
        content, answer = "", [p for p in sample.answer if not isinstance(p, str)]
    else:
        content = sample.prompt if sample.image is None else [{"type": "image"}, {"type": "text", "text": sample.prompt}]
        answer = sample.answer
    ids = tok(format_chat([{"role": "user", "content": content}], cfg.n_image_tokens))
    prompt_len = len(ids)
    image_start = image_labels = image_cells = None
    for part in answer:
        if isinstance(part, str):
            ids += tok(part)
        else:
            if image_start is not None:
                raise ValueError("training samples hold at most one generated image")
            image_start = len(ids)
            ids += [cfg.img_bos_id] + [cfg.code_offset + c for c in codes] + [cfg.img_end_id]
            image_labels = list(codes) + [cfg.n_codes]
            image_cells = np.full((cfg.n_grid + 1, 3), IGNORE, dtype=np.int64)
            if not unconditional:  # without a prompt the cells are not the adapter's to know
                image_cells[:-1] = cell_labels(part, cfg.image_grid)
    ids.append(cfg.eos_token_id)
    text_labels = [IGNORE] * len(ids)
    if train_text and not unconditional:
        for t in range(prompt_len - 1, len(ids) - 1):
            nxt = ids[t + 1]
            if nxt < cfg.n_text_vocab:
                text_labels[t] = nxt
            elif nxt == cfg.img_bos_id:
                text_labels[t] = cfg.n_text_vocab
    return Encoded(ids, text_labels, image_start, image_labels, sample.image, image_cells)


def collate(items: list[Encoded], cfg: ArmorConfig, vision_size: int) -> Batch:
    t = max(len(e.ids) for e in items)
    if t > cfg.context_length:
        raise ValueError(f"a training sequence of {t} tokens exceeds the context of {cfg.context_length}")
    b = len(items)
    ids = torch.full((b, t), cfg.pad_token_id, dtype=torch.long)
    mask = torch.zeros((b, t), dtype=torch.long)
    labels = torch.full((b, t), IGNORE, dtype=torch.long)
    for i, e in enumerate(items):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
        labels[i, : len(e.ids)] = torch.tensor(e.text_labels)
    scenes = [e.input_scene for e in items if e.input_scene is not None]
    pixels = None
    if scenes:
        pixels = torch.from_numpy(np.stack([preprocess(world.render(s, vision_size), vision_size) for s in scenes]))
    rows = [i for i, e in enumerate(items) if e.image_start is not None]
    return Batch(
        ids=ids, attention_mask=mask, position_ids=torch.arange(t)[None].expand(b, t).contiguous(),
        text_labels=labels, pixel_values=pixels, image_rows=torch.tensor(rows, dtype=torch.long),
        image_starts=torch.tensor([items[i].image_start for i in rows], dtype=torch.long),
        image_labels=torch.tensor([items[i].image_labels for i in rows], dtype=torch.long).view(len(rows), cfg.n_grid + 1),
        image_cells=torch.from_numpy(np.stack([items[i].image_cells for i in rows]) if rows
                                     else np.zeros((0, cfg.n_grid + 1, 3), dtype=np.int64)),
    )


def make_batch(rng: np.random.Generator, mix: dict[str, float], batch_size: int, tokenizer, cfg: ArmorConfig,
               code_cache: CodeCache | None, vision_size: int, p_uncond: float = 0.0,
               max_objects: int = world.MAX_OBJECTS, p_text_leads: float = 0.0, p_multi: float = 0.0) -> Batch:
    """Draw `batch_size` training samples with the mode mixture `mix` and collate them.

    `max_objects` caps the objects of the scenes to draw (t2i, t2ti); see world.make_sample.
    `p_uncond`: the share of t2i / t2ti samples with neither prompt nor text (CFG's unconditional
    branch). `p_text_leads`: the share of the other t2ti samples whose prompt is another
    sample's, so their "here is ..." text alone says what to draw: the image learns to follow
    the answer's own text where the two disagree (at inference that text is the model's, and
    sometimes restates the request wrongly). Those samples train no text. `p_multi`: the share
    of t2ti samples that ask for two or three objects (world.make_sample).
    """
    modes = list(mix)
    probs = np.array([mix[m] for m in modes], dtype=np.float64)
    samples = [world.make_sample(rng, str(rng.choice(modes, p=probs / probs.sum())), max_objects=max_objects,
                                 p_multi=p_multi)
               for _ in range(batch_size)]
    uncond = [s.mode in ("t2i", "t2ti") and rng.random() < p_uncond for s in samples]
    leads = [s.mode == "t2ti" and not u and p_text_leads > 0 and rng.random() < p_text_leads
             for s, u in zip(samples, uncond)]
    for i in np.flatnonzero(leads):
        other = world.make_sample(rng, "t2ti", max_objects=max_objects)
        samples[i] = replace(samples[i], prompt=other.prompt, request=other.request)
    out_scenes = [next((p for p in s.answer if not isinstance(p, str)), None) for s in samples]
    wanted = [sc for sc in out_scenes if sc is not None]
    if wanted and code_cache is None:
        raise ValueError("image-generation samples need the VQGAN codes (train the vq stage first)")
    codes = dict(zip(wanted, code_cache(wanted))) if wanted else {}
    items = [encode_sample(s, tokenizer, cfg, codes.get(sc), u, train_text=not lead)
             for s, sc, u, lead in zip(samples, out_scenes, uncond, leads)]
    return collate(items, cfg, vision_size)
