"""The autoregressive loop: prefill, cached decode steps, the forward switch, CFG, events.

It knows token ids, embeddings and KV caches as numpy arrays in the declared layout
[batch, heads, sequence, head_dim]; it talks to a model object with the calls of
`engine.BundleModel` (embed, encode_images, decode, text_logits, image_logits,
decode_image, empty_past, empty_adapter_past) and knows nothing about backends. A decoder
cache may also come back as opaque values with `.numpy()` (the engine's IO-binding path):
the loop only hands them back to `decode`, and takes them to numpy where it slices or
concatenates a cache (an image's start and end).

TEXT: the text head on the last position only. `<imgbos>` -> IMAGE: the conditional stream
takes `<imgbos>`; the unconditional prompt (empty user turn + `<imgbos>`, as in training) is
prefilled; the two caches are merged into one batch-2 cache, the shorter one left-padded
(masked, with its own positions). The adapter first reads the context: the decoder hidden
states of every token up to `<imgbos>` (a stream keeps them for this); every image step is
then one batch-2 decoder call and one batch-2 adapter call; logits = uncond + scale *
(cond - uncond). A full grid forces
`<imgend>`: the conditional row of the cache is kept, the last code and `<imgend>` are fed,
and the loop is back in TEXT. `max_new_tokens` bounds text tokens; an image, once started,
completes (missing codes after an early `<imgend>` are 0), as in the PyTorch reference.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image

from runtime.chat import format_chat
from runtime.errors import InputError, SamplingError
from runtime.image import pixels_to_image, preprocess
from runtime.sampling import Sampler, SamplingParams
from runtime.switch import ForwardSwitch, Mode

log = logging.getLogger(__name__)

UNCONDITIONAL_MESSAGES = [{"role": "user", "content": ""}]


# --- events ------------------------------------------------------------------------------------
@dataclass
class TextDelta:
    text: str


@dataclass
class ImageStarted:
    index: int
    total_codes: int


@dataclass
class ImageProgress:
    index: int
    done: int
    total: int


@dataclass
class ImageDone:
    index: int
    image: Image.Image
    codes: np.ndarray  # [h, w]
    complete: bool


@dataclass
class Done:
    finish_reason: str  # "eos", "length" or "context"
    text_tokens: int
    image_tokens: int
    timings: dict = field(default_factory=dict)


Event = TextDelta | ImageStarted | ImageProgress | ImageDone | Done


# --- the stream of one sequence ------------------------------------------------------------------
class _Stream:
    """A batch of sequences sharing one cache: mask [B, L], next positions [B], last hidden,
    and every hidden state so far (`hidden`, pieces of [B, T, H]: an image's context)."""

    def __init__(self, model, embeds: np.ndarray, timer: dict):
        self.model, self.timer = model, timer
        b = embeds.shape[0]
        self.mask = np.ones((b, 0), np.int64)
        self.next_pos = np.zeros(b, np.int64)
        self.past = model.empty_past(b)
        self.hidden: list[np.ndarray] = []
        self.feed_embeds(embeds)

    def feed_embeds(self, embeds: np.ndarray) -> None:
        b, t = embeds.shape[:2]
        pos = self.next_pos[:, None] + np.arange(t)[None]  # [B, T]
        self.mask = np.concatenate([self.mask, np.ones((b, t), np.int64)], 1)
        t0 = time.perf_counter()
        hidden, self.past = self.model.decode(embeds, self.mask, pos, self.past)
        self.timer["decoder_s"] = self.timer.get("decoder_s", 0.0) + time.perf_counter() - t0
        self.hidden.append(hidden)
        self.last = hidden[:, -1:]  # [B, 1, H]
        self.next_pos = self.next_pos + t

    def feed(self, ids: list[int]) -> None:
        """The same ids appended to every row."""
        b = self.mask.shape[0]
        self.feed_embeds(self.model.embed(np.tile(np.asarray(ids, np.int64)[None], (b, 1))))

    @property
    def length(self) -> int:
        return self.mask.shape[1]


def _host(past: list) -> list[np.ndarray]:
    """A cache as numpy: device values (IO binding) are copied to the host."""
    return [p if isinstance(p, np.ndarray) else p.numpy() for p in past]


def _merge_for_cfg(cond: _Stream, uncond: _Stream) -> _Stream:
    """Stack cond (row 0) and uncond (row 1) into one batch-2 stream, uncond left-padded."""
    pad = cond.length - uncond.length
    if pad < 0:
        raise RuntimeError("the unconditional prompt is longer than the conditional sequence")
    merged = object.__new__(_Stream)
    merged.model, merged.timer = cond.model, cond.timer
    padded = [np.concatenate([np.zeros(u.shape[:2] + (pad,) + u.shape[3:], u.dtype), u], 2)
              for u in _host(uncond.past)]
    merged.past = [np.concatenate([c, u], 0) for c, u in zip(_host(cond.past), padded)]
    merged.mask = np.concatenate([cond.mask, np.concatenate([np.zeros((1, pad), np.int64), uncond.mask], 1)], 0)
    merged.next_pos = np.concatenate([cond.next_pos, uncond.next_pos])
    merged.last = np.concatenate([cond.last, uncond.last], 0)
    hu = np.concatenate(uncond.hidden, 1)  # [1, Lu, H]
    hu = np.concatenate([np.zeros((1, pad, hu.shape[2]), hu.dtype), hu], 1)
    merged.hidden = [np.concatenate([np.concatenate(cond.hidden, 1), hu], 0)]  # [2, Lc, H]
    return merged


def _row(stream: _Stream, i: int) -> _Stream:
    """Row i of a batched stream as a batch-1 stream (row 0 of a CFG pair is never padded)."""
    out = object.__new__(_Stream)
    out.model, out.timer = stream.model, stream.timer
    out.past = [np.ascontiguousarray(p[i:i + 1]) for p in _host(stream.past)]
    out.mask, out.next_pos, out.last = stream.mask[i:i + 1], stream.next_pos[i:i + 1], stream.last[i:i + 1]
    out.hidden = [h[i:i + 1] for h in stream.hidden]
    return out


def adapter_positions(context_start: int, mask: np.ndarray, n_segment: int) -> np.ndarray:
    """Adapter positions [B, L] for tokens whose attention mask is `mask` [B, L]: the first
    L - n_segment are context (token j of a row, left padding skipped, at context_start + j),
    the last n_segment the image segment (`<imgbos>` = 0, then its codes 1, 2, ...)."""
    context = context_start + np.maximum(np.cumsum(mask[:, : mask.shape[1] - n_segment], 1) - 1, 0)
    return np.concatenate([context, np.broadcast_to(np.arange(n_segment), (mask.shape[0], n_segment))], 1)


class _AdapterCursor:
    """The adapter's side of one image over a stream that has just taken `<imgbos>`: the first
    call reads the context (every hidden state so far), later calls one code each. The
    adapter's keys are the stream's tokens, so the stream's attention mask is also its mask."""

    def __init__(self, model, stream: _Stream):
        self.model, self.stream = model, stream
        context = np.concatenate(stream.hidden, 1)  # [B, L, H]: every token up to `<imgbos>`
        stream.hidden = [context]
        self.hidden, self.segment = context, 0  # segment position of the newest input
        self.pos = adapter_positions(model.context_start, stream.mask, 1)
        self.past = model.empty_adapter_past(stream.mask.shape[0])

    def logits(self) -> np.ndarray:
        """Visual-head logits [B, n_codes + 2] for the next code."""
        logits, self.past = self.model.image_logits(self.hidden, self.stream.mask, self.pos, self.past)
        return logits[:, -1]

    def advance(self) -> None:
        """After the stream took the sampled code: that code's hidden state is the next input."""
        self.segment += 1
        self.hidden = self.stream.last
        self.pos = np.full((self.hidden.shape[0], 1), self.segment, np.int64)


# --- the loop ------------------------------------------------------------------------------------
def prepare_prompt(model, tokenizer, messages: list[dict]) -> tuple[list[int], list]:
    """Messages -> prompt ids and the input images (in order)."""
    if not isinstance(messages, list) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    images = []
    for m in messages:
        if not isinstance(m, dict):
            raise InputError("each message must be a dict with 'role' and 'content'")
        if isinstance(m.get("content"), list):
            images += [part.get("image") for part in m["content"] if part.get("type") == "image"]
    try:
        prompt = format_chat(messages, model.n_image_tokens)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"bad message: {e}") from e
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    if len(ids) >= model.context_length:
        raise InputError(f"the prompt is {len(ids)} tokens; the context holds {model.context_length}: shorten it")
    return ids, images


def generate(model, tokenizer, messages: list[dict], *, max_new_tokens: int = 128, cfg_scale: float | None = None,
             sampling: SamplingParams = SamplingParams()) -> Iterator[Event]:
    """Events of one answer; `cfg_scale` None = the model's default (`model.cfg_scale`)."""
    cfg_scale = model.cfg_scale if cfg_scale is None else cfg_scale
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise SamplingError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens}")
    if not np.isfinite(cfg_scale) or cfg_scale < 0:
        raise SamplingError(f"cfg_scale must be a finite number >= 0 (1 = no guidance), got {cfg_scale}")
    t_start = time.perf_counter()
    timer: dict = {}
    ids, images = prepare_prompt(model, tokenizer, messages)
    space, sampler = model.space, Sampler(sampling)
    n_grid = model.grid[0] * model.grid[1]
    switch = ForwardSwitch(space, n_grid)

    embeds = model.embed(np.asarray([ids], np.int64))  # [1, T, H]
    if images:
        t0 = time.perf_counter()
        pixels = np.stack([preprocess(im, model.vision_size) for im in images])
        image_embeds = model.encode_images(pixels)  # [N, n_img, H]
        timer["vision_s"] = time.perf_counter() - t0
        slots = np.flatnonzero(np.asarray(ids) == model.image_token_id)
        if len(slots) != image_embeds.shape[0] * image_embeds.shape[1]:
            raise InputError(f"{len(slots)} image placeholders for {len(images)} images")
        embeds[0, slots] = image_embeds.reshape(-1, embeds.shape[-1])
    cond = _Stream(model, embeds, timer)
    timer["prefill_s"] = time.perf_counter() - t_start
    uncond_ids = tokenizer.encode(format_chat(UNCONDITIONAL_MESSAGES, model.n_image_tokens),
                                  add_special_tokens=False).ids + [space.img_bos]

    text_ids: list[int] = []
    emitted = ""
    n_text = n_image_tokens = n_images = 0
    t_text = t_image = 0.0
    finish = "length"
    while True:
        if n_text >= max_new_tokens:
            break
        if cond.length + 1 >= model.context_length:
            finish = "context"
            break
        t0 = time.perf_counter()
        logits = model.text_logits(cond.last)[0, -1]  # [V + 1], last position only
        token = space.text_index_to_id(sampler(logits))
        n_text += 1
        if n_text == 1:
            timer["first_token_s"] = time.perf_counter() - t_start
        if token == space.img_bos and cond.length + n_grid + 2 > model.context_length:
            finish = "context"  # no room for <imgbos>, the grid and <imgend>
            break
        if switch.step(token) is Mode.DONE:
            t_text += time.perf_counter() - t0
            finish = "eos"
            break
        if token != space.img_bos:
            text_ids.append(token)
            cond.feed([token])
            t_text += time.perf_counter() - t0
            full = tokenizer.decode(text_ids, skip_special_tokens=True)
            if not full.endswith("\ufffd") and len(full) > len(emitted):  # hold back half a character
                yield TextDelta(full[len(emitted):])
                emitted = full
            continue
        t_text += time.perf_counter() - t0
        yield from _flush(tokenizer, text_ids, emitted)
        text_ids, emitted = [], ""
        yield ImageStarted(n_images, n_grid)
        t0 = time.perf_counter()
        cond.feed([token])
        cond, codes, complete = yield from _image(model, tokenizer, cond, uncond_ids, switch, sampler, cfg_scale,
                                                  n_images, timer)
        t_image += time.perf_counter() - t0
        n_image_tokens += n_grid + 2
        t0 = time.perf_counter()
        pixels = model.decode_image(codes[None])[0]
        timer["vq_decode_s"] = timer.get("vq_decode_s", 0.0) + time.perf_counter() - t0
        yield ImageDone(n_images, pixels_to_image(pixels), codes, complete)
        n_images += 1
    yield from _flush(tokenizer, text_ids, emitted)
    if switch.mode is not Mode.DONE:
        switch.finish()
    timer.update(total_s=time.perf_counter() - t_start, text_s=t_text, image_s=t_image)
    if n_text:
        timer["text_tokens_per_s"] = n_text / t_text if t_text else float("inf")
    if n_image_tokens:
        timer["image_tokens_per_s"] = n_image_tokens / t_image
    yield Done(finish, n_text, n_image_tokens, timer)


def _flush(tokenizer, text_ids: list[int], emitted: str) -> Iterator[TextDelta]:
    """Whatever text was held back (an incomplete character) at the end of a text segment."""
    full = tokenizer.decode(text_ids, skip_special_tokens=True)
    if len(full) > len(emitted):
        yield TextDelta(full[len(emitted):])


def _image(model, tokenizer, cond: _Stream, uncond_ids, switch, sampler, cfg_scale, index, timer):
    """IMAGE mode after `<imgbos>` was fed to `cond`; returns (batch-1 cond stream, codes [h, w], complete)."""
    space, n_grid = model.space, model.grid[0] * model.grid[1]
    guided = cfg_scale != 1.0
    stream = _merge_for_cfg(cond, _Stream(model, model.embed(np.asarray([uncond_ids], np.int64)), timer)) \
        if guided else cond
    adapter = _AdapterCursor(model, stream)
    complete = True
    for i in range(n_grid):
        t0 = time.perf_counter()
        logits = adapter.logits()  # [B, n_codes + 2]
        timer["adapter_s"] = timer.get("adapter_s", 0.0) + time.perf_counter() - t0
        if guided:
            logits = logits[1] + cfg_scale * (logits[0] - logits[1])
        else:
            logits = logits[0]
        logits[space.n_codes + 1] = -np.inf  # <imgpad> is never sampled
        token = space.image_index_to_id(sampler(logits))
        switch.step(token)
        if token != space.img_end:
            yield ImageProgress(index, len(switch.codes), n_grid)
        if token == space.img_end:
            log.warning("the image ended after %d of %d codes; missing codes set to 0", i, n_grid)
            cond = _row(stream, 0)
            cond.feed([token])
            complete = False
            break
        if switch.grid_full:  # <imgend> is forced, not sampled
            cond = _row(stream, 0)
            cond.feed([token, space.img_end])
            break
        stream.feed([token])
        adapter.advance()
    codes = np.zeros(n_grid, np.int64)
    codes[: len(switch.codes)] = switch.codes
    return cond, codes.reshape(model.grid), complete
