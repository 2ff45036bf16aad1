"""Parity on the shipped `tiny`: the exported graphs driven by the runtime's loop give the same
tokens as the PyTorch reference (text, image with CFG, interleaved), and the same ShapeEval /
VQA scores on held-out prompts."""

import numpy as np
import pytest

from runtime import ArmorPipeline, ImageDone, TextDelta
from runtime.sampling import SamplingParams

pytest.importorskip("torch", reason="the PyTorch reference needs the `train` extra")
from training_ref import world  # noqa: E402
from training_ref.evaluate import evaluation_sets, messages_for, score_outputs  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    from training_ref.checkpoint import load_checkpoint

    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module", params=["dynamic", "static"])
def pair(request, reference, tiny_bundle, tiny_static_bundle):
    """(reference model, tokenizer, pipeline) for each decoder cache form of the bundle."""
    bundle = tiny_bundle if request.param == "dynamic" else tiny_static_bundle
    with ArmorPipeline.load(bundle) as pipe:
        assert pipe.manifest["model"]["kv_cache"] == request.param
        yield (*reference, pipe)


def _runtime(pipe, messages, **kw):
    texts, codes, current = [], [], []
    for e in pipe.generate(messages, **kw):
        if isinstance(e, TextDelta):
            current.append(e.text)
        elif isinstance(e, ImageDone):
            texts.append("".join(current).strip())
            current = []
            codes.append(e.codes.reshape(-1).tolist())
    texts.append("".join(current).strip())
    return [t for t in texts if t], codes


def _reference(model, tok, messages, **kw):
    from training_ref.generate import generate

    sampling = SamplingParams(**{k: kw.pop(k) for k in ("temperature", "top_k", "top_p", "seed") if k in kw})
    out, ids = generate(model, tok, messages, sampling=sampling, return_ids=True, **kw)
    cfg, codes, current = model.config, [], None
    for i in ids:
        if i == cfg.img_bos_id:
            current = []
        elif current is not None and cfg.code_offset <= i < cfg.code_offset + cfg.n_codes:
            current.append(i - cfg.code_offset)
        elif current is not None:  # ended early: the missing codes are 0, as in the runtime's ImageDone
            current += [0] * (cfg.n_grid - len(current))
        if current is not None and len(current) == cfg.n_grid:
            codes.append(current)
            current = None
    return [p for p in out if isinstance(p, str)], codes


CASES = {
    "text": [{"role": "user", "content": "what is 3 plus 4?"}],
    "vqa": [{"role": "user", "content": [{"type": "image", "image": world.render(world.sample_scene(np.random.default_rng(5)))},
                                         {"type": "text", "text": "describe the image."}]}],
    "image_cfg": [{"role": "user", "content": "draw a large red circle at the top left and a small blue square in the center."}],
    "interleaved": [{"role": "user", "content": "draw a picture with 3 shapes and tell me what it shows."}],
}


@pytest.mark.parametrize("case, cfg_scale", [(c, 3.0) for c in CASES] + [("image_cfg", 1.0), ("interleaved", 1.0)])
def test_greedy_tokens_match_the_reference(pair, case, cfg_scale):
    """Guidance 3.0 (batch-2 CFG steps) and the shipped default 1.0 (no unconditional row)."""
    model, tok, pipe = pair
    kw = dict(max_new_tokens=48, cfg_scale=cfg_scale)
    rt_text, rt_codes = _runtime(pipe, CASES[case], **kw)
    ref_text, ref_codes = _reference(model, tok, CASES[case], **kw)
    assert rt_text == ref_text
    assert rt_codes == ref_codes
    if case in ("image_cfg", "interleaved"):
        assert len(rt_codes) == 1, "the trained model answers these prompts with an image"


def test_sampled_tokens_match_the_reference_at_a_fixed_seed(pair):
    model, tok, pipe = pair
    kw = dict(max_new_tokens=48, cfg_scale=3.0, temperature=0.8, top_k=40, top_p=0.95, seed=11)
    assert _runtime(pipe, CASES["interleaved"], **kw) == _reference(model, tok, CASES["interleaved"], **dict(kw))
    assert _runtime(pipe, CASES["interleaved"], **kw) == _runtime(pipe, CASES["interleaved"], **kw)


def test_same_scores_on_heldout_prompts(pair):
    from training_ref.generate import generate

    model, tok, pipe = pair
    sets = evaluation_sets(n_vqa=30, n_t2i=12, n_t2ti=4)
    for kind, samples in sets.items():
        budget = 24 if kind == "vqa" else 64
        rt = [pipe.chat(messages_for(s), max_new_tokens=budget, cfg_scale=3.0) for s in samples]
        ref = [generate(model, tok, messages_for(s), max_new_tokens=budget, cfg_scale=3.0) for s in samples]
        assert score_outputs(kind, samples, rt) == score_outputs(kind, samples, ref), kind
