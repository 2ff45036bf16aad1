"""Chameleon's VQGAN (taming-transformers architecture): encoder, quantizer, decoder.

ARMOR writes images as discrete codes and turns codes back into pixels with this decoder.
transformers' `ChameleonVQVAE` has no decoder, so the whole module is written here with
Chameleon's parameter names (`encoder.*`, `decoder.*`, `quantize.embedding.weight`,
`quant_conv.*`, `post_quant_conv.*`), so the released checkpoint loads unchanged
(`load_vqgan_state`). Size comes from `VQGANConfig`: full Chameleon size for real use,
small for the shapes world. No training code here (see train.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VQGANConfig:
    resolution: int = 256
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 8192
    norm_groups: int = 32
    beta: float = 0.25  # commitment weight of the quantizer loss
    # Encode every `downsample` x `downsample` patch on its own, so a code depends on its patch
    # only (the decoder still sees the whole grid). Chameleon's release encodes whole images
    # (False); the shapes world uses True: its background is then one code, not hundreds of
    # context-dependent near-duplicates, and image targets are predictable from the scene.
    local_patches: bool = False

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        return self.resolution // self.downsample

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VQGANConfig":
        d = dict(d)
        for key in ("ch_mult", "attn_resolutions"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def _norm(cfg: VQGANConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(cfg.norm_groups, channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cfg: VQGANConfig, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = _norm(cfg, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(cfg, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 convolutions (taming's AttnBlock)."""

    def __init__(self, cfg: VQGANConfig, c: int):
        super().__init__()
        self.norm = _norm(cfg, c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).flatten(2).transpose(1, 2)  # [B, HW, C]
        k = self.k(y).flatten(2).transpose(1, 2)
        v = self.v(y).flatten(2).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # [B, HW, C]
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as taming does


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block.{j}`, `attn.{j}`, then `downsample` or `upsample`."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[j](x)
        return x


class _Mid(nn.Module):
    def __init__(self, cfg: VQGANConfig, c: int):
        super().__init__()
        self.block_1 = ResnetBlock(cfg, c, c)
        self.attn_1 = AttnBlock(cfg, c)
        self.block_2 = ResnetBlock(cfg, c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        mult = (1,) + tuple(cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for i in range(len(cfg.ch_mult)):
            level = _Level()
            c_in, c_out = cfg.ch * mult[i], cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(cfg, c_in, c_out))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(cfg, c_out))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(c_out)
                res //= 2
            self.down.append(level)
        c = cfg.ch * cfg.ch_mult[-1]
        self.mid = _Mid(cfg, c)
        self.norm_out = _norm(cfg, c)
        self.conv_out = nn.Conv2d(c, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # [B, ch, S, S]
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)  # [B, ch*mult[-1], S/f, S/f]
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, z, S/f, S/f]


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        c = cfg.ch * cfg.ch_mult[-1]
        res = cfg.grid
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _Mid(cfg, c)
        up = []
        for i in reversed(range(len(cfg.ch_mult))):
            level = _Level()
            c_out = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(cfg, c, c_out))
                c = c_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(cfg, c_out))
            if i != 0:
                level.upsample = Upsample(c_out)
                res *= 2
            up.insert(0, level)  # stored low index = high resolution, as taming does
        self.up = nn.ModuleList(up)
        self.norm_out = _norm(cfg, c)
        self.conv_out = nn.Conv2d(c, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # [B, C, h, w]
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, 3, S, S]


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantizer with a straight-through gradient."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.beta = cfg.beta
        self.embedding = nn.Embedding(cfg.n_embed, cfg.embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / cfg.n_embed, 1.0 / cfg.n_embed)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D, h, w] -> nearest code ids [B, h, w]."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # [B*h*w, D]
        e = self.embedding.weight  # [K, D]
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]
        return dist.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] -> z_q [B, D, h, w]."""
        return self.embedding(codes).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = self.codes(z)
        z_q = self.lookup(codes)
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        z_q = z + (z_q - z).detach()  # straight-through
        return z_q, loss, codes


class VQGAN(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] in [-1, 1] -> pre-quantization latents [B, D, S/f, S/f]."""
        if not self.config.local_patches:
            return self.quant_conv(self.encoder(pixels))
        b, c, s, _ = pixels.shape
        f, g = self.config.downsample, s // self.config.downsample
        patches = pixels.unfold(2, f, f).unfold(3, f, f)  # [B, 3, g, g, f, f]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b * g * g, c, f, f)
        z = self.quant_conv(self.encoder(patches))  # [B*g*g, D, 1, 1]
        return z.view(b, g, g, -1).permute(0, 3, 1, 2)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] in [-1, 1] -> code ids [B, S/f, S/f]."""
        return self.quantize.codes(self.latents(pixels))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """code ids [B, h, w] -> pixels [B, 3, h*f, w*f], nominally in [-1, 1] (not clamped)."""
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training forward: (reconstruction, quantizer loss, codes)."""
        z_q, q_loss, codes = self.quantize(self.latents(pixels))
        return self.decoder(self.post_quant_conv(z_q)), q_loss, codes


def load_vqgan_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a VQGAN state dict from safetensors, or from a torch file with `weights_only=True`.

    Chameleon's release is a torch checkpoint whose weights sit under `state_dict`; the
    training-only `loss.*` entries (discriminator, LPIPS) are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQGAN checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a VQGAN state dict")
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def config_from_state(state: dict[str, torch.Tensor], resolution: int = 256, **overrides) -> VQGANConfig:
    """Infer the VQGAN size from a Chameleon-layout state dict (channel widths, levels, blocks)."""
    n_embed, embed_dim = state["quantize.embedding.weight"].shape
    ch = state["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
    ch_mult = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
    blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.down.0.block.")})
    z = state["encoder.conv_out.weight"].shape[0]
    attn_res = tuple(
        resolution // 2**i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state
    )
    fields = dict(resolution=resolution, ch=ch, ch_mult=ch_mult, num_res_blocks=blocks,
                  attn_resolutions=attn_res, z_channels=z, embed_dim=embed_dim, n_embed=n_embed)
    fields.update(overrides)
    return VQGANConfig(**fields)
