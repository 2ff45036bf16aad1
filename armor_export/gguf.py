"""`text.gguf`: ARMOR's decoder, text head, unified embedding and tokenizer for llama.cpp.

What goes in (written with gguf-py's `GGUFWriter`, our own code):
- the decoder as llama.cpp's architecture of the base model (`qwen2`, or `llama` with the
  HF -> GGUF Q/K row permutation llama.cpp's rotary convention needs; qwen2 needs none),
  its final norm (`output_norm`);
- the **whole unified embedding** as `token_embd` (text rows, then the image codes, then
  `<imgbos>` `<imgend>` `<imgpad>`): image codes are ordinary tokens to llama.cpp;
- the text head as `output`, one row per token of that vocabulary: the text rows, then
  `<imgbos>`'s row at its id; code, `<imgend>` and `<imgpad>` rows are zero (the text head
  has no logits for them; ARMOR's runtime reads only the text rows and `<imgbos>`, as on ORT;
  a plain llama.cpp sampler would see logit 0 there);
- the tokenizer (byte-level BPE vocab, merges, token types, eos/pad, the chat template), the
  codes named `<|code_{c}|>` and the three new tokens, all control tokens;
- ARMOR's keys (`runtime.constants` GGUF section): special-token ids, code range, image grid,
  adapter context start, cfg_scale, and the sha256 of the bundle's `embeddings.npy` this file
  belongs to (the runtime refuses a text.gguf of another bundle).

f16 / q8_0 / q4_k_m are made from the f32 file by llama.cpp's own quantizer
(`llama_cpp.llama_model_quantize`), never here. `export_gguf` adds the file to a bundle
(exporting the ONNX bundle first when the folder holds none), verifies it against PyTorch
(quantized types against the f32 file: top-1 and KL of the text head, then ShapeEval and VQA
of the runtime's answers with armor-calibrate's gates) and updates the manifest; every file is written
to a temporary name and renamed, the manifest last, so a crash leaves nothing that looks valid.

It knows the checkpoint's modules, GGUF's tensor names and keys; it does not run generation.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from runtime import constants as C
from runtime.errors import ArmorError

log = logging.getLogger(__name__)

FTYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* of each --gguf-type
ARCHITECTURES = {"qwen2": "qwen2", "llama": "llama"}  # transformers model_type -> llama.cpp architecture
# Gates for a quantized text.gguf against the f32 one (greedy top-1 agreement, mean KL).
GATES = {"f16": (0.99, 1e-3), "q8_0": (0.95, 2e-2), "q4_k_m": (0.80, 0.25)}
F32_ATOL = 1e-3  # llama.cpp f32 (f32 KV cache) vs PyTorch: max |diff| of logits and hidden states
# End to end, a quantized type against the f32 file on the held-out shapes-world prompts (the
# runtime's answers, --backend llamacpp): armor-calibrate's sets, budgets and gates (points).
E2E_PROMPTS = {"vqa": 200, "t2i": 40}
E2E_BUDGETS = {"vqa": 24, "t2i": 64}  # max new text tokens, as in training_ref.evaluate
MAX_DROP_POINTS = {"shapeeval_all_correct": 3.0, "vqa_accuracy": 2.0}


class GGUFExportError(ArmorError):
    """text.gguf cannot be written, or it failed its verification."""


# --- the file ------------------------------------------------------------------------------------
def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half rotary layout -> llama.cpp's interleaved pairs, per head (rows of q/k)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def decoder_tensors(model) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """(llama.cpp architecture, [(GGUF tensor name, float32 array)]) of the decoder, final norm,
    unified embedding and the text head padded to the unified vocabulary."""
    import gguf

    cfg, text = model.config, model.mllm.config.text_config
    arch = ARCHITECTURES.get(text.model_type)
    if arch is None:
        raise GGUFExportError(f"no llama.cpp architecture for base model type {text.model_type!r}; "
                              f"supported: {', '.join(ARCHITECTURES)}")
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), text.num_hidden_layers)
    out = []
    for name, p in model.mllm.model.language_model.named_parameters():
        if name.startswith("embed_tokens"):
            continue
        w = p.detach().float().numpy()
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            w = _permute_qk(w, text.num_attention_heads if ".q_proj." in name else text.num_key_value_heads)
        mapped = names.get_name("model." + name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise GGUFExportError(f"no GGUF tensor name for decoder parameter {name!r} ({arch})")
        out.append((mapped, np.ascontiguousarray(w)))
    table = model.embedding.table().detach().float().numpy()  # [V + n_new, H]
    head = np.zeros_like(table)
    head[: cfg.n_text_vocab] = model.mllm.lm_head.weight.detach().float().numpy()
    head[cfg.img_bos_id] = model.imgbos_head.weight.detach().float().numpy()[0]
    out += [("token_embd.weight", np.ascontiguousarray(table)), ("output.weight", head)]
    return arch, out


def vocabulary(tokenizer, cfg) -> tuple[list[str], list[int], list[str], str]:
    """(tokens, token types, merges, pre-tokenizer name) of the unified vocabulary."""
    import gguf

    spec = json.loads(tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise GGUFExportError(f"text.gguf supports byte-level BPE tokenizers; this one is {spec['model']['type']}")
    vocab = spec["model"]["vocab"]
    for t in spec.get("added_tokens", []):
        vocab.setdefault(t["content"], t["id"])
    # the embedding may be padded past the tokenizer (Qwen2.5: 151936 rows, 151665 tokens): the spare
    # rows become UNUSED `[PAD{i}]` tokens, as llama.cpp's own converter writes them
    if len(vocab) > cfg.n_text_vocab or sorted(vocab.values()) != list(range(len(vocab))):
        raise GGUFExportError(f"the tokenizer has {len(vocab)} tokens with gaps or extras; the model's text "
                              f"vocabulary is {cfg.n_text_vocab}")
    tokens = [f"[PAD{i}]" for i in range(cfg.n_text_vocab)]
    for token, i in vocab.items():
        tokens[i] = token
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    types = [int(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL if i < len(vocab)
                 else gguf.TokenType.UNUSED) for i in range(len(tokens))]
    tokens += [C.GGUF_CODE_TOKEN.format(c) for c in range(cfg.n_codes)] + list(C.NEW_SPECIAL_TOKENS)
    types += [int(gguf.TokenType.CONTROL)] * cfg.n_new
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    pre = spec.get("pre_tokenizer") or {}
    # llama.cpp's "gpt-2" pre-tokenizer is the GPT-2 regex our ByteLevel(use_regex=True) applies
    name = "gpt-2" if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) else "qwen2"
    if name != "gpt-2":
        log.warning("pre-tokenizer %s written as llama.cpp's qwen2 (tokenization inside llama.cpp may differ; "
                    "ARMOR's runtime tokenizes with tokenizers)", pre.get("type"))
    if spec.get("normalizer"):  # GGUF has no key for it; the runtime tokenizes, llama.cpp gets ids
        log.info("the tokenizer's normalizer (%s) is not written to text.gguf: ARMOR's runtime applies it, "
                 "llama.cpp's own tokenizer would not", spec["normalizer"].get("type"))
    return tokens, types, merges, name


def write_f32(model, tokenizer, path: Path, chat_template: str | None, embeddings_sha256: str) -> Path:
    """Write the f32 text.gguf to `path` (the caller renames it into place)."""
    import gguf

    cfg, text = model.config, model.mllm.config.text_config
    arch, tensors = decoder_tensors(model)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"armor-{cfg.preset}")
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_context_length(int(cfg.context_length))
    w.add_embedding_length(int(text.hidden_size))
    w.add_block_count(int(text.num_hidden_layers))
    w.add_feed_forward_length(int(text.intermediate_size))
    w.add_head_count(int(text.num_attention_heads))
    w.add_head_count_kv(int(text.num_key_value_heads))
    w.add_key_length(int(cfg.head_dim))
    w.add_value_length(int(cfg.head_dim))
    w.add_layer_norm_rms_eps(float(text.rms_norm_eps))
    rope = (getattr(text, "rope_parameters", None) or {}).get("rope_theta") or getattr(text, "rope_theta", None)
    w.add_rope_freq_base(float(rope or 10000.0))
    if arch == "llama":
        w.add_rope_dimension_count(int(cfg.head_dim))
    w.add_vocab_size(int(cfg.vocab_size))
    tokens, types, merges, pre = vocabulary(tokenizer, cfg)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(int(cfg.eos_token_id))
    w.add_pad_token_id(int(cfg.pad_token_id))
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    w.add_uint32(C.GGUF_KEY_FORMAT_VERSION, C.GGUF_FORMAT_VERSION)
    for key, value in ((C.GGUF_KEY_N_TEXT_VOCAB, cfg.n_text_vocab), (C.GGUF_KEY_N_CODES, cfg.n_codes),
                       (C.GGUF_KEY_CODE_OFFSET, cfg.code_offset), (C.GGUF_KEY_IMG_BOS, cfg.img_bos_id),
                       (C.GGUF_KEY_IMG_END, cfg.img_end_id), (C.GGUF_KEY_IMG_PAD, cfg.img_pad_id),
                       (C.GGUF_KEY_IMAGE_CONTEXT, cfg.image_token_id), (C.GGUF_KEY_N_IMAGE_TOKENS, cfg.n_image_tokens),
                       (C.GGUF_KEY_ADAPTER_CONTEXT_START, model.adapter.context_start)):
        w.add_uint32(key, int(value))
    w.add_array(C.GGUF_KEY_IMAGE_GRID, [int(g) for g in cfg.image_grid])
    w.add_float32(C.GGUF_KEY_CFG_SCALE, float(cfg.cfg_scale))
    w.add_string(C.GGUF_KEY_EMBEDDINGS_SHA256, embeddings_sha256)
    for name, array in tensors:
        w.add_tensor(name, array.astype(np.float32, copy=False))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _fsync(path)
    return path


def quantize(src: Path, dst: Path, gguf_type: str, threads: int | None = None) -> Path:
    """`src` (f32) -> `dst` of `gguf_type` with llama.cpp's own quantizer."""
    try:
        import llama_cpp
    except ImportError as e:
        raise GGUFExportError(f"--gguf-type {gguf_type} needs llama.cpp's quantizer: pip install "
                              f"'armor-edge[gguf]' (llama-cpp-python); f32 needs only gguf") from e
    from runtime.backends.llamacpp import route_logs

    route_logs()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[gguf_type]
    params.nthread = int(threads or os.cpu_count() or 1)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise GGUFExportError(f"llama.cpp's quantizer failed ({rc}) turning {src.name} into {gguf_type}")
    _fsync(dst)
    return dst


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# --- verification ------------------------------------------------------------------------------
def verification_prompts(tokenizer, n_image_tokens: int) -> list[list[int]]:
    """A few chat prompts of the shapes world (ids), text only (llama.cpp reads ids here)."""
    from runtime.chat import format_chat

    texts = ["what is 3 plus 4?", "draw a large red circle at the top left and a small blue square in the center.",
             "draw a picture with 3 shapes and tell me what it shows.", "describe a green triangle."]
    return [tokenizer.encode(format_chat([{"role": "user", "content": t}], n_image_tokens),
                             add_special_tokens=False).ids for t in texts]


def _text_logits(full: np.ndarray, n_text: int, img_bos: int) -> np.ndarray:
    return np.concatenate([full[..., :n_text], full[..., img_bos:img_bos + 1]], -1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def run_prompts(path: Path, prompts: list[list[int]], threads: int | None = None,
                also_layer: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(hidden [T, W], full logits [T, n_vocab]) of every prompt through llama.cpp (f32 KV cache;
    W = H, or 2H with the adapter's earlier layer `also_layer`)."""
    from runtime.backends.llamacpp import LlamaText

    with LlamaText(path, n_ctx=max(len(p) for p in prompts) + 8, n_seq=1, threads=threads,
                   also_layer=also_layer) as engine:
        out = []
        for ids in prompts:
            engine.clear()
            hidden, logits = engine.decode([(0, 0, np.asarray(ids, np.int64), None)], all_logits=True)
            out.append((hidden[0], logits[0]))
        return out


def verify(model, tokenizer, path: Path, gguf_type: str, reference: Path | None = None,
           threads: int | None = None) -> dict:
    """The accuracy report of `path`: f32 against PyTorch (max |diff| of hidden states and text
    logits, top-1 agreement); a quantized type also against the f32 file `reference` (top-1
    agreement and mean KL of the text head's distribution), with its gates."""
    import torch

    cfg = model.config
    prompts = verification_prompts(tokenizer, cfg.n_image_tokens)
    t0 = time.time()
    got = run_prompts(path, prompts, threads, also_layer=cfg.adapter_reads)
    report: dict = {"type": gguf_type, "prompts": len(prompts), "tokens": sum(map(len, prompts)),
                    "kv_cache": "f32", "text_head": "llama.cpp (the same decode as the hidden states)"}
    if gguf_type == "f32":
        dh = dl = 0.0
        agree = n = 0
        with torch.no_grad():
            for ids, (hidden, full) in zip(prompts, got):
                x = model.embed(torch.tensor([ids]))
                h, _ = model.decode(x, position_ids=torch.arange(len(ids))[None])
                ref = model.text_logits(h)[0].numpy()
                mine = _text_logits(full, cfg.n_text_vocab, cfg.img_bos_id)
                dh = max(dh, float(np.abs(h[0].numpy() - hidden).max()))
                dl = max(dl, float(np.abs(ref - mine).max()))
                agree += int((ref.argmax(-1) == mine.argmax(-1)).sum())
                n += len(ids)
        report.update(against="pytorch", max_abs_diff_hidden=dh, max_abs_diff_logits=dl, top1_agreement=agree / n,
                      atol=F32_ATOL, passed=bool(dh <= F32_ATOL and dl <= F32_ATOL))
    else:
        base = run_prompts(reference, prompts, threads)
        kl, agree, n = [], 0, 0
        for (_, full), (_, ref_full) in zip(got, base):
            p = _log_softmax(_text_logits(ref_full, cfg.n_text_vocab, cfg.img_bos_id))
            q = _log_softmax(_text_logits(full, cfg.n_text_vocab, cfg.img_bos_id))
            kl += list((np.exp(p) * (p - q)).sum(-1))
            agree += int((p.argmax(-1) == q.argmax(-1)).sum())
            n += len(p)
        top1, min_top1_kl = agree / n, GATES[gguf_type]
        report.update(against="f32 text.gguf", top1_agreement=top1, kl_mean=float(np.mean(kl)),
                      kl_max=float(np.max(kl)), gates={"min_top1": min_top1_kl[0], "max_kl_mean": min_top1_kl[1]},
                      passed=bool(top1 >= min_top1_kl[0] and float(np.mean(kl)) <= min_top1_kl[1]))
    report["seconds"] = round(time.time() - t0, 2)
    return report


def end_to_end(bundle_dir: Path, manifest: dict, candidate: Path, threads: int | None = None) -> dict:
    """VQA accuracy and ShapeEval all-correct of the runtime on llama.cpp with `candidate` as
    the bundle's text.gguf. The bundle is viewed through hard links in a hidden temporary folder
    of `bundle_dir` holding no manifest.json (never a bundle by itself), removed afterwards."""
    import shutil
    import tempfile

    from runtime.bundle import open_bundle, sha256
    from runtime.model import BundleModel
    from runtime.pipeline import ArmorPipeline
    from training_ref.evaluate import evaluation_sets, messages_for, score_outputs

    draft = json.loads(json.dumps(manifest))
    draft["files"][C.GGUF_FILE] = {"role": "text_gguf", "dtype": "candidate", "bytes": candidate.stat().st_size,
                                   "sha256": sha256(candidate)}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=".text-gguf-eval-", suffix=".tmp", dir=bundle_dir) as tmp:
        view = Path(tmp)
        for name in draft["files"]:
            src = candidate if name == C.GGUF_FILE else bundle_dir / name
            (view / name).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, view / name)
            except OSError:  # a file system without hard links
                shutil.copy2(src, view / name)
        sets = evaluation_sets(E2E_PROMPTS["vqa"], E2E_PROMPTS["t2i"], 0, canonical=True)
        bundle = open_bundle(view, verify_hashes=False, manifest=draft)
        with ArmorPipeline(BundleModel.open(bundle, backend="llamacpp", threads=threads)) as pipe:
            scores = {kind: score_outputs(kind, samples, [pipe.chat(messages_for(x), max_new_tokens=E2E_BUDGETS[kind])
                                                          for x in samples]) for kind, samples in sets.items()}
    return {"vqa_accuracy": scores["vqa"]["vqa_accuracy"], "shapeeval_all_correct": scores["t2i"]["all_correct"],
            "n_vqa": len(sets["vqa"]), "n_t2i": len(sets["t2i"]), "seconds": round(time.time() - t0, 1)}


def end_to_end_gates(f32: dict, quant: dict) -> dict:
    """Drops in points (f32 minus quantized, x100) against armor-calibrate's limits."""
    drops = {k: round(100 * (f32[k] - quant[k]), 2) for k in MAX_DROP_POINTS}
    failed = [k for k, d in drops.items() if d > MAX_DROP_POINTS[k] + 1e-9]
    return {"f32": f32, "quantized": quant, "drop_points": drops, "max_drop_points": dict(MAX_DROP_POINTS),
            "failed": failed, "passed": not failed}


# --- into a bundle -------------------------------------------------------------------------------
def export_gguf(checkpoint: Path, out: Path, gguf_type: str = "f32", verify_file: bool = True,
                overwrite: bool = False, force: bool = False, threads: int | None = None, **onnx_options) -> dict:
    """Add text.gguf of `gguf_type` to the bundle `out` (exporting the ONNX bundle first when
    `out` holds none); returns the updated manifest."""
    from armor_export import manifest as mf
    from armor_export.export import export_bundle
    from runtime.bundle import open_bundle, sha256
    from training_ref.checkpoint import load_checkpoint, read_config

    if gguf_type not in C.GGUF_TYPES:
        raise GGUFExportError(f"--gguf-type must be one of {', '.join(C.GGUF_TYPES)}, got {gguf_type!r}")
    if gguf_type != "f32":
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            raise GGUFExportError(f"--gguf-type {gguf_type} needs llama.cpp's quantizer: pip install "
                                  f"'armor-edge[gguf]' (llama-cpp-python); f32 needs only gguf") from e
    cfg = read_config(checkpoint)
    out = Path(out)
    if not (out / C.MANIFEST_FILE).is_file():
        export_bundle(checkpoint, out, overwrite=overwrite, progress=onnx_options.pop("progress", False),
                      **onnx_options)
    bundle = open_bundle(out)
    manifest = bundle.manifest
    if C.GGUF_FILE in manifest["files"] and not overwrite:
        raise GGUFExportError(f"{out} already holds a {C.GGUF_FILE}; pass --overwrite to replace it")
    m = manifest["model"]
    if (m["vocab_size"], m["hidden_size"], m["n_layers"]) != (cfg.vocab_size, cfg.hidden_size,
                                                             cfg.text_config.num_hidden_layers):
        raise GGUFExportError(f"the bundle in {out} is of another model than {checkpoint}; give its own folder")
    t0 = time.time()
    model, tokenizer = load_checkpoint(checkpoint)
    table = model.embedding.table().detach().numpy().astype(bundle.embeddings.dtype)
    if not np.array_equal(table, np.asarray(bundle.embeddings)):
        raise GGUFExportError(f"the bundle in {out} was exported from another checkpoint than {checkpoint} "
                              f"(its embeddings differ); give its own folder or re-export it")
    emb_sha = manifest["files"][C.EMBEDDINGS_FILE]["sha256"]
    f32_tmp, final_tmp = out / (C.GGUF_FILE + ".f32.tmp"), out / (C.GGUF_FILE + ".tmp")
    try:
        write_f32(model, tokenizer, f32_tmp, manifest.get("chat_template"), emb_sha)
        if gguf_type == "f32":
            os.replace(f32_tmp, final_tmp)
        else:
            quantize(f32_tmp, final_tmp, gguf_type, threads)
        seconds = time.time() - t0
        report = {"skipped": True}
        if verify_file:
            report = verify(model, tokenizer, final_tmp, gguf_type, reference=f32_tmp if gguf_type != "f32" else None,
                            threads=threads)
            if gguf_type != "f32" and (report["passed"] or force):  # the answers too: ShapeEval and VQA
                report["logits_passed"] = report["passed"]
                e2e = end_to_end_gates(end_to_end(out, manifest, f32_tmp, threads),
                                       end_to_end(out, manifest, final_tmp, threads))
                report["end_to_end"] = e2e
                report["passed"] = bool(report["passed"] and e2e["passed"])
            if not report["passed"] and not force:
                raise GGUFExportError(f"{C.GGUF_FILE} ({gguf_type}) failed its verification ({_summary(report)}); "
                                      f"pass --force to keep it anyway")
        if C.GGUF_FILE in manifest["files"]:  # from here until the last write the old entry is gone
            manifest["files"].pop(C.GGUF_FILE)
            manifest.pop("gguf", None)
            mf.write_manifest(out, manifest)
        os.replace(final_tmp, out / C.GGUF_FILE)
        path = out / C.GGUF_FILE
        manifest["files"][C.GGUF_FILE] = {"role": "text_gguf", "dtype": gguf_type, "bytes": path.stat().st_size,
                                          "sha256": sha256(path)}
        manifest["gguf"] = {"file": C.GGUF_FILE, "type": gguf_type, "architecture": decoder_architecture(model),
                            "format_version": C.GGUF_FORMAT_VERSION, "text_head": "llama.cpp",
                            "hidden_states": "llama.cpp (embeddings output, pooling none)",
                            "step_bytes": step_bytes(path), "export_seconds": round(seconds, 2),
                            "verification": report}
        mf.write_manifest(out, manifest)
    finally:
        for f in (f32_tmp, final_tmp):
            f.unlink(missing_ok=True)
    log.info("%s (%s) written to %s in %.1f s", C.GGUF_FILE, gguf_type, out, time.time() - t0)
    return manifest


def step_bytes(path: Path) -> int:
    """Bytes of the tensors one llama.cpp decode step reads: every tensor but `token_embd`
    (of which it reads one row per token); armor-bench's roofline for the llamacpp backend."""
    import gguf

    return int(sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors if t.name != "token_embd.weight"))


def decoder_architecture(model) -> str:
    return ARCHITECTURES.get(model.mllm.config.text_config.model_type, "?")


def _summary(report: dict) -> str:
    keys = ("max_abs_diff_logits", "top1_agreement", "kl_mean")
    parts = [f"{k} {report[k]:.3g}" for k in keys if k in report]
    e2e = report.get("end_to_end") or {}
    parts += [f"{k} drop {e2e['drop_points'][k]:g} points (limit {e2e['max_drop_points'][k]:g})"
              for k in e2e.get("failed", [])]
    return ", ".join(parts)


def gguf_writer_class():
    """gguf-py's writer class (tests patch it to simulate a failed write)."""
    import gguf

    return gguf.GGUFWriter
