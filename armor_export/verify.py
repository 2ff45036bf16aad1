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
import onnxruntime as ort
import torch
from tqdm import tqdm

from armor_export.graphs import DecoderGraph, TextHeadGraph, VisionEncoderGraph, VisualHeadGraph, VQDecoderGraph
from armor_export.static_decoder import StaticDecoderReference
from runtime.chat import format_chat
from runtime.graphs import GraphSpec
from runtime.image import preprocess, to_unit_range
from training_ref import world
from training_ref.model import ArmorModel

log = logging.getLogger(__name__)

TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (5e-2, 5e-2)}
DECODE_STEPS = 16


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class Comparator:
    """Runs an ORT session and a torch module on the same inputs and keeps the worst error."""

    def __init__(self, sess: ort.InferenceSession, module: torch.nn.Module, spec: GraphSpec, dtype: str):
        self.sess, self.module, self.spec = sess, module, spec
        self.float = np.float16 if dtype == "fp16" else np.float32
        self.atol, self.rtol = TOLERANCES[dtype]
        self.max_abs = 0.0
        self.passed = True
        self.top1_total = self.top1_same = 0

    def run(self, *inputs: torch.Tensor, top1_output: int | None = None, valid=None, valid_rows=None) -> list[np.ndarray]:
        """`valid` [B, T] bool: compare only these positions of output 0; `valid_rows` [B, T]:
        likewise for the other outputs' axis 2 (new key/value rows of a static decoder)."""
        feeds = {name: (t.numpy().astype(self.float) if t.is_floating_point() else t.numpy())
                 for name, t in zip(self.spec.input_names, inputs)}
        got = self.sess.run(self.spec.output_names, feeds)
        with torch.no_grad():
            ref = self.module(*inputs)
        ref = [r.float().numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
        for i, (r, g) in enumerate(zip(ref, got)):
            g = g.astype(np.float32)
            if valid is not None and i == 0:  # only real (non-padding) positions of the main output
                r, g = r[valid], g[valid]
            elif valid_rows is not None and i > 0:
                r, g = r.transpose(0, 2, 1, 3)[valid_rows], g.transpose(0, 2, 1, 3)[valid_rows]
            err = float(np.abs(r - g).max()) if r.size else 0.0
            self.max_abs = max(self.max_abs, err)
            if err > self.atol + self.rtol * float(np.abs(r).max() if r.size else 0.0):
                self.passed = False
            if top1_output == i:
                self.top1_total += r.reshape(-1, r.shape[-1]).shape[0]
                self.top1_same += int((r.reshape(-1, r.shape[-1]).argmax(-1) == g.reshape(-1, g.shape[-1]).argmax(-1)).sum())
        return [torch.from_numpy(g.astype(np.float32)) if g.dtype != np.int64 else torch.from_numpy(g) for g in got]

    def report(self) -> dict:
        out = {"passed": self.passed, "max_abs_diff": self.max_abs, "atol": self.atol, "rtol": self.rtol}
        if self.top1_total:
            out["top1_agreement"] = self.top1_same / self.top1_total
        return out


def verify_bundle(model: ArmorModel, out: Path, specs: dict[str, GraphSpec], dtype: str, tokenizer=None,
                  progress: bool = True) -> dict:
    checks = {}
    model = model.float().eval()
    g = torch.Generator().manual_seed(1234)
    for name in tqdm(specs, desc="verify", disable=not progress):
        path = out / specs[name].filename
        onnx.checker.check_model(str(path), full_check=True)
        static = name == "decoder" and "cache_mask" in specs[name].input_names
        module = StaticDecoderReference(model) if static else _MODULES[name](model)
        cmp = Comparator(session(path), module.eval(), specs[name], dtype)
        (_check_static_decoder if static else _CHECKS[name])(cmp, model, g, tokenizer)
        checks[name] = {**cmp.report(), "onnx_checker": "passed"}
        log.info("%s: %s", name, checks[name])
    text_dir = out / "text"
    if (text_dir / "model.onnx").is_file():
        from armor_export.text_model import verify_text_model

        checks["text_model"] = verify_text_model(model, text_dir, dtype)
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks,
            "decode_steps": DECODE_STEPS, "tolerances": dict(zip(("atol", "rtol"), TOLERANCES[dtype]))}


def _real_scenes(n: int, seed: int = 7) -> list:
    rng = np.random.default_rng(seed)
    return [world.sample_scene(rng) for _ in range(n)]


def _check_vision(cmp: Comparator, model: ArmorModel, g, tokenizer) -> None:
    s = model.mllm.config.vision_config.image_size[0]
    cmp.run(torch.randn(2, 3, s, s, generator=g))
    real = np.stack([preprocess(world.render(sc, s), s) for sc in _real_scenes(2)])
    cmp.run(torch.from_numpy(real))


def _check_text_head(cmp: Comparator, model: ArmorModel, g, tokenizer) -> None:
    h = model.config.hidden_size
    cmp.run(torch.randn(2, 5, h, generator=g), top1_output=0)


def _check_visual_head(cmp: Comparator, model: ArmorModel, g, tokenizer) -> None:
    """An image start (a context of 6 + `<imgbos>`, the second row left-padded by 2, empty
    cache), then single cached code steps continuing from the ONNX cache."""
    cfg = model.config
    heads, h = cfg.adapter_heads, cfg.hidden_size
    past = [torch.zeros(2, heads, 0, h // heads) for _ in range(2 * cfg.adapter_layers)]
    mask = torch.tensor([[1] * 7, [0, 0] + [1] * 5])
    pos = model.image_positions(6)[None].expand(2, 7).contiguous()
    outs = cmp.run(torch.randn(2, 7, h, generator=g), mask, pos, *past, top1_output=0, valid=mask.bool().numpy())
    present = outs[1:]
    for i in range(1, 5):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        pos = torch.full((2, 1), i)
        outs = cmp.run(torch.randn(2, 1, h, generator=g), mask, pos, *present, top1_output=0)
        present = outs[1:]


def _check_vq(cmp: Comparator, model: ArmorModel, g, tokenizer) -> None:
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


def _check_static_decoder(cmp: Comparator, model: ArmorModel, g, tokenizer) -> None:
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


def _check_decoder(cmp: Comparator, model: ArmorModel, g, tokenizer) -> None:
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
