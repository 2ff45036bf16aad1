"""Speculative Jacobi decoding of image codes: exact against sequential decoding.

A mock visual head with known logits (a second-order chain over the segment's codes, its own
table per CFG row) gives the exact distribution of every image; Jacobi-sampled images must
match it (and sequential sampling) within a chi-square test, a deliberately wrong acceptance
rule must fail the same test, and greedy Jacobi must give the sequential codes. On the shipped
`tiny` (slow tier): greedy Jacobi gives the sequential answer with fewer calls."""

import itertools

import numpy as np
import pytest

from runtime.cache import ImageCursor
from runtime.generation import ImageDone, ImageProgress, generate, guided_logits
from runtime.sampling import Sampler, SamplingParams

from tests.runtime.test_generation import MSG, N_CODES, SPACE, V, FakeTokenizer, MockModel

C = N_CODES + 2  # codes, <imgend>, <imgpad>
TABLES = np.random.default_rng(7).normal(0.0, 0.7, (2, N_CODES + 1, N_CODES + 1, 5, C)).astype(np.float32)
TABLES[..., N_CODES] -= 1.5  # <imgend> possible but rare


def chain_logits(row: int, history: list[int]) -> np.ndarray:
    """The visual head's logits [C] after the segment's codes `history` (row 0 cond, 1 uncond)."""
    h = [N_CODES] * 2 + list(history)
    return TABLES[row, h[-2], h[-1], len(history)]


class ChainModel(MockModel):
    """MockModel whose visual head reads the whole segment from its cache (a real autoregressive
    dependence, so truncation mistakes change the logits)."""

    grid = (2, 2)

    def text_logits(self, hidden):
        return super().text_logits(hidden) * 10.0  # the scripted token, even when sampling

    def start_image(self, stream):
        hidden, mask = stream.context()
        self._context = hidden.shape[1]  # segment tokens start at this cache position
        return ImageCursor(self._chain_head, np.float32, 1, (1, 1), self.context_start, hidden, mask)

    def _chain_head(self, feeds):
        hidden, past = feeds["hidden_states"], feeds["past_key_values.0.key"]
        present = np.concatenate([past, hidden[:, None, :, :1]], 2)  # [B, 1, L, 1]: token ids
        b, t = hidden.shape[:2]
        logits = np.zeros((b, t, C), np.float32)
        for r in range(b):
            seq = present[r, 0, :, 0].astype(int).tolist()
            for j in range(t):
                upto = seq[self._context: past.shape[2] + j + 1]  # <imgbos>, codes fed so far
                history = [x - V for x in upto if V <= x < V + N_CODES]
                logits[r, j] = chain_logits(r, history)
        logits[:, :, N_CODES + 1] = 50.0  # <imgpad> must stay masked
        self.adapter_calls.append(t)
        return {"image_logits": logits, "present.0.key": present, "present.0.value": present}


def image_of(model, **kw):
    sampling = SamplingParams(**{k: kw.pop(k) for k in ("temperature", "top_k", "top_p", "seed") if k in kw})
    codes, done = None, 0
    for e in generate(model, FakeTokenizer(), MSG, sampling=sampling, **kw):
        if isinstance(e, ImageProgress):
            assert e.done == done + 1  # one event per accepted code, in order
            done = e.done
        if isinstance(e, ImageDone):
            codes = (tuple(e.codes.reshape(-1)[:done].tolist()), e.complete)
    return codes


def exact_distribution(sampling: SamplingParams, cfg_scale: float) -> dict:
    """P(image) for every image the chain can produce under the sampler's distribution."""
    sampler, out = Sampler(sampling), {}

    def walk(history, prob):
        rows = np.stack([chain_logits(0, history), chain_logits(1, history)])[:, None]
        p = sampler.probabilities(guided_logits(rows, cfg_scale, N_CODES)[0])
        for x in np.flatnonzero(p):
            if x == N_CODES:
                out[(tuple(history), False)] = out.get((tuple(history), False), 0.0) + prob * p[x]
            elif len(history) + 1 == 4:
                out[(tuple(history + [int(x)]), True)] = prob * p[x]
            else:
                walk(history + [int(x)], prob * p[x])

    walk([], 1.0)
    return out


def chi_square(counts: dict, exact: dict, n: int) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, the 1-in-2000 critical value), cells with < 5 expected pooled."""
    stat, pooled_obs, pooled_exp, cells = 0.0, 0, 0.0, 0
    for key, p in exact.items():
        if n * p < 5:
            pooled_obs, pooled_exp = pooled_obs + counts.get(key, 0), pooled_exp + n * p
            continue
        stat += (counts.get(key, 0) - n * p) ** 2 / (n * p)
        cells += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        cells += 1
    assert sum(counts.values()) == n and set(counts) <= set(exact), "an image the model cannot produce"
    df = cells - 1
    z = 3.29  # one-sided 0.0005: Wilson-Hilferty approximation of the chi-square quantile
    return stat, df, df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


SAMPLED = dict(temperature=1.0, top_k=3)
N = 1500


@pytest.mark.parametrize("init", ["above", "repeat", "random"])
def test_sampled_jacobi_keeps_the_models_distribution(init):
    exact = exact_distribution(SamplingParams(**SAMPLED), 2.0)
    assert abs(sum(exact.values()) - 1.0) < 1e-9
    counts: dict = {}
    for seed in range(N):
        key = image_of(ChainModel([V, SPACE.eos]), cfg_scale=2.0, image_decoding="jacobi", jacobi_window=4,
                       jacobi_init=init, **SAMPLED, seed=seed)
        counts[key] = counts.get(key, 0) + 1
    stat, df, critical = chi_square(counts, exact, N)
    assert stat < critical, (stat, df, critical)


def test_sequential_sampling_passes_and_a_wrong_acceptance_rule_fails_the_same_test(monkeypatch):
    exact = exact_distribution(SamplingParams(**SAMPLED), 2.0)
    for decoding, broken in (("sequential", False), ("jacobi", True)):
        if broken:  # accept every draft: what a wrong rule would do
            monkeypatch.setattr(Sampler, "uniform", lambda self: 0.0)
        counts: dict = {}
        for seed in range(N):
            key = image_of(ChainModel([V, SPACE.eos]), cfg_scale=2.0, image_decoding=decoding, jacobi_window=4,
                           jacobi_init="repeat", **SAMPLED, seed=seed)
            counts[key] = counts.get(key, 0) + 1
        stat, df, critical = chi_square(counts, exact, N)
        assert (stat >= critical) == broken, (decoding, stat, critical)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
@pytest.mark.parametrize("window", [2, 3, 4, 8])
def test_greedy_jacobi_gives_the_sequential_codes(cfg_scale, window):
    sequential = ChainModel([V, SPACE.eos])
    expect = image_of(sequential, cfg_scale=cfg_scale)
    for init in ("above", "repeat", "random"):
        model = ChainModel([V, SPACE.eos])
        got = image_of(model, cfg_scale=cfg_scale, image_decoding="jacobi", jacobi_window=window, jacobi_init=init)
        assert got == expect, (init, got, expect)
        assert len(model.adapter_calls) <= len(sequential.adapter_calls)


def test_drafts_that_match_need_fewer_calls_and_the_cache_is_rolled_back():
    """MockModel's head prefers fixed codes per position: drafted from the chain after one call,
    so a window of 4 takes the 4 codes in 2 calls (prefill + one), and the stream then holds the
    codes but the last (as sequentially)."""
    seq, jac = MockModel([V, SPACE.eos]), MockModel([V, SPACE.eos])
    a = [e for e in generate(seq, FakeTokenizer(), MSG, cfg_scale=3.0) if isinstance(e, ImageDone)]
    events = list(generate(jac, FakeTokenizer(), MSG, cfg_scale=3.0, image_decoding="jacobi", jacobi_window=4,
                           jacobi_init="random"))
    b = [e for e in events if isinstance(e, ImageDone)]
    timings = events[-1].timings
    assert a[0].codes.tolist() == b[0].codes.tolist()
    assert timings["image_calls"] <= len(seq.adapter_calls)
    # the conditional row takes the last code and <imgend> after the image, as sequentially
    tail = [e for e in jac.log if e["op"] == "append"][-1]["tokens"][0]
    assert tail == [V + int(b[0].codes.reshape(-1)[-1]), SPACE.img_end]


def test_window_and_init_are_checked():
    from runtime.errors import SamplingError

    for kw in ({"jacobi_window": 1}, {"jacobi_window": 65}, {"jacobi_init": "zeros"}):
        with pytest.raises(SamplingError):
            image_of(ChainModel([V, SPACE.eos]), image_decoding="jacobi", **kw)


def test_exact_distribution_is_a_distribution():
    for sampling, scale in itertools.product([SamplingParams(**SAMPLED), SamplingParams(temperature=0.7, top_p=0.8)],
                                             [1.0, 2.0]):
        assert abs(sum(exact_distribution(sampling, scale).values()) - 1.0) < 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("bundle_name", ["tiny_bundle", "tiny_static_bundle"])
def test_greedy_jacobi_on_tiny_gives_the_sequential_answer(request, bundle_name):
    from runtime import ArmorPipeline

    prompts = ["draw a large red circle at the top left and a small blue square in the center.",
               "draw a picture with 3 shapes and tell me what it shows."]
    with ArmorPipeline.load(request.getfixturevalue(bundle_name)) as pipe:
        for prompt in prompts:
            msgs = [{"role": "user", "content": prompt}]
            runs = {}
            for decoding in ("sequential", "jacobi"):
                events = list(pipe.generate(msgs, max_new_tokens=96, image_decoding=decoding, jacobi_window=8))
                codes = [e.codes.tolist() for e in events if isinstance(e, ImageDone)]
                text = "".join(getattr(e, "text", "") for e in events)
                runs[decoding] = (text, codes, events[-1].timings["image_calls"])
            assert runs["jacobi"][:2] == runs["sequential"][:2] and runs["sequential"][1], prompt
            assert runs["jacobi"][2] < runs["sequential"][2], runs
