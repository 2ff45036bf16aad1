"""The decoder through ORT IO binding (cache kept as OrtValues) gives what numpy feeds give:
the same hidden states and caches step by step, and the same generation, image included."""

import numpy as np
import onnxruntime as ort
import pytest

from runtime.bundle import open_bundle
from runtime.engine import BundleModel
from runtime.generation import Done, ImageDone, TextDelta, generate
from runtime.sampling import SamplingParams


class ForcedImage(BundleModel):
    """The real graphs; the text head never picks end-of-turn and its third call picks `<imgbos>`,
    so random weights still go through an image (CFG merge, adapter, back to text)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.text_calls = 0

    def text_logits(self, hidden):
        logits = super().text_logits(hidden)
        logits[..., self.space.eos] = -np.inf
        if self.text_calls == 2:
            logits[..., self.space.n_text_vocab] = 1e9  # head index V is `<imgbos>`
        self.text_calls += 1
        return logits


@pytest.fixture(scope="module")
def models(random_bundle):
    """(numpy path, IO-binding path) over the same sessions."""
    plain = ForcedImage.open(open_bundle(random_bundle))
    yield plain, ForcedImage(plain.bundle, plain.backends, io_binding=True)
    plain.close()


def _host(past):
    return [p if isinstance(p, np.ndarray) else p.numpy() for p in past]


@pytest.mark.parametrize("batch", [1, 2])
def test_bound_decode_matches_numpy_over_prefill_and_cached_steps(models, batch):
    plain, bound = models
    rng = np.random.default_rng(batch)
    n = 7
    ids = rng.integers(0, plain.space.n_text_vocab, (batch, n))
    mask = np.ones((batch, n), np.int64)
    if batch == 2:
        mask[1, :2] = 0  # a left-padded row, as in a CFG pair
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    past_a, past_b = plain.empty_past(batch), bound.empty_past(batch)
    x = plain.embed(ids)
    for step in range(6):  # the prefill, then five cached single-token steps
        h_a, past_a = plain.decode(x, mask, pos, past_a)
        h_b, past_b = bound.decode(x, mask, pos, past_b)
        assert all(isinstance(p, np.ndarray) for p in past_a)
        assert all(isinstance(p, ort.OrtValue) for p in past_b), "the IO-binding cache must stay an OrtValue"
        assert isinstance(h_b, np.ndarray)
        np.testing.assert_allclose(h_b, h_a, rtol=1e-6, atol=1e-6, err_msg=f"hidden states, step {step}")
        assert len(past_b) == len(past_a) == 2 * plain.n_layers
        for i, (a, b) in enumerate(zip(past_a, _host(past_b))):
            assert b.shape == a.shape == (batch, plain.kv_shape[0], n + step, plain.kv_shape[1])
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6, err_msg=f"present {i}, step {step}")
        token = rng.integers(0, plain.space.n_text_vocab, (batch, 1))
        x = plain.embed(token)
        mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], 1)
        pos = pos[:, -1:] + 1


def _events(model, tokenizer):
    model.text_calls = 0
    messages = [{"role": "user", "content": "draw a red circle."}]
    texts, codes, done = [], [], None
    for e in generate(model, tokenizer, messages, max_new_tokens=6, cfg_scale=3.0,
                      sampling=SamplingParams(temperature=0.9, top_k=50, seed=3)):
        if isinstance(e, TextDelta):
            texts.append(e.text)
        elif isinstance(e, ImageDone):
            codes.append(e.codes.tolist())
        elif isinstance(e, Done):
            done = e
    return "".join(texts), codes, done.text_tokens, done.image_tokens


def test_generation_is_identical_with_and_without_io_binding(models):
    plain, bound = models
    tokenizer = plain.bundle.tokenizer
    a, b = _events(plain, tokenizer), _events(bound, tokenizer)
    assert a[1], "the forced `<imgbos>` must have produced an image"
    assert a[2] > 3, "text must continue after the image (the cache row kept from the CFG pair)"
    assert b == a


def test_run_bound_rejects_unknown_outputs_and_backends_without_it(models):
    plain, _ = models
    with pytest.raises(ValueError, match="not outputs"):
        plain.backends["decoder"].run_bound({}, keep=["present.99.key"])

    class NumpyOnly:
        def run(self, feeds, outputs=None):
            raise AssertionError

    with pytest.raises(ValueError, match="run_bound"):
        BundleModel(plain.bundle, {**plain.backends, "decoder": NumpyOnly()}, io_binding=True)


def test_bench_reports_both_decoder_step_paths(models):
    from runtime.bench import _decoder_step_pair

    plain, _ = models
    out = _decoder_step_pair(plain, [1, 2, 3, 4], steps=2, repeats=1)
    assert set(out) == {"decoder_step_ms", "decoder_step_ms_iobinding", "decoder_step_iobinding_speedup"}
    assert all(np.isfinite(v) and v > 0 for v in out.values())
