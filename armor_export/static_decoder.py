"""Export-only: the reference decoder rewritten for a fixed-capacity KV cache (the `static` form).

The reference model's decoder concatenates each layer's past with the new keys and values
(transformers' `DynamicCache`). The static graph instead reads a preallocated cache
`[B, kv_heads, capacity, D]` that it never copies and returns only the new tokens' key/value
rows; the runtime writes them into its buffer in place. Attention is computed in two parts
and joined at the scores (small), not at the cache (large):

    scores = [q . K_cache^T | q . K_new^T]  (+ mask)  -> softmax ->  p_cache . V_cache + p_new . V_new

Queries are grouped by key/value head (`[B, kv, groups * T, D]`), so grouped-query attention
needs no repeated copy of the cache either. Masks: `cache_mask [B, capacity]` (1 = filled
slot) and `attention_mask [B, T]` over the new tokens (0 = left padding), causal among the
new tokens. The layer weights are the reference model's own modules (norms, projections,
rotary embedding, MLP), so this file holds no parameters; it is checked numerically against
the reference decoder by verify.py. It knows Qwen2 / Llama / Qwen3-style decoder layers from
transformers; it knows nothing about ONNX files, manifests or runtimes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from armor_export.graphs import DecoderGraph
from training_ref.model import ArmorModel

NEG = torch.finfo(torch.float32).min  # additive mask value (HF's choice; fp16 conversion clips it)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class StaticDecoderGraph(nn.Module):
    """inputs_embeds [B, T, H], attention_mask [B, T], cache_mask [B, N], position_ids [B, T],
    past [B, kv, N, D] x 2L -> states [B, T, W] (`ArmorModel.decode`'s), new k/v [B, kv, T, D] x 2L."""

    def __init__(self, model: ArmorModel):
        super().__init__()
        self.lm = model.mllm.model.language_model
        cfg = self.lm.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.groups = self.heads // self.kv_heads
        self.head_dim = model.config.head_dim
        self.reads = model.config.adapter_reads  # a layer whose states follow the last layer's
        if getattr(cfg, "sliding_window", None) and "sliding_attention" in (getattr(cfg, "layer_types", None) or ()):
            raise NotImplementedError("sliding-window layers have no static-cache export yet")

    def forward(self, inputs_embeds, attention_mask, cache_mask, position_ids, *past):
        b, t, _ = inputs_embeds.shape
        kv, g, d = self.kv_heads, self.groups, self.head_dim
        cos, sin = self.lm.rotary_emb(inputs_embeds, position_ids)  # [B, T, D]
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, D]
        # new token i may see new token j <= i unless j is padding; a padded query sees itself (no empty row)
        idx = torch.cumsum(torch.ones_like(attention_mask), 1)  # [B, T]: 1..T
        causal = idx[:, None, :] <= idx[:, :, None]  # [B, T(query), T(key)]
        new_ok = (causal & attention_mask[:, None, :].bool()) | (idx[:, None, :] == idx[:, :, None])
        cache_ok = cache_mask[:, None, :].bool() & torch.ones_like(idx)[:, :, None].bool()  # [B, T, N]
        allowed = torch.cat([cache_ok, new_ok], -1)  # [B, T, N + T]
        bias = torch.where(allowed, 0.0, NEG).to(inputs_embeds.dtype)[:, None, None]  # [B, 1, 1, T, N + T]
        x = inputs_embeds
        present = []
        for i, layer in enumerate(self.lm.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, t, -1, d)  # [B, T, heads, D]
            k = attn.k_proj(h).view(b, t, -1, d)  # [B, T, kv, D]
            v = attn.v_proj(h).view(b, t, -1, d).transpose(1, 2)  # [B, kv, T, D]
            if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before the rotation
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, heads, T, D], [B, kv, T, D]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            present += [k, v]
            k_cache, v_cache = past[2 * i], past[2 * i + 1]  # [B, kv, N, D]
            n = k_cache.shape[2]
            qg = q.reshape(b, kv, -1, d)  # [B, kv, g*T, D]: head h = kv_index * g + group
            scores = torch.cat([qg @ k_cache.transpose(2, 3), qg @ k.transpose(2, 3)], -1) * attn.scaling
            scores = scores.view(b, kv, g, t, -1) + bias  # [B, kv, g, T, N + T]
            p = torch.softmax(scores.float(), -1).to(q.dtype).view(b, kv, -1, n + t)  # [B, kv, g*T, N + T]
            y = p[..., :n] @ v_cache + p[..., n:] @ v  # [B, kv, g*T, D]
            y = y.view(b, self.heads, t, d).transpose(1, 2).reshape(b, t, self.heads * d)
            x = x + attn.o_proj(y)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            if i + 1 == self.reads:
                side = self.lm.norm(x)  # [B, T, H]
        states = self.lm.norm(x)  # [B, T, H]
        if self.reads is not None:
            states = torch.cat([states, side], -1)  # [B, T, 2H]
        return (states, *present)


class StaticDecoderReference(nn.Module):
    """The static graph's contract computed by the reference decoder (verification only): the
    filled slots must be a prefix `[0, L)` of the cache (the runtime fills from slot 0; a
    left-padded row has its padding slots unfilled), so the dynamic-cache decoder over
    `past[:, :, :L]` with mask `cache_mask[:, :L] ++ attention_mask` gives the same tokens."""

    def __init__(self, model: ArmorModel):
        super().__init__()
        self.dynamic = DecoderGraph(model)

    def forward(self, inputs_embeds, attention_mask, cache_mask, position_ids, *past):
        filled = cache_mask.bool().any(0).nonzero()
        length = int(filled.max()) + 1 if len(filled) else 0
        mask = torch.cat([cache_mask[:, :length], attention_mask], 1)
        out = self.dynamic(inputs_embeds, mask, position_ids, *[p[:, :, :length] for p in past])
        return (out[0], *[p[:, :, length:] for p in out[1:]])
