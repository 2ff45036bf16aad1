"""The autoregressive loop: prefill, cached steps, the forward switch, CFG, events.

It knows token ids, the forward switch and sampling; it talks to a model object with the
calls of `runtime.model.BundleModel` (start, start_image, encode_images, decode_image) and
drives the decoder's KV cache only through a stream's operations (append, text_logits, pair,
row, truncate, length; runtime/cache.py), so it cannot tell which engine it runs on.

TEXT: the text head on the last position only. `<imgbos>` -> IMAGE: the conditional stream
takes `<imgbos>`; with guidance the unconditional prompt (empty user turn + `<imgbos>`, as in
training) is prefilled and paired with it into one batch-2 stream. The adapter first reads
the context (every hidden state up to `<imgbos>`); each image step is then one batch-2
decoder call and one batch-2 adapter call (`sequential`), or several codes per call verified
by speculative Jacobi decoding (`jacobi`, runtime/jacobi.py); logits = uncond + scale *
(cond - uncond). A full grid forces `<imgend>`: the conditional row is taken back, the last
code and `<imgend>` are fed, and the loop is back in TEXT. `max_new_tokens` bounds text
tokens; an image, once started, completes (missing codes after an early `<imgend>` are 0),
as in the PyTorch reference.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image

from runtime.chat import format_chat
from runtime.constants import UNCONDITIONAL_MESSAGES
from runtime.errors import InputError, SamplingError
from runtime.image import pixels_to_image, preprocess
from runtime.sampling import Sampler, SamplingParams
from runtime.switch import ForwardSwitch, Mode

log = logging.getLogger(__name__)

IMAGE_DECODING = ("sequential", "jacobi")
JACOBI_INITS = ("above", "repeat", "random")  # how runtime/jacobi.py tops up its window


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


class _Detokenizer:
    """Streams text for a growing list of ids in linear time: only a short window of ids is
    decoded per token (held back while it ends in half a UTF-8 character)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.prefix, self.read = tokenizer, [], 0, 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        return self._advance()

    def _advance(self, final: bool = False) -> str:
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        before = decode(self.ids[self.prefix:self.read])
        after = decode(self.ids[self.prefix:])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> Iterator[TextDelta]:
        """What was held back at the end of a text segment; then a new segment starts."""
        rest = self._advance(final=True) if self.read < len(self.ids) else ""
        self.ids, self.prefix, self.read = [], 0, 0
        if rest:
            yield TextDelta(rest)


# --- the loop ------------------------------------------------------------------------------------
def prepare_prompt(model, tokenizer, messages: list[dict]) -> tuple[list[int], list]:
    """Messages -> prompt ids and the input images (in order)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    images = []
    for m in messages:
        if not isinstance(m, dict):
            raise InputError(f"each message must be a dict with 'role' and 'content', got {type(m).__name__}")
        content = m.get("content", "")
        if isinstance(content, (list, tuple)):
            for part in content:
                if not isinstance(part, dict):
                    raise InputError(f"a content part must be a dict such as {{'type': 'text', 'text': ...}}, "
                                     f"got {type(part).__name__}")
                if part.get("type") == "image":
                    images.append(part.get("image"))
                elif part.get("type") == "text" and not isinstance(part.get("text"), str):
                    raise InputError("a text part needs 'text' as a string")
        elif not isinstance(content, str):
            raise InputError(f"message content must be a string or a list of parts, got {type(content).__name__}")
    try:
        prompt = format_chat(list(messages), model.n_image_tokens)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"bad message: {e}") from e
    try:
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    except (TypeError, UnicodeError) as e:  # e.g. a lone surrogate
        raise InputError(f"the prompt is not valid text ({e.__class__.__name__}): give UTF-8 text") from e
    if len(ids) >= model.context_length:
        raise InputError(f"the prompt is {len(ids)} tokens; the context holds {model.context_length}: shorten it")
    return ids, images


def generate(model, tokenizer, messages: list[dict], *, max_new_tokens: int = 128, cfg_scale: float | None = None,
             sampling: SamplingParams = SamplingParams(), image_decoding: str = "sequential",
             jacobi_window: int = 8, jacobi_init: str = "above", text_processor=None) -> Iterator[Event]:
    """Events of one answer; `cfg_scale` None = the model's default (`model.cfg_scale`).

    `text_processor(i, logits) -> logits`, if given, sees the text-head logits [V + 1] of the
    answer's i-th text token before sampling (as a logits processor does; armor-bench uses it
    to keep a random-weight model talking or to make it start an image)."""
    cfg_scale = model.cfg_scale if cfg_scale is None else cfg_scale
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise SamplingError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)) or not np.isfinite(cfg_scale) \
            or cfg_scale < 0:
        raise SamplingError(f"cfg_scale must be a finite number >= 0 (1 = no guidance), got {cfg_scale!r}")
    if image_decoding not in IMAGE_DECODING:
        raise SamplingError(f"image_decoding must be one of {', '.join(IMAGE_DECODING)}, got {image_decoding!r}")
    if image_decoding == "jacobi" and (isinstance(jacobi_window, bool) or not isinstance(jacobi_window, int)
                                       or not 2 <= jacobi_window <= 64):
        raise SamplingError(f"jacobi_window must be a whole number in 2..64, got {jacobi_window!r}")
    if image_decoding == "jacobi" and jacobi_init not in JACOBI_INITS:
        raise SamplingError(f"jacobi_init must be one of {', '.join(JACOBI_INITS)}, got {jacobi_init!r}")
    t_start = time.perf_counter()
    graph_start = model.graph_seconds()
    timer: dict = {}
    ids, images = prepare_prompt(model, tokenizer, messages)
    space, sampler = model.space, Sampler(sampling)
    n_grid = model.grid[0] * model.grid[1]
    switch = ForwardSwitch(space, n_grid)

    image_embeds = None
    if images:
        t0 = time.perf_counter()
        pixels = np.stack([preprocess(im, model.vision_size) for im in images])
        image_embeds = model.encode_images(pixels)  # [N, n_img, H]
        timer["vision_s"] = time.perf_counter() - t0
        if sum(1 for i in ids if i == model.image_token_id) != image_embeds.shape[0] * image_embeds.shape[1]:
            raise InputError(f"the prompt's image placeholders do not match its {len(images)} images")
    cond = model.start(ids, image_embeds)
    timer["prefill_s"] = time.perf_counter() - t_start
    uncond_ids = tokenizer.encode(format_chat(list(UNCONDITIONAL_MESSAGES), model.n_image_tokens),
                                  add_special_tokens=False).ids + [space.img_bos]
    decode_image = _jacobi_image if image_decoding == "jacobi" else _sequential_image

    detok = _Detokenizer(tokenizer)
    n_text = n_image_tokens = n_images = 0
    t_text = t_image = g_text = g_image = 0.0  # wall and in-graph seconds of text and image steps
    finish = "length"
    while True:
        if n_text >= max_new_tokens:
            break
        if cond.length + 1 >= model.context_length:
            finish = "context"
            break
        t0, g0 = time.perf_counter(), model.graph_seconds()
        logits = cond.text_logits()[0]  # [V + 1], last position only
        if text_processor is not None:
            logits = text_processor(n_text, logits)
        token = space.text_index_to_id(sampler(logits))
        n_text += 1
        if n_text == 1:
            timer["first_token_s"] = time.perf_counter() - t_start
        if token == space.img_bos and cond.length + n_grid + 2 > model.context_length:
            finish = "context"  # no room for <imgbos>, the grid and <imgend>
            break
        if switch.step(token) is Mode.DONE:
            t_text, g_text = t_text + time.perf_counter() - t0, g_text + model.graph_seconds() - g0
            finish = "eos"
            break
        if token != space.img_bos:
            cond.append([token])
            text = detok.add(token)
            t_text, g_text = t_text + time.perf_counter() - t0, g_text + model.graph_seconds() - g0
            if text:
                yield TextDelta(text)
            continue
        t_text, g_text = t_text + time.perf_counter() - t0, g_text + model.graph_seconds() - g0
        yield from detok.flush()
        yield ImageStarted(n_images, n_grid)
        t0, g0 = time.perf_counter(), model.graph_seconds()
        cond.append([token])
        guided = cfg_scale != 1.0
        stream = cond.pair(model.start(uncond_ids)) if guided else cond
        kw = {"window": jacobi_window, "init": jacobi_init} if image_decoding == "jacobi" else {}
        stream, complete = yield from decode_image(model, stream, switch, sampler, cfg_scale, n_images, timer, **kw)
        cond = stream.row(0) if guided else stream
        # the conditional row takes <imgend> (after the last code when the grid is full)
        cond.append([space.n_text_vocab + switch.codes[-1], space.img_end] if complete else [space.img_end])
        t_image, g_image = t_image + time.perf_counter() - t0, g_image + model.graph_seconds() - g0
        n_image_tokens += len(switch.codes) + 2  # <imgbos>, the codes, <imgend>
        codes = np.zeros(n_grid, np.int64)
        codes[: len(switch.codes)] = switch.codes
        t0 = time.perf_counter()
        pixels = model.decode_image(codes.reshape(model.grid)[None])[0]
        timer["vq_decode_s"] = timer.get("vq_decode_s", 0.0) + time.perf_counter() - t0
        yield ImageDone(n_images, pixels_to_image(pixels), codes.reshape(model.grid), complete)
        n_images += 1
    yield from detok.flush()
    if switch.mode is not Mode.DONE:
        switch.finish()
    timer.update(total_s=time.perf_counter() - t_start, text_s=t_text, image_s=t_image, text_graph_s=g_text,
                 image_graph_s=g_image, graph_s=model.graph_seconds() - graph_start)
    if n_text:
        timer["text_tokens_per_s"] = n_text / t_text if t_text else float("inf")
    if n_image_tokens:
        timer["image_tokens_per_s"] = n_image_tokens / t_image
    yield Done(finish, n_text, n_image_tokens, timer)


def guided_logits(logits: np.ndarray, cfg_scale: float, n_codes: int) -> np.ndarray:
    """Visual-head logits [B, ..., n_codes + 2] -> [..., n_codes + 2] after CFG (batch 2:
    uncond + scale * (cond - uncond)), `<imgpad>` masked out (it is never sampled)."""
    out = logits[1] + cfg_scale * (logits[0] - logits[1]) if logits.shape[0] == 2 else logits[0].copy()
    out[..., n_codes + 1] = -np.inf
    return out


def _sequential_image(model, stream, switch, sampler, cfg_scale, index, timer):
    """One code per batch-B decoder + adapter step after `<imgbos>`; -> (stream, complete).

    The stream holds every code but the last one sampled (that one goes with `<imgend>`)."""
    space, n_grid = model.space, model.grid[0] * model.grid[1]
    cursor = model.start_image(stream)
    logits = cursor.prefill()  # [B, n_codes + 2]
    while True:
        token = space.image_index_to_id(sampler(guided_logits(logits, cfg_scale, space.n_codes)))
        switch.step(token)
        if token == space.img_end:
            log.warning("the image ended after %d of %d codes; missing codes set to 0", len(switch.codes), n_grid)
            timer["image_calls"] = timer.get("image_calls", 0) + cursor.calls
            return stream, False
        yield ImageProgress(index, len(switch.codes), n_grid)
        if switch.grid_full:  # <imgend> is forced, not sampled
            timer["image_calls"] = timer.get("image_calls", 0) + cursor.calls
            return stream, True
        logits = cursor.append(stream.append([token]))[:, -1]


def _jacobi_image(model, stream, switch, sampler, cfg_scale, index, timer, window: int = 8, init: str = "above"):
    from runtime.jacobi import jacobi_image

    return (yield from jacobi_image(model, stream, switch, sampler, cfg_scale, index, timer, window, init))
