"""The engine-owned KV cache on ONNX Runtime: the dynamic form (numpy or IO binding) and the
static form give the same hidden states through every stream operation, and the same answers."""

import numpy as np
import onnxruntime as ort
import pytest

from runtime.backends import open_model
from runtime.bundle import open_bundle
from runtime.cache import ContextFull
from runtime.generation import Done, ImageDone, TextDelta, generate
from runtime.sampling import SamplingParams


@pytest.fixture(scope="module")
def models(random_bundle, random_static_bundle):
    """dynamic numpy, dynamic with IO binding, static: the same weights."""
    dyn = open_bundle(random_bundle)
    out = {"dynamic": open_model(dyn), "iobinding": open_model(dyn, io_binding=True),
           "static": open_model(open_bundle(random_static_bundle))}
    yield out
    for m in out.values():
        m.close()


def _script(model):
    """Every stream operation the loop uses, in an image's order; returns the hidden states seen."""
    rng = np.random.default_rng(0)
    v = model.space.n_text_vocab
    seen = []
    cond = model.start(rng.integers(10, v, 9))
    seen.append(cond.context()[0])
    for t in rng.integers(10, v, 3):
        seen.append(cond.append([t]))
    uncond = model.start(rng.integers(10, v, 5))  # shorter: it gets left-padded
    pair = cond.pair(uncond)
    assert pair.batch == 2 and pair.length == 12 and pair.pads.tolist() == [0, 7]
    seen.append(pair.append([v + 1]))
    seen.append(pair.append([v + 2, v + 3, v + 4]))  # several tokens per call (Jacobi's drafts)
    logits_before = pair.text_logits()
    pair.truncate(pair.length - 2)  # roll back the last two
    seen.append(pair.append([v + 3, v + 4]))
    assert np.allclose(pair.text_logits(), logits_before, atol=1e-5), "rollback + re-append must reproduce"
    hidden, mask = pair.context()
    assert mask[0].all() and not mask[1, :7].any() and mask[1, 7:].all()  # 9 + 3 vs 5 tokens: 7 padded
    seen.append(hidden * mask[..., None])
    row = pair.row(0)
    seen.append(row.append([v + 5, 7]))
    seen.append(row.text_logits())
    return seen


def test_every_cache_form_gives_the_same_hidden_states(models):
    ref = _script(models["dynamic"])
    for name in ("iobinding", "static"):
        got = _script(models[name])
        assert len(got) == len(ref)
        for i, (a, b) in enumerate(zip(ref, got)):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=f"{name}, step {i}")


def test_io_binding_keeps_the_cache_as_ortvalues(models):
    stream = models["iobinding"].start([1, 2, 3])
    stream.append([4])
    assert all(isinstance(p, ort.OrtValue) for p in stream.past)
    with pytest.raises(ValueError, match="not outputs"):
        models["iobinding"].backends["decoder"].run_bound({}, keep=["present.99.key"])


def test_static_cache_capacity_is_the_context(models):
    m = models["static"]
    assert m.context_length == 160
    stream = m.start(list(range(10, 160)))
    with pytest.raises(ContextFull, match="160"):
        stream.append(list(range(10, 21)))


def test_consumed_streams_refuse_further_use(models):
    m = models["dynamic"]
    a, b = m.start([1, 2, 3, 4]), m.start([5, 6])
    pair = a.pair(b)
    with pytest.raises(RuntimeError, match="consumed"):
        a.append([7])
    with pytest.raises(ValueError, match="truncate"):
        pair.truncate(pair.length + 1)


def _answer(model, **kw):
    """Text, a forced image (CFG), text: everything the loop does, compared as plain values."""
    v = model.space.n_text_vocab

    def processor(i, logits):
        logits = logits.copy()
        logits[model.space.eos] = -np.inf
        if i == 2:
            logits[v] = 1e9  # head index V is `<imgbos>`
        return logits

    texts, codes, done = [], [], None
    for e in generate(model, model.bundle.tokenizer, [{"role": "user", "content": "draw a red circle."}],
                      max_new_tokens=6, cfg_scale=3.0, sampling=SamplingParams(**kw), text_processor=processor):
        if isinstance(e, TextDelta):
            texts.append(e.text)
        elif isinstance(e, ImageDone):
            codes.append(e.codes.tolist())
        elif isinstance(e, Done):
            done = e
    return "".join(texts), codes, done.text_tokens, done.image_tokens


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.9, "top_k": 50, "seed": 3}])
def test_generation_is_identical_on_every_cache_form(models, sampling):
    ref = _answer(models["dynamic"], **sampling)
    assert ref[1] and ref[2] > 3, "the forced image must be drawn and text must continue after it"
    for name in ("iobinding", "static"):
        assert _answer(models[name], **sampling) == ref, name
