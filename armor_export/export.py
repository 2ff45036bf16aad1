"""`export_bundle`: checkpoint folder -> bundle folder (docs/design.md), verified, manifest last.

Order of work: refuse what cannot work (no checkpoint, a bundle already there, too little
disk), remove a previous manifest (from then on the folder is not a bundle), write every
file, verify the graphs against PyTorch, hash, and only then write `manifest.json`
atomically. A killed or failed export therefore never leaves a folder that looks valid.

It knows the checkpoint format, the graph wrappers and the manifest; the runtime reads
the result without knowing any of this.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from armor_export import manifest as mf
from armor_export import text_model
from armor_export.graphs import (DecoderGraph, TextHeadGraph, VisionEncoderGraph, VisualHeadGraph,
                                 VQDecoderGraph, export_graph)
from armor_export.onnx_files import convert_fp16
from armor_export.static_decoder import StaticDecoderGraph
from armor_export.verify import verify_bundle
from runtime.constants import CONFIG_FILE, EMBEDDINGS_FILE, MANIFEST_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from runtime.errors import ArmorError
from runtime.graphs import bundle_graphs, state_width
from training_ref.checkpoint import load_checkpoint, read_config
from training_ref.model import ArmorModel

log = logging.getLogger(__name__)

DTYPES = ("fp32", "fp16")
KV_CACHE_FORMS = ("dynamic", "static")


class ExportError(ArmorError):
    """The export cannot proceed or its verification failed."""


def model_summary(model: ArmorModel, kv_cache: str = "dynamic", max_context: int | None = None) -> dict:
    """What the runtime needs to know about the model, for `manifest["model"]`."""
    cfg = model.config
    text = model.mllm.config.text_config
    cache = {"kv_cache": kv_cache}
    if kv_cache == "static":
        cache["kv_capacity"] = int(max_context or cfg.context_length)
    return {
        "preset": cfg.preset, "architecture": text.model_type, **cache,
        "n_layers": text.num_hidden_layers, "n_heads": text.num_attention_heads,
        "n_kv_heads": text.num_key_value_heads, "head_dim": cfg.head_dim,
        "hidden_size": text.hidden_size, "n_text_vocab": cfg.n_text_vocab, "n_codes": cfg.n_codes,
        "n_new": cfg.n_new, "vocab_size": cfg.vocab_size, "image_grid": list(cfg.image_grid),
        "image_size": cfg.vqgan["resolution"], "vision_image_size": model.mllm.config.vision_config.image_size[0],
        "n_image_tokens": cfg.n_image_tokens, "adapter_layers": cfg.adapter_layers,
        "adapter_heads": cfg.adapter_heads, "adapter_context_start": model.adapter.context_start,
        "context_length": cfg.context_length, "cfg_scale": cfg.cfg_scale,
        "special_token_ids": cfg.to_dict()["special_token_ids"],
        "parameters": sum(p.numel() for p in model.parameters()),
        # only when set: a bundle without it is the paper's adapter (the last layer only)
        **({} if cfg.adapter_reads is None else {"adapter_reads": cfg.adapter_reads}),
    }


def examples(model: ArmorModel, summary: dict) -> dict[str, tuple]:
    """Example inputs to trace with: batch 2, sequence 3, past 4 (nothing is 1 or 0)."""
    g = torch.Generator().manual_seed(0)
    b, t, p, h, w = 2, 3, 4, summary["hidden_size"], state_width(summary)
    kv = (b, summary["n_kv_heads"], p, summary["head_dim"])
    ad = (b, summary["adapter_heads"], p, h // summary["adapter_heads"])
    s = summary["vision_image_size"]
    gh, gw = summary["image_grid"]
    past = tuple(torch.randn(kv, generator=g) for _ in range(2 * summary["n_layers"]))
    positions = torch.arange(p, p + t).expand(b, t).contiguous()
    if summary["kv_cache"] == "static":  # a fixed-capacity cache with its first p slots filled
        n = summary["kv_capacity"]
        cache_mask = torch.zeros(b, n, dtype=torch.long)
        cache_mask[:, :p] = 1
        decoder = (torch.randn(b, t, h, generator=g), torch.ones(b, t, dtype=torch.long), cache_mask, positions,
                   *[torch.randn(b, kv[1], n, kv[3], generator=g) for _ in past])
    else:
        decoder = (torch.randn(b, t, h, generator=g), torch.ones(b, p + t, dtype=torch.long), positions, *past)
    return {
        "vision_encoder": (torch.randn(b, 3, s, s, generator=g),),
        "decoder": decoder,
        "text_head": (torch.randn(b, t, w, generator=g),),
        "visual_head": (torch.randn(b, t, w, generator=g), torch.ones(b, p + t, dtype=torch.long),
                        torch.arange(1, 1 + t).expand(b, t).contiguous(),
                        *[torch.randn(ad, generator=g) for _ in range(2 * summary["adapter_layers"])]),
        "vq_decoder": (torch.randint(0, summary["n_codes"], (b, gh, gw), generator=g),),
    }


WRAPPERS = {"vision_encoder": VisionEncoderGraph, "decoder": DecoderGraph, "text_head": TextHeadGraph,
            "visual_head": VisualHeadGraph, "vq_decoder": VQDecoderGraph}


def export_bundle(checkpoint: Path, out: Path, dtype: str = "fp32", verify: bool = True, overwrite: bool = False,
                  with_text_model: bool = True, progress: bool = True, kv_cache: str = "dynamic",
                  max_context: int | None = None) -> dict:
    """Export `checkpoint` into the bundle folder `out`; returns the manifest. `kv_cache`
    "static" writes the fixed-capacity decoder (capacity `max_context`, default the model's
    context length)."""
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if kv_cache not in KV_CACHE_FORMS:
        raise ExportError(f"--kv-cache must be one of {', '.join(KV_CACHE_FORMS)}, got {kv_cache!r}")
    if max_context is not None and kv_cache != "static":
        raise ExportError("--max-context sets the static cache's capacity: pass it with --kv-cache static")
    cfg = read_config(checkpoint)  # a clear error for a missing or foreign checkpoint, before any work
    if max_context is not None and not 1 <= max_context <= cfg.context_length:
        raise ExportError(f"--max-context must be in 1..{cfg.context_length} (the model's context), got {max_context}")
    out = Path(out)
    _check_out(Path(checkpoint), out, overwrite)
    t0 = time.time()
    model, tokenizer = load_checkpoint(checkpoint)
    summary = model_summary(model, kv_cache, max_context)
    _check_disk(out, summary["parameters"], dtype, with_text_model)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # from here on, `out` is not a bundle
    clear_bundle_files(out)  # nothing of an earlier export (say a text/ this one skips) stays behind
    specs = bundle_graphs(summary)
    ex = examples(model, summary)
    files: dict[str, dict] = {}
    steps = list(specs) + (["text"] if with_text_model else []) + ["tables"]
    bar = tqdm(steps, desc="export", disable=not progress)
    for name in bar:
        bar.set_postfix(graph=name)
        if name == "text":
            for path, role in text_model.export_text_model(model, tokenizer, out / "text", dtype):
                files[str(path.relative_to(out))] = {"role": role}
        elif name == "tables":
            table = model.embedding.table().detach().numpy().astype(np.float16 if dtype == "fp16" else np.float32)
            np.save(out / EMBEDDINGS_FILE, table)
            files[EMBEDDINGS_FILE] = {"role": "embeddings"}
            tokenizer.save(str(out / TOKENIZER_FILE))
            files[TOKENIZER_FILE] = {"role": "tokenizer"}
            shutil.copy(Path(checkpoint) / TOKENIZER_CONFIG_FILE, out / TOKENIZER_CONFIG_FILE)
            files[TOKENIZER_CONFIG_FILE] = {"role": "tokenizer_config"}
        else:
            wrapper = StaticDecoderGraph if name == "decoder" and kv_cache == "static" else WRAPPERS[name]
            written = export_graph(wrapper(model).eval(), ex[name], specs[name], out / specs[name].filename)
            if dtype == "fp16":
                written = convert_fp16(written[0])
            for i, path in enumerate(written):
                files[path.name] = {"role": name if i == 0 else f"{name}.weights"}
    export_seconds = time.time() - t0
    report = verify_bundle(model, out, specs, dtype, tokenizer=tokenizer, progress=progress,
                           text_model=with_text_model) if verify else {"skipped": True}
    if verify and not report["passed"]:
        failed = [k for k, v in report["checks"].items() if not v["passed"]]
        raise ExportError(f"verification failed for {', '.join(failed)}: see the report above; no manifest written")
    manifest = mf.build_manifest(out, summary, specs, files, dtype, report, tokenizer_config=out / TOKENIZER_CONFIG_FILE,
                                 source=str(Path(checkpoint).resolve()), export_seconds=export_seconds)
    mf.write_manifest(out, manifest)
    log.info("bundle written to %s in %.1f s", out, time.time() - t0)
    return manifest


BUNDLE_PATTERNS = ("*.onnx", "*.onnx.data", "*.npy", "tokenizer*.json", "*.gguf", "manifest.json.tmp")
BUNDLE_FOLDERS = ("text", "trt", "engines")


def _check_out(checkpoint: Path, out: Path, overwrite: bool) -> None:
    """Refuse an output folder that is (or holds) the checkpoint, a file, or a bundle without --overwrite."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a folder for the bundle")
    if out.resolve() == checkpoint.resolve() or (out / CONFIG_FILE).exists():
        raise ExportError(f"--out {out} is a checkpoint folder; write the bundle to a folder of its own")
    if (out / MANIFEST_FILE).exists() and not overwrite:
        raise ExportError(f"{out} already holds a bundle; pass --overwrite to replace it")


def clear_bundle_files(out: Path) -> None:
    """Remove what an earlier export wrote into `out` (only the bundle's own file kinds)."""
    for pattern in BUNDLE_PATTERNS:
        for f in out.glob(pattern):
            if f.is_file() or f.is_symlink():
                f.unlink()
    for name in BUNDLE_FOLDERS:
        if (out / name).is_dir() and not (out / name).is_symlink():
            shutil.rmtree(out / name)
        elif (out / name).is_symlink():
            (out / name).unlink()


def _check_disk(out: Path, n_params: int, dtype: str, with_text_model: bool) -> None:
    bytes_per = 2 if dtype == "fp16" else 4
    need = int(n_params * bytes_per * (2.2 if with_text_model else 1.3)) + 64 * 2**20
    probe = out if out.exists() else next(p for p in out.parents if p.exists())
    free = shutil.disk_usage(probe).free
    if free < need:
        raise ExportError(f"not enough disk space at {probe}: the bundle needs about {need / 2**30:.1f} GiB, "
                          f"{free / 2**30:.1f} GiB free")
