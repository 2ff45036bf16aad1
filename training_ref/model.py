"""The ARMOR model: an InternVL MLLM upgraded to read and write images (arXiv 2503.06542).

Read top-down: the config, then the pieces ARMOR adds to the base MLLM (unified embedding,
extended text head, adapter, visual head), then the model with its entry points:

    encode_images(pixels)            -> image embeddings for the `<IMG_CONTEXT>` placeholders
    embed(ids, image_embeds)         -> inputs_embeds from the unified table
    decode(embeds, mask, pos, cache) -> decoder states (the last layer's after the final norm), cache
    text_logits(states)              -> logits over the text vocab + `<imgbos>`
    image_logits(states, positions, past, mask) -> logits over the codes + `<imgend>` + `<imgpad>`

Token id space (unified): [0, V) text tokens, V + c for image code c, then `<imgbos>`,
`<imgend>`, `<imgpad>`. The text head's last logit is `<imgbos>`; the visual head's logits
are the codes, then `<imgend>`, then `<imgpad>`.

The adapter sees the image segment *and its context*. When an image starts, the decoder
hidden states of every token before `<imgbos>` (system prompt, user prompt, earlier answer
text and images) enter the adapter as a prefix, once; then the segment (`<imgbos>` and the
codes so far) follows, causally, one position per code. Positions are learned: 0..N for the
segment (0 is `<imgbos>`), then N+1+j for context token j. Why: ARMOR's decoder is frozen,
and reading "what to draw" from the prompt's own hidden states, in their order, lets the
adapter find each object's phrase ("a large red triangle at the top left") by its position
words; the cost is one adapter prefill over the context per image, and the adapter still
never runs for text tokens (what was measured: docs/model-card.md).

`adapter_reads` (off by default) gives the adapter a second view of the same tokens: an
earlier decoder layer's states beside the last. Then the decoder states are [last | layer k]
(width 2H): the text head reads the first half, the adapter mixes both into H.

This file knows no training, optimizer, export or sampling code.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import InternVLConfig, InternVLForConditionalGeneration

from training_ref.vqgan import VQGAN, VQGANConfig


@dataclass
class ArmorConfig:
    mllm: dict  # InternVLConfig.to_dict(): vision tower, projector, text model
    n_codes: int  # VQGAN codebook size
    image_grid: tuple[int, int]  # (h, w) codes of a generated image
    adapter_layers: int = 2
    adapter_heads: int = 4
    adapter_intermediate: int = 512
    vqgan: dict = field(default_factory=dict)  # VQGANConfig.to_dict()
    context_length: int = 1024
    cfg_scale: float = 3.0  # the model's default classifier-free guidance (1 = off)
    eos_token_id: int = 2  # `<|im_end|>`: ends the assistant turn
    pad_token_id: int = 0
    preset: str = "custom"
    # a decoder layer (1 .. layers - 1) whose states, after the final norm, the adapter reads
    # beside the last layer's; None: the last only (the paper's)
    adapter_reads: int | None = None

    def __post_init__(self):
        if self.adapter_reads is None:
            return
        n = self.mllm["text_config"]["num_hidden_layers"]
        if isinstance(self.adapter_reads, bool) or not isinstance(self.adapter_reads, int) \
                or not 1 <= self.adapter_reads < n:
            raise ValueError(f"adapter_reads must be a decoder layer in 1..{n - 1}, got {self.adapter_reads}")

    # --- derived: the unified id space -------------------------------------------------
    @property
    def text_config(self):
        return InternVLConfig(**self.mllm).text_config

    @property
    def hidden_size(self) -> int:
        return self.mllm["text_config"]["hidden_size"]

    @property
    def state_width(self) -> int:  # the decoder states' width: H, or 2H with `adapter_reads`
        return self.hidden_size * (1 if self.adapter_reads is None else 2)

    @property
    def head_dim(self) -> int:  # explicit in Qwen3 / InternVL3.5 configs (not hidden / heads there)
        t = self.mllm["text_config"]
        return t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]

    @property
    def n_text_vocab(self) -> int:  # V: rows of the original embedding and text head
        return self.mllm["text_config"]["vocab_size"]

    @property
    def image_token_id(self) -> int:  # `<IMG_CONTEXT>`: where input-image embeddings go
        return self.mllm["image_token_id"]

    @property
    def n_image_tokens(self) -> int:  # embeddings per input image
        return self.mllm["image_seq_length"]

    @property
    def n_grid(self) -> int:
        return self.image_grid[0] * self.image_grid[1]

    @property
    def code_offset(self) -> int:
        return self.n_text_vocab

    @property
    def img_bos_id(self) -> int:
        return self.n_text_vocab + self.n_codes

    @property
    def img_end_id(self) -> int:
        return self.img_bos_id + 1

    @property
    def img_pad_id(self) -> int:
        return self.img_bos_id + 2

    @property
    def n_new(self) -> int:  # rows of the new embedding: codes + <imgbos> <imgend> <imgpad>
        return self.n_codes + 3

    @property
    def vocab_size(self) -> int:
        return self.n_text_vocab + self.n_new

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_grid"] = list(self.image_grid)
        d["special_token_ids"] = {
            "img_bos": self.img_bos_id, "img_end": self.img_end_id, "img_pad": self.img_pad_id,
            "code_offset": self.code_offset, "image_context": self.image_token_id,
            "eos": self.eos_token_id, "pad": self.pad_token_id,
        }
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ArmorConfig":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["image_grid"] = tuple(d["image_grid"])
        return cls(**d)


class UnifiedEmbedding(nn.Module):
    """`original` (the MLLM's text table, frozen by WoHG) + `new` (codes and specials)."""

    def __init__(self, original: nn.Embedding, n_new: int):
        super().__init__()
        self.original = original
        self.new = nn.Embedding(n_new, original.embedding_dim)
        nn.init.normal_(self.new.weight, std=original.weight.std().item() or 0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n_text = self.original.num_embeddings
        is_new = ids >= n_text
        text = self.original(ids.clamp(max=n_text - 1))  # [B, T, H]
        new = self.new((ids - n_text).clamp(min=0))  # [B, T, H]
        return torch.where(is_new[..., None], new, text)

    def table(self) -> torch.Tensor:
        """The unified table [V + n_new, H], what the runtime memory-maps."""
        return torch.cat([self.original.weight, self.new.weight], 0)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, written out (as Qwen2's) so every exporter and opset handles it."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class AdapterBlock(nn.Module):
    """Pre-norm causal transformer block; optional (key, value) cache of the positions so far."""

    def __init__(self, hidden: int, heads: int, intermediate: int):
        super().__init__()
        self.heads = heads
        self.norm1 = RMSNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = RMSNorm(hidden)
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x [B, T, H]; mask [B, 1, T, P+T] bool (True = may attend) -> ([B, T, H], (k, v))."""
        b, t, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, h // self.heads).unbind(2)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))  # [B, heads, T, D]
        if past is not None:
            k = torch.cat([past[0], k], 2)  # [B, heads, P+T, D]
            v = torch.cat([past[1], v], 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, heads, T, D]
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, h))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return x, (k, v)


def causal_mask(t: int, total: int, device=None) -> torch.Tensor:
    """[T, total] bool: the last T of `total` positions; query i sees keys up to its own."""
    q = torch.arange(total - t, total, device=device)[:, None]
    return torch.arange(total, device=device)[None] <= q


class Adapter(nn.Module):
    """K blocks between the decoder and the visual head, over the context prefix + the segment."""

    def __init__(self, cfg: ArmorConfig):
        super().__init__()
        h = cfg.hidden_size
        self.context_start = cfg.n_grid + 1  # segment positions are 0 (`<imgbos>`) .. n_grid
        self.pos = nn.Embedding(cfg.n_grid + 1 + cfg.context_length, h)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.blocks = nn.ModuleList(
            AdapterBlock(h, cfg.adapter_heads, cfg.adapter_intermediate) for _ in range(cfg.adapter_layers)
        )
        self.norm = RMSNorm(h)
        self.mix = None
        if cfg.adapter_reads is not None:
            # [last | layer k] -> H; starts as "the last layer only" (and draws no random numbers)
            self.mix = nn.Parameter(torch.cat([torch.eye(h), torch.zeros(h, h)], 1))  # [H, 2H]

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, past: list | None = None,
                mask: torch.Tensor | None = None):
        """hidden [B, T, W] decoder states after `past`; positions [B, T] adapter positions;
        mask [B, P+T] (1 = real token, 0 = padding; None = all real) -> ([B, T, H], new cache)."""
        b, t, _ = hidden.shape
        total = t + (0 if past is None else past[0][0].shape[2])
        attend = causal_mask(t, total, hidden.device)[None, None]  # [1, 1, T, P+T]
        if mask is not None:
            attend = attend & mask[:, None, None, :].bool()  # [B, 1, T, P+T]
            # a padded query row with no key left would give NaN: let it see itself
            keys = torch.arange(total, device=hidden.device)
            attend = attend | (keys[None] == keys[total - t:, None])[None, None]
        if self.mix is not None:
            hidden = F.linear(hidden, self.mix)  # [B, T, 2H] -> [B, T, H]
        x = hidden + self.pos(positions)  # [B, T, H]
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, attend, None if past is None else past[i])
            present.append(kv)
        return self.norm(x), present


class ArmorModel(nn.Module):
    def __init__(self, cfg: ArmorConfig):
        super().__init__()
        self.config = cfg
        mllm_cfg = InternVLConfig(**cfg.mllm)
        # ARMOR trains the text head while the original embeddings stay frozen: never tied.
        mllm_cfg.tie_word_embeddings = False
        mllm_cfg.text_config.tie_word_embeddings = False
        self.mllm = InternVLForConditionalGeneration(mllm_cfg)
        h = cfg.hidden_size
        self.embedding = UnifiedEmbedding(self.mllm.model.language_model.embed_tokens, cfg.n_new)
        self.imgbos_head = nn.Linear(h, 1, bias=False)  # the text head's extra row
        nn.init.normal_(self.imgbos_head.weight, std=0.02)
        self.adapter = Adapter(cfg)
        self.visual_head = nn.Linear(h, cfg.n_codes + 2, bias=False)  # codes, <imgend>, <imgpad>
        nn.init.normal_(self.visual_head.weight, std=0.02)
        self.vqgan = VQGAN(VQGANConfig.from_dict(cfg.vqgan))

    # --- parameter groups named by the WoHG freeze table (docs/design.md) -----------------------
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        lm = self.mllm.model.language_model
        return {
            "decoder": [p for n, p in lm.named_parameters() if not n.startswith("embed_tokens")],
            "original_embeddings": [self.embedding.original.weight],
            "new_embeddings": [self.embedding.new.weight],
            "text_head": list(self.mllm.lm_head.parameters()),  # the MLLM's own rows
            "imgbos_head": [self.imgbos_head.weight],  # the text head's extra row
            "adapter": list(self.adapter.parameters()),
            "visual_head": list(self.visual_head.parameters()),
            "vision": list(self.mllm.model.vision_tower.parameters())
            + list(self.mllm.model.multi_modal_projector.parameters()),
            "vqgan": list(self.vqgan.parameters()),
        }

    # --- entry points ------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, S, S] (normalised) -> image embeddings [B, N_img, H]."""
        out = self.mllm.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        return out.pooler_output

    def embed(self, ids: torch.Tensor, image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, T] unified -> inputs_embeds [B, T, H]; `<IMG_CONTEXT>` rows filled in order."""
        x = self.embedding(ids)
        if image_embeds is not None:
            slots = ids == self.config.image_token_id  # [B, T]
            feats = image_embeds.reshape(-1, x.shape[-1]).to(x.dtype)
            if int(slots.sum()) != feats.shape[0]:
                raise ValueError(f"{int(slots.sum())} image placeholders but {feats.shape[0]} image embeddings")
            x = x.masked_scatter(slots[..., None], feats)
        return x

    def decode(self, inputs_embeds, attention_mask=None, position_ids=None, cache=None):
        """[B, T, H] -> (states [B, T, W], cache). Decoder only, no head. The states are the last
        layer's after the final norm, then (with `adapter_reads` k) layer k's after the same norm."""
        lm = self.mllm.model.language_model
        name, k = _cache_argument(type(lm)), self.config.adapter_reads
        out = lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                 use_cache=cache is not None, output_hidden_states=k is not None, **{name: cache})
        if k is None:
            return out.last_hidden_state, getattr(out, name)
        return torch.cat([out.last_hidden_state, lm.norm(out.hidden_states[k])], -1), getattr(out, name)

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """states [..., W] -> [..., V + 1] from the last layer's part; the last column is `<imgbos>`."""
        hidden = hidden[..., :self.config.hidden_size]
        return torch.cat([self.mllm.lm_head(hidden), self.imgbos_head(hidden)], -1)

    def image_logits(self, hidden: torch.Tensor, positions: torch.Tensor, past: list | None = None,
                     mask: torch.Tensor | None = None):
        """Decoder states [B, T, W] continuing the adapter cache `past` (None when an
        image starts: then `hidden` is the context followed by `<imgbos>`), their adapter
        positions [B, T] (see `image_positions`) and the key mask [B, P+T]
        -> (logits [B, T, n_codes + 2], adapter cache)."""
        x, present = self.adapter(hidden, positions, past, mask)
        return self.visual_head(x), present

    def image_positions(self, n_context: int, start: int = 0, length: int = 1) -> torch.Tensor:
        """Adapter positions [n_context + length]: `n_context` context tokens (context_start + j),
        then segment positions start .. start + length - 1 (0 is `<imgbos>`)."""
        ctx = self.adapter.context_start + torch.arange(n_context)
        return torch.cat([ctx, torch.arange(start, start + length)])


def _cache_argument(decoder_class: type) -> str:
    """The cache keyword of transformers' decoders: `cache` since 5.24, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"
