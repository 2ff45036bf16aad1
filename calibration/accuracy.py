"""The accuracy report of a quantized bundle against its fp32 source.

Per graph, on held-out inputs that calibration never saw:
- text mode: prompt + reference answer teacher-forced through vision encoder, decoder and
  text head of each bundle; top-1 agreement and KL(fp32 || quantized) of the logits at the
  answer positions (VQA set);
- image mode: prompt + `<imgbos>` + the reference image's codes (the held-out scene encoded
  by the checkpoint's VQGAN) teacher-forced through decoder and visual head; the same metrics
  over the grid positions (`<imgpad>` excluded, as the runtime never samples it);
- VQ decoder: PSNR of the quantized decoder's pixels against fp32 on those code grids;
- vision encoder: mean cosine of the image embeddings;
- text model (text/model.onnx, the onnxruntime-genai path, when the bundle has one): text-only
  prompts + reference answers (t2t) through it, the same logit metrics.
End to end: the runtime's `chat` (greedy, the model's default guidance) on the held-out VQA and t2i prompts of
`training_ref.evaluate`, scored by its `score_outputs`: VQA accuracy and ShapeEval
all-correct, fp32 vs quantized, and the drops in points that the gates judge.

It knows the runtime's model calls and the world's evaluation sets; it knows nothing about
how the graphs were quantized or how bundles are written.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from tqdm import tqdm

from calibration.quantize import cosine
from runtime.constants import IM_END
from runtime.model import BundleModel
from runtime.generation import prepare_prompt
from runtime.image import preprocess
from runtime.pipeline import ArmorPipeline
from training_ref import world
from training_ref.evaluate import evaluation_sets, messages_for, score_outputs

log = logging.getLogger(__name__)

BUDGETS = {"vqa": 24, "t2i": 64}  # max new text tokens, as in training_ref.evaluate
_FP32_RESULTS: dict[tuple, dict] = {}  # end-to-end scores of a source bundle, per process


# --- logits ------------------------------------------------------------------------------------------
def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare_logits(ref: np.ndarray, test: np.ndarray) -> dict:
    """Top-1 agreement and mean KL(ref || test) in nats over the rows of [N, V] logits."""
    lp, lq = _log_softmax(ref), _log_softmax(test)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {"top1_agreement": float(np.mean(ref.argmax(-1) == test.argmax(-1))), "kl": float(np.mean(kl)),
            "kl_max": float(np.max(kl)), "positions": int(len(ref))}


def _hidden(model: BundleModel, ids: list[int], images: list) -> np.ndarray:
    """One prefill of `ids` (input images in their placeholders) -> hidden states [1, T, H]."""
    image_embeds = None
    if images:
        image_embeds = model.encode_images(np.stack([preprocess(im, model.vision_size) for im in images]))
    return model.start(ids, image_embeds).context()[0]


def text_mode_logits(model: BundleModel, tokenizer, samples: list[world.Sample]) -> np.ndarray:
    """Text-head logits [N, V + 1] at every position that predicts a reference answer token or `<|im_end|>`."""
    rows = []
    for s in samples:
        prompt, images = prepare_prompt(model, tokenizer, messages_for(s))
        answer = tokenizer.encode(s.answer_text() + IM_END, add_special_tokens=False).ids
        hidden = _hidden(model, prompt + answer, images)
        rows.append(model.text_logits(hidden[:, len(prompt) - 1: len(prompt) + len(answer) - 1])[0])
    return np.concatenate(rows)


def image_mode_logits(model: BundleModel, tokenizer, samples: list[world.Sample],
                      grids: list[np.ndarray]) -> np.ndarray:
    """Visual-head logits [N, n_codes + 1] over the grid positions of prompt + `<imgbos>` + reference codes."""
    space, n = model.space, model.grid[0] * model.grid[1]
    rows = []
    for s, grid in zip(samples, grids):
        prompt, _ = prepare_prompt(model, tokenizer, messages_for(s))
        ids = prompt + [space.img_bos] + [space.image_index_to_id(int(c)) for c in np.asarray(grid).ravel()]
        hidden = _hidden(model, ids, [])[:, : len(prompt) + n]  # context, `<imgbos>`, codes but the last
        p = len(prompt) + 1
        cursor = model.image_cursor(hidden[:, :p], np.ones((1, p), np.int64))
        logits = np.concatenate([cursor.prefill()[:, None], cursor.append(hidden[:, p:])], 1)  # [1, n, C]
        rows.append(logits[0, :, : space.n_codes + 1])  # <imgpad> is never sampled
    return np.concatenate(rows)


def text_model_logits(path, tokenizer, samples: list[world.Sample], n_layers: int, kv_shape: tuple) -> np.ndarray:
    """Logits of text/model.onnx [N, V] at the positions that predict the reference answers of text-only samples."""
    from runtime.backends.ort import OrtBackend
    from runtime.chat import format_chat
    from runtime.graphs import past_names

    rows = []
    with OrtBackend(path) as backend:
        for s in samples:
            prompt = tokenizer.encode(format_chat(messages_for(s), 0), add_special_tokens=False).ids
            ids = prompt + tokenizer.encode(s.answer_text() + IM_END, add_special_tokens=False).ids
            t = len(ids)
            feeds = {"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, t), np.int64),
                     "position_ids": np.arange(t, dtype=np.int64)[None],
                     **{n: np.zeros((1, kv_shape[0], 0, kv_shape[1]), np.float32) for n in past_names(n_layers)}}
            rows.append(backend.run(feeds, ["logits"])["logits"][0, len(prompt) - 1: t - 1])
    return np.concatenate(rows)


def text_only_samples(n: int, seed: int = 4321) -> list[world.Sample]:
    """`n` text-only (t2t) samples; t2t has no scenes, hence no held-out split: a seed of its own."""
    rng = np.random.default_rng(seed)
    return [world.make_sample(rng, "t2t") for _ in range(n)]


def psnr(ref: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of pixels in [-1, 1], as the 8-bit images the runtime makes of them."""
    a = np.clip((np.asarray(ref, np.float64) + 1) * 127.5, 0, 255)
    b = np.clip((np.asarray(test, np.float64) + 1) * 127.5, 0, 255)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def graph_report(ref: BundleModel, test: BundleModel, tokenizer, sets: dict, grids: list[np.ndarray] | None,
                 quantized: set[str], text_paths: tuple | None = None) -> dict:
    """Per-graph metrics (see the module docstring); graphs left in fp32 are marked unchanged."""
    report: dict = {}
    vqa = sets["vqa"]
    report["text_mode"] = compare_logits(text_mode_logits(ref, tokenizer, vqa), text_mode_logits(test, tokenizer, vqa))
    if grids is None:
        report["image_mode"] = {"skipped": "no checkpoint to encode reference images (pass --checkpoint)"}
    else:
        t2i = sets["t2i"]
        report["image_mode"] = compare_logits(image_mode_logits(ref, tokenizer, t2i, grids),
                                              image_mode_logits(test, tokenizer, t2i, grids))
    if "vq_decoder" not in quantized:
        report["vq_decoder"] = {"unchanged": True}
    elif grids is None:
        report["vq_decoder"] = {"skipped": "no checkpoint to encode reference images (pass --checkpoint)"}
    else:
        values = [psnr(ref.decode_image(g[None]), test.decode_image(g[None])) for g in grids]
        report["vq_decoder"] = {"psnr_db": float(np.mean(values)), "psnr_db_min": float(np.min(values)),
                                "images": len(values)}
    if "vision_encoder" not in quantized:
        report["vision_encoder"] = {"unchanged": True}
    else:
        pixels = [preprocess(world.render(s.image, 64), ref.vision_size)[None] for s in vqa]
        cos = [cosine(ref.encode_images(p), test.encode_images(p)) for p in pixels]
        report["vision_encoder"] = {"cosine": float(np.mean(cos)), "cosine_min": float(np.min(cos)),
                                    "images": len(cos)}
    if text_paths is not None:
        if "text_model" not in quantized:
            report["text_model"] = {"unchanged": True}
        else:
            samples = text_only_samples(len(vqa))
            m = ref.bundle.model
            args = (tokenizer, samples, m["n_layers"], (m["n_kv_heads"], m["head_dim"]))
            report["text_model"] = compare_logits(text_model_logits(text_paths[0], *args),
                                                  text_model_logits(text_paths[1], *args))
    return report


# --- end to end --------------------------------------------------------------------------------------
def end_to_end(pipe: ArmorPipeline, sets: dict, label: str, progress: bool = True) -> dict:
    """VQA accuracy and ShapeEval of the runtime's answers on the held-out sets."""
    out, t0 = {}, time.perf_counter()
    for kind, samples in sets.items():
        answers = [pipe.chat(messages_for(s), max_new_tokens=BUDGETS[kind])  # the model's default guidance
                   for s in tqdm(samples, desc=f"evaluation: {label} {kind}", disable=not progress)]
        out[kind] = score_outputs(kind, samples, answers)
    return {"vqa_accuracy": out["vqa"]["vqa_accuracy"], "shapeeval_all_correct": out["t2i"]["all_correct"],
            "shapeeval": out["t2i"], "seconds": round(time.perf_counter() - t0, 1)}


def fp32_end_to_end(pipe: ArmorPipeline, key: tuple, sets: dict, progress: bool = True) -> dict:
    """`end_to_end` of the fp32 source, computed once per process for the same bundle and sets."""
    if key not in _FP32_RESULTS:
        _FP32_RESULTS[key] = end_to_end(pipe, sets, "fp32", progress)
    return _FP32_RESULTS[key]


def gates(fp32: dict, quant: dict, max_shapeeval_drop: float, max_vqa_drop: float) -> dict:
    """Drops in points (fp32 minus quantized, x100) and whether they are within the limits."""
    drops = {"shapeeval_all_correct": 100 * (fp32["shapeeval_all_correct"] - quant["shapeeval_all_correct"]),
             "vqa_accuracy": 100 * (fp32["vqa_accuracy"] - quant["vqa_accuracy"])}
    limits = {"shapeeval_all_correct": max_shapeeval_drop, "vqa_accuracy": max_vqa_drop}
    failed = [k for k in drops if drops[k] > limits[k] + 1e-9]
    return {"drop_points": {k: round(v, 2) for k, v in drops.items()}, "max_drop_points": limits,
            "failed": failed, "passed": not failed}


def report(ref: ArmorPipeline, test: ArmorPipeline, *, n_vqa: int, n_t2i: int, grids_fn, quantized: set[str],
           fp32_key: tuple, max_shapeeval_drop: float, max_vqa_drop: float, text_paths: tuple | None = None,
           progress: bool = True) -> dict:
    """The whole accuracy report. `grids_fn(samples)` encodes the t2i references (or returns None)."""
    sets = evaluation_sets(n_vqa, n_t2i, 0, canonical=True)
    grids = grids_fn(sets["t2i"])
    graphs = graph_report(ref.model, test.model, ref.tokenizer, sets, grids, quantized, text_paths)
    fp32 = fp32_end_to_end(ref, fp32_key + (n_vqa, n_t2i), sets, progress)
    quant = end_to_end(test, sets, "quantized", progress)
    return {"graphs": graphs,
            "end_to_end": {"fp32": fp32, "quantized": quant, "n_vqa": n_vqa, "n_t2i": n_t2i,
                           "cfg_scale": ref.model.cfg_scale, "max_new_tokens": BUDGETS},
            "gates": gates(fp32, quant, max_shapeeval_drop, max_vqa_drop)}
