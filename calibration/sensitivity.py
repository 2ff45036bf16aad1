"""The optional sensitivity pass of the int8 scheme: which quantized nodes hurt a graph most.

For one graph and its calibration feeds: quantize every candidate node (the ranges are
calibrated once and cached), score the graph's first output against fp32 on a slice of the
feeds; if the score misses the graph's target, quantize each node *alone* to measure its own
damage, then leave the worst nodes in float, one at a time, until the target is met or a
third of the nodes are excluded; the shortest such list with the best score is kept (none
when no exclusion helps). Scores: top-1 agreement for the heads' logits, cosine for
hidden states, embeddings and pixels.

It knows onnxruntime sessions and quantize.py; it knows nothing about bundles or the report.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from armor_export.compare import session
from calibration.quantize import cosine, quantize_qdq

log = logging.getLogger(__name__)

# graph -> (score, target): what "keeps accuracy" means for its first output
TARGETS = {"decoder": ("cosine", 0.9995), "text_head": ("top1", 0.99), "visual_head": ("top1", 0.99),
           "vision_encoder": ("cosine", 0.9995), "vq_decoder": ("cosine", 0.9995)}
MAX_EXCLUDED_FRACTION = 1 / 3
EVAL_FEEDS = 32


def _score(kind: str, ref: list[np.ndarray], test: list[np.ndarray]) -> float:
    if kind == "top1":
        return float(np.mean(np.concatenate([(r.argmax(-1) == t.argmax(-1)).ravel() for r, t in zip(ref, test)])))
    return float(np.mean([cosine(r.reshape(r.shape[0], -1), t.reshape(t.shape[0], -1)) for r, t in zip(ref, test)]))


def sensitivity_pass(graph: str, src: Path, feeds: list[dict], tmp: Path, *, op_types: tuple[str, ...],
                     method: str, exclude: list[str], symmetric_activations: bool,
                     progress: bool = True) -> tuple[list[str], dict]:
    """-> (nodes to leave in float, a record of the scores) for `graph` at `src`."""
    kind, target = TARGETS[graph]
    cache = tmp / f"{graph}.ranges.json"
    evaluation = feeds[:: max(1, len(feeds) // EVAL_FEEDS)][:EVAL_FEEDS]
    ref_session = session(src)
    out = ref_session.get_outputs()[0].name
    ref = [ref_session.run([out], f)[0] for f in evaluation]

    def run(excluded: list[str]) -> float:
        path = tmp / f"{graph}.sensitivity.onnx"
        quantize_qdq(src, path, feeds, op_types=op_types, method=method, exclude=exclude + excluded,
                     symmetric_activations=symmetric_activations, cache=cache)
        quantized = session(path)
        return _score(kind, ref, [quantized.run([out], f)[0] for f in evaluation])

    all_quantized = run([])
    record = {"score": kind, "target": target, "all_quantized": round(all_quantized, 6), "excluded": []}
    if all_quantized >= target:
        record["final"] = record["all_quantized"]
        return [], record
    candidates = [n for n in _candidates(src, op_types) if n not in set(exclude)]
    solo = {}
    for node in tqdm(candidates, desc=f"sensitivity: {graph}", disable=not progress):
        solo[node] = 1.0 - run([n for n in candidates if n != node])  # only `node` quantized
    ranked = sorted(candidates, key=solo.get, reverse=True)
    scores = [all_quantized]  # scores[k]: the k worst nodes in float
    for k in range(1, max(1, round(MAX_EXCLUDED_FRACTION * len(candidates))) + 1):
        scores.append(run(ranked[:k]))
        if scores[-1] >= target:
            break
    k = int(np.argmax(scores))  # the fewest exclusions with the best score (none if nothing helped)
    excluded, score = ranked[:k], scores[k]
    record.update(excluded=excluded, final=round(score, 6), tried=[round(x, 6) for x in scores],
                  solo_damage={n: round(solo[n], 6) for n in ranked[: max(5, len(excluded))]})
    log.info("%s: %s %.5f with every node, %.5f with %d left in float (%s)", graph, kind, all_quantized, score,
             len(excluded), ", ".join(excluded))
    return excluded, record


def _candidates(src: Path, op_types: tuple[str, ...]) -> list[str]:
    import onnx

    from calibration.quantize import weight_nodes

    return weight_nodes(onnx.load(str(src)), op_types)
