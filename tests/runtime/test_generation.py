"""The generation loop against a mock model with known logits: switch, CFG batching, stops."""

import re

import numpy as np
import pytest

from runtime.errors import InputError, SamplingError
from runtime.generation import Done, ImageDone, ImageProgress, ImageStarted, TextDelta, generate
from runtime.sampling import SamplingParams
from runtime.switch import TokenSpace

V, N_CODES = 20, 8
SPACE = TokenSpace(n_text_vocab=V, n_codes=N_CODES, img_bos=V + N_CODES, img_end=V + N_CODES + 1,
                   img_pad=V + N_CODES + 2, eos=2)
SPECIALS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<img>": 3, "</img>": 4, "<IMG_CONTEXT>": 5}


class FakeTokenizer:
    """Specials by name; any other character c -> 10 + ord(c) % 8; decodes 10+k as 'abcdefgh'[k]."""

    def encode(self, text, add_special_tokens=False):
        ids = []
        for piece in re.split("(" + "|".join(map(re.escape, SPECIALS)) + ")", text):
            ids += [SPECIALS[piece]] if piece in SPECIALS else [10 + ord(c) % 8 for c in piece]
        return type("Enc", (), {"ids": ids})()

    def decode(self, ids, skip_special_tokens=True):
        return "".join("abcdefgh"[i - 10] for i in ids if 10 <= i < 18)


class MockModel:
    """Hidden state = the token id in channel 0; the text head follows `script` (head indices);
    the visual head's cond row prefers `cond_codes[i]`, its uncond row `uncond_codes[i]`."""

    n_image_tokens, vision_size, grid, image_token_id, context_start, cfg_scale = 2, 16, (2, 2), 5, 5, 3.0
    space = SPACE

    def __init__(self, script, cond_codes=(1, 2, 3, 4), uncond_codes=(5, 6, 7, 0), context_length=256):
        self.script, self.cond_codes, self.uncond_codes = list(script), cond_codes, uncond_codes
        self.context_length = context_length
        self.decode_calls, self.image_calls, self.text_calls, self.adapter_calls = [], 0, 0, []

    def empty_past(self, b):
        return [np.zeros((b, 1, 0, 1), np.float32)]

    def empty_adapter_past(self, b):
        return [np.zeros((b, 1, 0, 1), np.float32)]

    def embed(self, ids):
        x = np.zeros(ids.shape + (4,), np.float32)
        x[..., 0] = ids
        return x

    def encode_images(self, pixels):
        return np.full((pixels.shape[0], self.n_image_tokens, 4), -1.0, np.float32)

    def decode(self, embeds, mask, pos, past):
        assert mask.shape[1] == past[0].shape[2] + embeds.shape[1]
        self.decode_calls.append({"batch": embeds.shape[0], "mask": mask.copy(), "pos": pos.copy(),
                                  "tokens": embeds[..., 0].astype(int).tolist()})
        present = [np.concatenate([past[0], embeds[:, None, :, :1]], 2)]
        return embeds, present

    def text_logits(self, hidden):
        assert hidden.shape[1] == 1, "the text head must see the last position only"
        logits = np.zeros((hidden.shape[0], 1, V + 1), np.float32)
        logits[..., self.script[self.text_calls] if self.text_calls < len(self.script) else 10] = 5.0
        self.text_calls += 1
        return logits

    def image_logits(self, hidden, mask, pos, past):
        assert mask.shape[1] == past[0].shape[2] + hidden.shape[1] and pos.shape == hidden.shape[:2]
        self.adapter_calls.append({"tokens": hidden[..., 0].astype(int).tolist(), "mask": mask.copy(),
                                   "pos": pos.copy()})
        b = hidden.shape[0]
        i = int(pos[0, -1])  # the segment position of the newest input: 0 is `<imgbos>`
        logits = np.zeros((b, 1, N_CODES + 2), np.float32)
        logits[0, 0, self.cond_codes[i] if i < len(self.cond_codes) else N_CODES] = 1.0
        if b == 2:
            logits[1, 0, self.uncond_codes[i] if i < len(self.uncond_codes) else N_CODES] = 1.0
        logits[:, 0, N_CODES + 1] = 100.0  # <imgpad> must be masked out by the loop
        self.image_calls += 1
        return logits, [np.concatenate([past[0], hidden[:, None, :, :1]], 2)]

    def decode_image(self, codes):
        return np.zeros((codes.shape[0], 3, 8, 8), np.float32)


MSG = [{"role": "user", "content": "hi"}]


def run(model, **kw):
    return list(generate(model, FakeTokenizer(), MSG, **kw))


def test_text_only_stops_at_eos():
    events = run(MockModel([10, 11, 12, SPACE.eos]))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "abc"
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "eos" and done.text_tokens == 4
    assert done.image_tokens == 0


def test_image_with_cfg_is_one_batch2_call_per_step():
    model = MockModel([10, V, 11, SPACE.eos])  # text, <imgbos>, (image), text, eos
    events = run(model, cfg_scale=3.0)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["TextDelta", "ImageStarted"] + ["ImageProgress"] * 4 + ["ImageDone", "TextDelta", "Done"]
    image = next(e for e in events if isinstance(e, ImageDone))
    assert image.codes.tolist() == [[1, 2], [3, 4]] and image.complete  # the conditional codes win at scale 3
    assert [e.done for e in events if isinstance(e, ImageProgress)] == [1, 2, 3, 4]
    batch2 = [c for c in model.decode_calls if c["batch"] == 2]
    assert len(batch2) == 3  # codes 1..3 fed to both rows; the 4th goes with <imgend> to the cond row only
    first = batch2[0]
    assert first["mask"][0].all() and not first["mask"][1][0]  # the uncond row is left-padded
    assert first["pos"][0, 0] > first["pos"][1, 0]  # each row keeps its own positions
    last = model.decode_calls[-2]  # [last code, <imgend>] on the conditional row, then text
    assert last["batch"] == 1 and last["tokens"] == [[V + 4, SPACE.img_end]]
    assert model.image_calls == 4  # the adapter ran for image positions only
    ctx = model.adapter_calls[0]  # the image start: the adapter reads the whole context once
    prompt = model.decode_calls[0]["tokens"][0]
    assert ctx["tokens"][0] == prompt + [10, SPACE.img_bos] and ctx["tokens"][1][-1] == SPACE.img_bos
    n_ctx = len(prompt) + 1  # the prompt and the text token before <imgbos>
    assert ctx["pos"][0, :-1].tolist() == list(range(5, 5 + n_ctx)) and ctx["pos"][:, -1].tolist() == [0, 0]
    real = ctx["mask"][1, :-1].astype(bool)  # the left-padded uncond row counts from its first real token
    assert ctx["pos"][1, :-1][real].tolist() == list(range(5, 5 + int(real.sum())))
    assert (ctx["mask"] == first["mask"][:, :-1]).all()  # the decoder's left padding, too
    assert [c["pos"].ravel().tolist() for c in model.adapter_calls[1:]] == [[1, 1], [2, 2], [3, 3]]
    assert events[-1].image_tokens == 4 + 2


def test_cfg_scale_zero_follows_the_unconditional_row_and_one_skips_it():
    ev = run(MockModel([V, SPACE.eos]), cfg_scale=0.0)
    assert next(e for e in ev if isinstance(e, ImageDone)).codes.tolist() == [[5, 6], [7, 0]]
    model = MockModel([V, SPACE.eos])
    ev = run(model, cfg_scale=1.0)
    assert next(e for e in ev if isinstance(e, ImageDone)).codes.tolist() == [[1, 2], [3, 4]]
    assert all(c["batch"] == 1 for c in model.decode_calls)


def test_early_imgend_pads_the_grid():
    ev = run(MockModel([V, SPACE.eos], cond_codes=(3,), uncond_codes=(3,)), cfg_scale=1.0)
    done = next(e for e in ev if isinstance(e, ImageDone))
    assert done.codes.tolist() == [[3, 0], [0, 0]] and not done.complete


def test_token_budget_and_context_stop():
    ev = run(MockModel([10] * 50), max_new_tokens=5)
    assert ev[-1].finish_reason == "length" and ev[-1].text_tokens == 5
    ev = run(MockModel([10] * 50, context_length=30), max_new_tokens=100)
    assert ev[-1].finish_reason == "context"
    ev = run(MockModel([V] + [10] * 5, context_length=26), max_new_tokens=100)  # no room for a grid
    assert ev[-1].finish_reason == "context" and not any(isinstance(e, ImageStarted) for e in ev)


def test_input_image_fills_placeholders():
    model = MockModel([SPACE.eos])
    msgs = [{"role": "user", "content": [{"type": "image", "image": np.zeros((16, 16, 3), np.uint8)},
                                         {"type": "text", "text": "x"}]}]
    list(generate(model, FakeTokenizer(), msgs))
    prefill = np.asarray(model.decode_calls[0]["tokens"][0])
    assert (prefill == -1).sum() == 2  # the two image embeddings replaced the two placeholders


def test_bad_inputs_are_refused_with_clear_errors():
    with pytest.raises(SamplingError, match="max_new_tokens"):
        run(MockModel([2]), max_new_tokens=0)
    with pytest.raises(SamplingError, match="cfg_scale"):
        run(MockModel([2]), cfg_scale=float("nan"))
    with pytest.raises(SamplingError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(InputError, match="context"):
        list(generate(MockModel([2], context_length=10), FakeTokenizer(), [{"role": "user", "content": "x" * 50}]))
    with pytest.raises(InputError, match="role"):
        list(generate(MockModel([2]), FakeTokenizer(), [{"role": "robot", "content": "x"}]))
    with pytest.raises(InputError, match="image"):
        list(generate(MockModel([2]), FakeTokenizer(), [{"role": "user", "content": [{"type": "image", "image": 3}]}]))


def test_seeded_sampling_is_reproducible():
    from runtime.sampling import Sampler

    logits = np.linspace(0, 2, 50)
    a = [Sampler(SamplingParams(temperature=1.0, top_k=10, top_p=0.9, seed=7))(logits) for _ in range(1)]
    s1, s2 = Sampler(SamplingParams(temperature=1.0, seed=7)), Sampler(SamplingParams(temperature=1.0, seed=7))
    assert [s1(logits) for _ in range(20)] == [s2(logits) for _ in range(20)]
    top = Sampler(SamplingParams(temperature=1.0, top_k=3, seed=1))
    assert {top(logits) for _ in range(200)} <= {47, 48, 49}
    assert Sampler(SamplingParams())(logits) == 49 and a[0] in range(40, 50)
