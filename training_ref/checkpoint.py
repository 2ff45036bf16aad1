"""Checkpoint directories: presets, atomic save, validated load, and import of a real InternVL.

A checkpoint is `config.json` + `model.safetensors` + `vqgan.safetensors` (Chameleon's
names) + `tokenizer.json` (+ `tokenizer_config.json`). It is written into a temporary
sibling folder and renamed into place, so a killed save never leaves a folder that looks
complete. No pickle: safetensors only (a foreign VQGAN `.ckpt` is read with
`weights_only=True`). This module knows file layouts, not training or generation.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import InternVLConfig

from runtime.chat import CHAT_TEMPLATE_JINJA
from runtime.constants import (CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, CONFIG_FILE, ENDOFTEXT,
                               IM_END, IMG_CONTEXT, MODEL_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
                               VQGAN_FILE)
from runtime.errors import CheckpointError
from training_ref.model import ArmorConfig, ArmorModel
from training_ref.vqgan import VQGANConfig, config_from_state, load_vqgan_state

log = logging.getLogger(__name__)

SHARED_KEY = "embedding.original.weight"  # the same tensor as the MLLM's embed_tokens


# --- presets -------------------------------------------------------------------------------
def tiny_config(tokenizer: Tokenizer) -> ArmorConfig:
    """The embedded default: shapes world, 64 px images, 8x8 code grid, ~4.7M parameters."""
    vision = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                  image_size=[64, 64], patch_size=[8, 8], use_mean_pooling=False)
    text = dict(model_type="qwen2", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=384, vocab_size=tokenizer.get_vocab_size(),
                max_position_embeddings=512, tie_word_embeddings=False)
    # 1024 codes: with 256 many object patches share a code between colours (docs/model-card.md)
    vq = VQGANConfig(resolution=64, ch=16, ch_mult=(1, 2, 4, 4), num_res_blocks=1, z_channels=64,
                     embed_dim=64, n_embed=1024, norm_groups=8, local_patches=True)
    # guidance off by default and a 4-block, 8-head adapter: both measured best (docs/model-card.md)
    return _armor_config("tiny", tokenizer, vision, text, vq, n_image_tokens=16, adapter=(4, 8, 512),
                         context_length=512, cfg_scale=1.0)


def proxy_1b_config(tokenizer: Tokenizer) -> ArmorConfig:
    """InternVL2.5-1B shapes (InternViT-300M, Qwen2.5-0.5B), full Chameleon VQGAN, random weights."""
    vision = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  image_size=[448, 448], patch_size=[14, 14], use_mean_pooling=False)
    text = dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, intermediate_size=4864, vocab_size=151674,
                max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=False)
    vq = VQGANConfig(resolution=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256,
                     embed_dim=256, n_embed=8192)
    return _armor_config("proxy-1b", tokenizer, vision, text, vq, n_image_tokens=256,
                         adapter=(2, 14, 4864), context_length=4096)


def _armor_config(preset, tokenizer, vision, text, vq, n_image_tokens, adapter, context_length,
                  cfg_scale: float = 3.0) -> ArmorConfig:
    mllm = InternVLConfig(vision_config=vision, text_config=text, image_seq_length=n_image_tokens,
                          image_token_id=_token_id(tokenizer, IMG_CONTEXT), downsample_ratio=0.5,
                          tie_word_embeddings=False)
    return ArmorConfig(mllm=mllm.to_dict(), n_codes=vq.n_embed, image_grid=(vq.grid, vq.grid),
                       adapter_layers=adapter[0], adapter_heads=adapter[1], adapter_intermediate=adapter[2],
                       vqgan=vq.to_dict(), context_length=context_length,
                       eos_token_id=_token_id(tokenizer, IM_END), pad_token_id=_token_id(tokenizer, ENDOFTEXT),
                       cfg_scale=cfg_scale, preset=preset)


def _token_id(tokenizer: Tokenizer, name: str) -> int:
    i = tokenizer.token_to_id(name)
    if i is None:
        raise CheckpointError(f"the tokenizer has no {name} token")
    return i


# --- save / load ---------------------------------------------------------------------------
def save_checkpoint(model: ArmorModel, tokenizer: Tokenizer, directory: str | Path,
                    dtype: torch.dtype = torch.float32, extra_files: dict[str, str] | None = None) -> Path:
    """Write the checkpoint folder atomically (temporary sibling, then rename)."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()
             if not k.startswith("vqgan.") and k != SHARED_KEY}
    save_file(state, str(tmp / MODEL_FILE), metadata={"format": "pt"})
    vq = {k[len("vqgan."):]: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()
          if k.startswith("vqgan.")}
    save_file(vq, str(tmp / VQGAN_FILE), metadata={"format": "pt"})
    tokenizer.save(str(tmp / TOKENIZER_FILE))
    (tmp / TOKENIZER_CONFIG_FILE).write_text(json.dumps({
        "chat_template": CHAT_TEMPLATE_JINJA, "bos_token": None, "eos_token": IM_END,
        "pad_token": ENDOFTEXT, "num_image_tokens": model.config.n_image_tokens}, indent=2))
    config = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
              "dtype": str(dtype).removeprefix("torch."), **model.config.to_dict()}
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def read_config(directory: str | Path) -> ArmorConfig:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {directory}")
    for name in (CONFIG_FILE, MODEL_FILE, VQGAN_FILE, TOKENIZER_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} is not an ARMOR checkpoint: {name} is missing")
    try:
        raw = json.loads((directory / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{directory / CONFIG_FILE} is not valid JSON ({e})") from e
    if raw.get("format") != CHECKPOINT_FORMAT or raw.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{directory} is a checkpoint of format {raw.get('format')!r} version "
                              f"{raw.get('format_version')!r}; this version reads {CHECKPOINT_FORMAT!r} "
                              f"version {CHECKPOINT_FORMAT_VERSION}")
    try:
        return ArmorConfig.from_dict(raw)
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{directory / CONFIG_FILE} does not describe an ARMOR model ({e})") from e


def load_checkpoint(directory: str | Path, dtype: torch.dtype = torch.float32) -> tuple[ArmorModel, Tokenizer]:
    """Load a checkpoint folder (weights cast to `dtype`), in eval mode."""
    directory = Path(directory)
    cfg = read_config(directory)
    # building the model draws initial weights, which the file replaces: the caller's random state
    # must not move (a run continued with `--stages how` draws `how`'s cell head as one command does)
    with torch.random.fork_rng(devices=[]):
        model = ArmorModel(cfg)
    state = _load_tensors(directory / MODEL_FILE)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("vqgan.") and k != SHARED_KEY]
    if missing or unexpected:
        raise CheckpointError(f"{directory / MODEL_FILE} does not match its config: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    _load_into(model.vqgan, _load_tensors(directory / VQGAN_FILE), directory / VQGAN_FILE)
    try:
        tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise CheckpointError(f"{directory / TOKENIZER_FILE} is not a valid tokenizer ({e})") from e
    return model.to(dtype).eval(), tokenizer


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return {k: v.float() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e}); re-download or re-train it") from e


def _load_into(module: torch.nn.Module, state: dict, path: Path) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the configured VQGAN: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")


# --- import of a real InternVL + Chameleon VQGAN --------------------------------------------
def from_pretrained(internvl_dir: str | Path, vqgan_path: str | Path, adapter_layers: int = 2,
                    image_grid: tuple[int, int] | None = None) -> tuple[ArmorModel, Tokenizer]:
    """Build ARMOR around a local InternVL checkpoint (transformers' native format) and a local
    Chameleon VQGAN. The MLLM's weights are copied unchanged (a tied LM head is untied into a
    copy); ARMOR's new rows, adapter and visual head are freshly initialised."""
    from transformers import InternVLForConditionalGeneration

    internvl_dir = Path(internvl_dir)
    if not (internvl_dir / "config.json").is_file():
        raise CheckpointError(f"{internvl_dir} is not a transformers InternVL checkpoint (no config.json)")
    tok_path = internvl_dir / TOKENIZER_FILE
    if not tok_path.is_file():
        raise CheckpointError(f"{internvl_dir} has no {TOKENIZER_FILE}")
    tokenizer = Tokenizer.from_file(str(tok_path))
    base = InternVLForConditionalGeneration.from_pretrained(str(internvl_dir), dtype=torch.float32)
    vq_state = load_vqgan_state(vqgan_path)
    vq_cfg = config_from_state(vq_state)
    mllm = base.config.to_dict()
    mllm["tie_word_embeddings"] = False
    mllm["text_config"]["tie_word_embeddings"] = False
    cfg = ArmorConfig(mllm=mllm, n_codes=vq_cfg.n_embed, image_grid=image_grid or (vq_cfg.grid, vq_cfg.grid),
                      adapter_layers=adapter_layers, adapter_heads=base.config.text_config.num_attention_heads,
                      adapter_intermediate=base.config.text_config.intermediate_size, vqgan=vq_cfg.to_dict(),
                      context_length=base.config.text_config.max_position_embeddings,
                      eos_token_id=_token_id(tokenizer, IM_END),
                      pad_token_id=_first_id(tokenizer, (ENDOFTEXT, "<|endoftext|>", "</s>")),
                      preset="from-pretrained")
    model = ArmorModel(cfg)
    base_state = base.state_dict()
    if "lm_head.weight" not in base_state:  # tied: the head is a copy of the embeddings
        base_state["lm_head.weight"] = base.get_input_embeddings().weight
    missing, unexpected = model.mllm.load_state_dict(base_state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"the InternVL weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.mllm.lm_head.weight.data = model.mllm.lm_head.weight.data.clone()
    _load_into(model.vqgan, vq_state, Path(vqgan_path))
    return model.eval(), tokenizer


def _first_id(tokenizer: Tokenizer, names) -> int:
    for n in names:
        if tokenizer.token_to_id(n) is not None:
            return tokenizer.token_to_id(n)
    return 0
