"""Numerical verification of an exported bundle against the PyTorch reference.

Every graph runs in ONNX Runtime (CPU) on fresh random *and* real inputs (world images,
their VQGAN codes, tokenized prompts) and is compared with PyTorch:

    passed  <=>  max |onnx - torch| <= atol + rtol * max |torch|

with (atol, rtol) = (1e-4, 1e-3) for fp32 bundles and (5e-2, 5e-2) for fp16. The decoder is
checked through a prefill plus 16 cached decode steps, at batch 1 and on a batch-2
left-padded pair (only real positions compared); logits are also compared by top-1. A
static-cache decoder is compared with the reference decoder over the filled slots
(`StaticDecoderReference`), its new key/value rows written into a fixed-capacity cache.
`onnx.checker` runs its full check on every graph. This module knows the graph wrappers
and ORT sessions, not the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from armor_export.compare import TOLERANCES, Comparator, session
from armor_export.graphs import (DecoderGraph, TextHeadGraph, TextModelGraph, VisionEncoderGraph, VisualHeadGraph,
                                 VQDecoderGraph)
from armor_export.static_decoder import StaticDecoderReference
from armor_export.text_model import text_spec
from runtime.chat import format_chat
from runtime.graphs import GraphSpec
from runtime.image import preprocess, to_unit_range
from training_ref import world
from training_ref.model import ArmorModel

log = logging.getLogger(__name__)

DECODE_STEPS = 16


class TorchCheck:
    """Runs an ORT session and a torch module on the same inputs; the comparator keeps the
    worst error (armor_export.compare)."""

    def __init__(self, sess, module: torch.nn.Module, spec: GraphSpec, dtype: str):
        self.sess, self.module, self.spec = sess, module, spec
        self.float = np.float16 if dtype == "fp16" else np.float32
        self.comparator = Comparator(dtype)

    def run(self, *inputs: torch.Tensor, **check) -> list[torch.Tensor]:
        """Both engines on `inputs`; returns the ONNX outputs (as tensors), compared with `check`'s
        options (top1_output, valid, valid_rows)."""
        feeds = {name: (t.numpy().astype(self.float) if t.is_floating_point() else t.numpy())
                 for name, t in zip(self.spec.input_names, inputs)}
        got = self.sess.run(self.spec.output_names, feeds)
        with torch.no_grad():
            ref = self.module(*inputs)
        ref = [r.float().numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
        self.comparator.check(ref, got, **check)
        return [torch.from_numpy(g.astype(np.float32)) if g.dtype != np.int64 else torch.from_numpy(g) for g in got]

    def report(self) -> dict:
        return self.comparator.report()


def verify_bundle(model: ArmorModel, out: Path, specs: dict[str, GraphSpec], dtype: str, tokenizer=None,
                  progress: bool = True, text_model: bool = False) -> dict:
    """Every graph in `specs`, and `text/model.onnx` when `text_model` (written by this export)."""
    checks = {}
    model = model.float().eval()
    g = torch.Generator().manual_seed(1234)
    for name in tqdm(specs, desc="verify", disable=not progress):
        path = out / specs[name].filename
        onnx.checker.check_model(str(path), full_check=True)
        static = name == "decoder" and "cache_mask" in specs[name].input_names
        module = StaticDecoderReference(model) if static else _MODULES[name](model)
        cmp = TorchCheck(session(path), module.eval(), specs[name], dtype)
        (_check_static_decoder if static else _CHECKS[name])(cmp, model, g, tokenizer)
        checks[name] = {**cmp.report(), "onnx_checker": "passed"}
        log.info("%s: %s", name, checks[name])
    if text_model:
        checks["text_model"] = verify_text_model(model, out / "text", dtype)
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks,
            "decode_steps": DECODE_STEPS, "tolerances": dict(zip(("atol", "rtol"), TOLERANCES[dtype]))}


def _real_scenes(n: int, seed: int = 7) -> list:
    rng = np.random.default_rng(seed)
    return [world.sample_scene(rng) for _ in range(n)]


def _check_vision(cmp: TorchCheck, model: ArmorModel, g, tokenizer) -> None:
    s = model.mllm.config.vision_config.image_size[0]
    cmp.run(torch.randn(2, 3, s, s, generator=g))
    real = np.stack([preprocess(world.render(sc, s), s) for sc in _real_scenes(2)])
    cmp.run(torch.from_numpy(real))


def _check_text_head(cmp: TorchCheck, model: ArmorModel, g, tokenizer) -> None:
    cmp.run(torch.randn(2, 5, model.config.state_width, generator=g), top1_output=0)


def _check_visual_head(cmp: TorchCheck, model: ArmorModel, g, tokenizer) -> None:
    """An image start (a context of 6 + `<imgbos>`, the second row left-padded by 2, empty
    cache), then single cached code steps continuing from the ONNX cache."""
    cfg = model.config
    heads, h, w = cfg.adapter_heads, cfg.hidden_size, cfg.state_width
    past = [torch.zeros(2, heads, 0, h // heads) for _ in range(2 * cfg.adapter_layers)]
    mask = torch.tensor([[1] * 7, [0, 0] + [1] * 5])
    pos = model.image_positions(6)[None].expand(2, 7).contiguous()
    outs = cmp.run(torch.randn(2, 7, w, generator=g), mask, pos, *past, top1_output=0, valid=mask.bool().numpy())
    present = outs[1:]
    for i in range(1, 5):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        pos = torch.full((2, 1), i)
        outs = cmp.run(torch.randn(2, 1, w, generator=g), mask, pos, *present, top1_output=0)
        present = outs[1:]


def _check_vq(cmp: TorchCheck, model: ArmorModel, g, tokenizer) -> None:
    gh, gw = model.config.image_grid
    cmp.run(torch.randint(0, model.config.n_codes, (2, gh, gw), generator=g))
    res = model.config.vqgan["resolution"]
    pixels = torch.from_numpy(np.stack([to_unit_range(world.render(sc, res), res) for sc in _real_scenes(2)]))
    with torch.no_grad():
        cmp.run(model.vqgan.encode(pixels))


def _decoder_cases(model: ArmorModel, g, tokenizer):
    """Random ids at batch 1 and as a batch-2 left-padded pair, then a real chat prompt (random
    ids when no tokenizer is given): (ids [B, T], left-padding mask [B, T], positions [B, T])."""
    cfg = model.config
    cases = [torch.randint(10, cfg.n_text_vocab, (1, 12), generator=g),
             torch.randint(10, cfg.n_text_vocab, (2, 12), generator=g)]
    if tokenizer is not None:
        prompt = format_chat([{"role": "user", "content": "draw a large red circle at the top left."}], 0)
        cases.append(torch.tensor([tokenizer.encode(prompt, add_special_tokens=False).ids]))
    for ids in cases:
        b, t = ids.shape
        lengths = [t] if b == 1 else [t, t - 4]
        mask = torch.zeros(b, t, dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, t - n:] = 1  # left padding
        yield ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


def _next_embeds(model: ArmorModel, hidden: torch.Tensor) -> torch.Tensor:
    """The greedy next text token's embedding [B, 1, H] after the newest hidden state."""
    with torch.no_grad():
        nxt = model.text_logits(hidden[:, -1:]).argmax(-1).clamp(max=model.config.n_text_vocab - 1)  # [B, 1]
        return model.embed(nxt)


def _check_static_decoder(cmp: TorchCheck, model: ArmorModel, g, tokenizer) -> None:
    """The static-cache decoder over the same cases: prefill into an empty fixed-capacity cache,
    then DECODE_STEPS greedy steps, each step's new key/value rows written at the next slot."""
    text = model.mllm.config.text_config
    kv, hd, n_layers = text.num_key_value_heads, model.config.head_dim, text.num_hidden_layers
    capacity = cmp.spec.inputs[cmp.spec.input_names.index("cache_mask")].axes[1]
    for ids, mask, pos in _decoder_cases(model, g, tokenizer):
        b, t = ids.shape
        cache = [torch.zeros(b, kv, capacity, hd) for _ in range(2 * n_layers)]
        cache_mask = torch.zeros(b, capacity, dtype=torch.long)
        with torch.no_grad():
            x = model.embed(ids)
        new_mask, width = mask, 0
        for _ in range(DECODE_STEPS + 1):
            valid = new_mask.bool().numpy()
            outs = cmp.run(x, new_mask, cache_mask, pos, *cache, valid=valid, valid_rows=valid)
            n = x.shape[1]
            for buf, rows in zip(cache, outs[1:]):
                buf[:, :, width:width + n] = rows
            cache_mask[:, width:width + n] = new_mask
            width += n
            x, new_mask, pos = _next_embeds(model, outs[0]), torch.ones(b, 1, dtype=torch.long), pos[:, -1:] + 1


def _check_decoder(cmp: TorchCheck, model: ArmorModel, g, tokenizer) -> None:
    """Prefill + DECODE_STEPS greedy steps over `_decoder_cases`."""
    text = model.mllm.config.text_config
    kv, hd = text.num_key_value_heads, model.config.head_dim
    for ids, mask, pos in _decoder_cases(model, g, tokenizer):
        b, t = ids.shape
        past = [torch.zeros(b, kv, 0, hd) for _ in range(2 * text.num_hidden_layers)]
        with torch.no_grad():
            x = model.embed(ids)
        outs = cmp.run(x, mask, pos, *past, valid=mask.bool().numpy())
        for _ in range(DECODE_STEPS):
            hidden, present = outs[0], outs[1:]
            x = _next_embeds(model, hidden)
            mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.long)], 1)
            pos = pos[:, -1:] + 1
            outs = cmp.run(x, mask, pos, *present)


_MODULES = {"vision_encoder": VisionEncoderGraph, "decoder": DecoderGraph, "text_head": TextHeadGraph,
            "visual_head": VisualHeadGraph, "vq_decoder": VQDecoderGraph}
_CHECKS = {"vision_encoder": _check_vision, "decoder": _check_decoder, "text_head": _check_text_head,
           "visual_head": _check_visual_head, "vq_decoder": _check_vq}


def verify_text_model(model: ArmorModel, text_dir: Path, dtype: str) -> dict:
    """Prefill + cached greedy steps through text/model.onnx against PyTorch."""
    spec = text_spec(model)
    t = model.mllm.config.text_config
    kv, hd = t.num_key_value_heads, model.config.head_dim
    cmp = TorchCheck(session(text_dir / "model.onnx"), TextModelGraph(model).eval(), spec, dtype)
    g = torch.Generator().manual_seed(99)
    ids = torch.randint(10, model.config.n_text_vocab, (1, 10), generator=g)
    mask, pos = torch.ones(1, 10, dtype=torch.long), torch.arange(10)[None]
    outs = cmp.run(ids, mask, pos, *[torch.zeros(1, kv, 0, hd) for _ in range(2 * t.num_hidden_layers)], top1_output=0)
    for _ in range(DECODE_STEPS):
        nxt = torch.from_numpy(np.asarray(outs[0][:, -1:].argmax(-1)))
        mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], 1)
        pos = pos[:, -1:] + 1
        outs = cmp.run(nxt, mask, pos, *outs[1:], top1_output=0)
    return {**cmp.report(), "onnx_checker": "not run (checked by onnxruntime at load)"}
