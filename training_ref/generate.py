"""Reference generation in PyTorch: the oracle every export and the runtime are checked against.

Simple and obviously right rather than fast: batch 1, the conditional and unconditional
sequences as two separate streams with their own caches (the runtime batches them), the
forward switch from `runtime.switch`, the sampler from `runtime.sampling` (so that the same
seed gives the same tokens everywhere).

Classifier-free guidance: the unconditional branch is the same chat template with an
*empty* user message, then `<imgbos>` and the codes generated so far; training drops the
condition to exactly that sequence (train.py), so the model knows both distributions.
Image logits are `uncond + scale * (cond - uncond)`; scale 1 disables guidance; by default
the scale is the checkpoint's `cfg_scale`.

`max_new_tokens` bounds text tokens; an image, once started, always completes its grid
(or ends at `<imgend>`). An image ended early by `<imgend>` has its missing codes set to 0.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from PIL import Image
from transformers import DynamicCache

from runtime.chat import format_chat
from runtime.errors import InputError, SamplingError
from runtime.constants import UNCONDITIONAL_MESSAGES
from runtime.image import pixels_to_image, preprocess
from runtime.sampling import Sampler, SamplingParams
from runtime.switch import ForwardSwitch, Mode, TokenSpace
from training_ref.model import ArmorModel

log = logging.getLogger(__name__)

def token_space(model: ArmorModel) -> TokenSpace:
    c = model.config
    return TokenSpace(c.n_text_vocab, c.n_codes, c.img_bos_id, c.img_end_id, c.img_pad_id, c.eos_token_id)


def split_messages(messages: list[dict]) -> tuple[list[dict], list]:
    """Pull the images out of the content parts, in order; keep the messages as they are."""
    images = []
    for m in messages:
        if isinstance(m.get("content"), list):
            images += [part["image"] for part in m["content"] if part.get("type") == "image"]
    return messages, images


class _Stream:
    """One sequence through the decoder with its KV cache; `last` is the newest hidden state,
    `hidden` all of them (an image's adapter reads the context before its `<imgbos>`)."""

    def __init__(self, model: ArmorModel, ids: list[int], image_embeds: torch.Tensor | None = None):
        self.model, self.cache, self.length = model, DynamicCache(), 0
        self.hidden = []  # [1, T_i, H] per feed
        self.feed(ids, image_embeds)

    def feed(self, ids: list[int], image_embeds: torch.Tensor | None = None) -> None:
        x = self.model.embed(torch.tensor([ids]), image_embeds)  # [1, T, H]
        pos = torch.arange(self.length, self.length + len(ids))[None]
        hidden, self.cache = self.model.decode(x, position_ids=pos, cache=self.cache)
        self.hidden.append(hidden)
        self.last = hidden[:, -1:]  # [1, 1, H]
        self.length += len(ids)

    def image_logits(self, step: int, past: list | None):
        """Visual-head logits [1, 1, n_codes + 2] at segment position `step`; at step 0
        (`<imgbos>` just fed) the adapter first reads the whole context."""
        if step == 0:
            hidden = torch.cat(self.hidden, 1)  # [1, L, H], the last one is `<imgbos>`
            positions = self.model.image_positions(hidden.shape[1] - 1)
        else:
            hidden, positions = self.last, self.model.image_positions(0, step)
        logits, past = self.model.image_logits(hidden, positions[None], past)
        return logits[:, -1:], past


@torch.no_grad()
def generate(model: ArmorModel, tokenizer, messages: list[dict], *, max_new_tokens: int = 128,
             cfg_scale: float | None = None, sampling: SamplingParams = SamplingParams(),
             return_ids: bool = False, text_processor=None, timings: dict | None = None,
             stop_at_image: bool = False):
    """Answer `messages` (chat shape; image parts as PIL images, paths or arrays) with the
    interleaved list of strings and PIL images. With `return_ids`, also the generated ids.
    `text_processor(i, logits) -> logits` edits the text logits of answer token i before
    sampling (as the runtime's does); `timings`, if given, is filled with first_token_s,
    text_s, image_s, text_tokens and image_tokens (the runtime's definitions)."""
    t_start = time.perf_counter()
    cfg = model.config
    cfg_scale = cfg.cfg_scale if cfg_scale is None else cfg_scale
    if max_new_tokens < 1:
        raise SamplingError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not np.isfinite(cfg_scale) or cfg_scale < 0:
        raise SamplingError(f"cfg_scale must be a finite number >= 0 (1 = no guidance), got {cfg_scale}")
    messages, images = split_messages(messages)
    ids = tokenizer.encode(format_chat(messages, cfg.n_image_tokens), add_special_tokens=False).ids
    if len(ids) >= cfg.context_length:
        raise InputError(f"the prompt is {len(ids)} tokens; the context holds {cfg.context_length}: shorten it")
    image_embeds = None
    if images:
        size = model.mllm.config.vision_config.image_size[0]
        pixels = torch.from_numpy(np.stack([preprocess(im, size) for im in images]))
        image_embeds = model.encode_images(pixels)

    space, sampler = token_space(model), Sampler(sampling)
    switch = ForwardSwitch(space, cfg.n_grid)
    uncond_ids = tokenizer.encode(format_chat(UNCONDITIONAL_MESSAGES, cfg.n_image_tokens),
                                  add_special_tokens=False).ids + [cfg.img_bos_id]
    cond = _Stream(model, ids, image_embeds)
    out, text, generated, n_text = [], [], [], 0
    clock = {"text_s": 0.0, "image_s": 0.0, "image_tokens": 0}

    def flush_text():
        if text:
            s = tokenizer.decode(text, skip_special_tokens=True).strip()
            if s:
                out.append(s)
            text.clear()

    while switch.mode is not Mode.DONE:
        if n_text >= max_new_tokens or cond.length + 1 >= cfg.context_length:
            switch.finish()
            break
        t0 = time.perf_counter()
        logits = model.text_logits(cond.last)[0, -1].float().numpy()  # [V + 1]
        if text_processor is not None:
            logits = text_processor(n_text, logits)
        token = space.text_index_to_id(sampler(logits))
        n_text += 1
        if n_text == 1:
            clock["first_token_s"] = time.perf_counter() - t_start
        if token == cfg.img_bos_id and cond.length + cfg.n_grid + 2 > cfg.context_length:
            log.warning("no room left in the context for an image: stopping")
            switch.finish()
            break
        generated.append(token)
        if token == cfg.img_bos_id and stop_at_image:  # the ids end with `<imgbos>`, the answer before it
            clock["text_s"] += time.perf_counter() - t0
            break
        if switch.step(token) is Mode.DONE:
            clock["text_s"] += time.perf_counter() - t0
            break
        if token != cfg.img_bos_id:
            text.append(token)
            cond.feed([token])
            clock["text_s"] += time.perf_counter() - t0
            continue
        clock["text_s"] += time.perf_counter() - t0
        flush_text()
        t0 = time.perf_counter()
        cond.feed([token])
        codes = _generate_image(model, cond, uncond_ids, switch, space, sampler, cfg_scale, generated)
        clock["image_s"] += time.perf_counter() - t0
        clock["image_tokens"] += len(switch.codes) + 2
        out.append(_decode_codes(model, codes))
    flush_text()
    if timings is not None:
        timings.update(clock, text_tokens=n_text)
    return (out, generated) if return_ids else out


def _generate_image(model, cond, uncond_ids, switch, space, sampler, cfg_scale, generated) -> list[int]:
    cfg = model.config
    guided = cfg_scale != 1.0
    uncond = _Stream(model, uncond_ids) if guided else None
    past_c = past_u = None
    for i in range(cfg.n_grid):
        logits, past_c = cond.image_logits(i, past_c)  # [1, 1, n_codes + 2]
        if guided:
            logits_u, past_u = uncond.image_logits(i, past_u)
            logits = logits_u + cfg_scale * (logits - logits_u)
        logits = logits[0, -1].float().numpy()
        logits[cfg.n_codes + 1] = -np.inf  # <imgpad> is never sampled
        token = space.image_index_to_id(sampler(logits))
        generated.append(token)
        switch.step(token)
        if token == cfg.img_end_id:
            log.warning("the image ended after %d of %d codes; missing codes set to 0", i, cfg.n_grid)
            cond.feed([token])
            break
        if switch.grid_full:  # the grid is full: <imgend> is forced, not sampled
            generated.append(cfg.img_end_id)
            cond.feed([token, cfg.img_end_id])
            break
        cond.feed([token])
        if guided:
            uncond.feed([token])
    codes = list(switch.codes)
    return codes + [0] * (cfg.n_grid - len(codes))


def _decode_codes(model: ArmorModel, codes: list[int]) -> Image.Image:
    h, w = model.config.image_grid
    pixels = model.vqgan.decode(torch.tensor(codes).view(1, h, w))  # [1, 3, H, W]
    return pixels_to_image(pixels[0].float().numpy())
