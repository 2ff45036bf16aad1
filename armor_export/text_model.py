"""The bundle's `text/` folder: the text path in the layout Optimum and onnxruntime-genai read.

`text/model.onnx` takes `input_ids`, `attention_mask`, `position_ids`,
`past_key_values.{i}.key/.value` and gives `logits` (the original text head) and
`present.{i}.key/.value`, the names Optimum's ONNX decoders use; `genai_config.json` and
the tokenizer files sit beside it so onnxruntime-genai opens the folder as a model. The
text path cannot start an image (it has no `<imgbos>` logit): it is the model's plain LLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from armor_export.graphs import TextModelGraph, export_graph
from runtime.constants import GENAI_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from runtime.graphs import text_model as text_model_spec
from training_ref.model import ArmorModel


def text_spec(model: ArmorModel):
    t = model.mllm.config.text_config
    return text_model_spec(t.num_hidden_layers, t.num_key_value_heads, model.config.head_dim,
                           model.config.n_text_vocab)


def export_text_model(model: ArmorModel, tokenizer, out: Path, dtype: str) -> list[tuple[Path, str]]:
    """Write `out/` (model.onnx [+ .data], genai_config.json, tokenizer files); returns (path, role)."""
    from armor_export.onnx_files import convert_fp16

    out.mkdir(parents=True, exist_ok=True)
    spec = text_spec(model)
    t = model.mllm.config.text_config
    kv, hd = t.num_key_value_heads, model.config.head_dim
    g = torch.Generator().manual_seed(0)
    example = (torch.randint(0, model.config.n_text_vocab, (2, 3), generator=g), torch.ones(2, 7, dtype=torch.long),
               torch.arange(4, 7).expand(2, 3).contiguous(),
               *[torch.randn(2, kv, 4, hd, generator=g) for _ in range(2 * t.num_hidden_layers)])
    written = export_graph(TextModelGraph(model).eval(), example, spec, out / "model.onnx")
    if dtype == "fp16":
        written = convert_fp16(written[0])
    tokenizer.save(str(out / TOKENIZER_FILE))
    cfg = model.config
    # onnxruntime-genai's tokenizer (onnxruntime-extensions) reads tokenizer.json; any byte-level
    # BPE class name (Qwen2Tokenizer, GPT2Tokenizer) gives the same ids as `tokenizers` (0.18).
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "eos_token": tokenizer.id_to_token(cfg.eos_token_id),
        "pad_token": tokenizer.id_to_token(cfg.pad_token_id), "bos_token": None,
        "model_max_length": cfg.context_length, "add_prefix_space": False,
    }, indent=2))
    (out / GENAI_CONFIG_FILE).write_text(json.dumps(genai_config(model, dtype), indent=2))
    files = [(p, "text_model" if i == 0 else "text_model.weights") for i, p in enumerate(written)]
    return files + [(out / TOKENIZER_FILE, "text_tokenizer"), (out / TOKENIZER_CONFIG_FILE, "text_tokenizer_config"),
                    (out / GENAI_CONFIG_FILE, "genai_config")]


def genai_config(model: ArmorModel, dtype: str) -> dict:
    t, cfg = model.mllm.config.text_config, model.config
    # onnxruntime-genai (0.18) rejects unknown keys and unknown model types. The graph is our own
    # export, not genai's builder's: "qwen2" and "llama" both select its plain decoder-only model.
    return {
        "model": {
            "type": "qwen2" if t.model_type == "qwen2" else "llama",
            "bos_token_id": cfg.pad_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
            "context_length": cfg.context_length, "vocab_size": cfg.n_text_vocab,
            "decoder": {
                "filename": "model.onnx",
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": model.config.head_dim, "hidden_size": t.hidden_size,
                "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
                "num_key_value_heads": t.num_key_value_heads,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": cfg.context_length,
                   "min_length": 0, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0, "early_stopping": True, "length_penalty": 1.0,
                   "no_repeat_ngram_size": 0, "diversity_penalty": 0.0},
    }
