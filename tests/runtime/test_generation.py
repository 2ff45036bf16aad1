"""The generation loop against a mock model with known logits: switch, CFG batching, stops."""

import re

import numpy as np
import pytest

from runtime.cache import ImageCursor, Stream
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


class RecordingStream(Stream):
    """A fake decoder cache: hidden state = the token id in channel 0; every operation the loop
    makes on it is appended to `log` (with the mask and positions the stream would feed)."""

    def __init__(self, log, batch, text_head, capacity):
        super().__init__([], np.zeros(batch, np.int64), text_head)
        self.log, self.capacity = log, capacity

    def _forward(self, ids, image_embeds):
        t = ids.shape[1]
        assert self.width + t <= self.capacity
        x = np.zeros(ids.shape + (4,), np.float32)
        x[..., 0] = ids
        if image_embeds is not None:
            x[ids == 5] = image_embeds
        self.log.append({"op": "append", "batch": ids.shape[0], "mask": self.mask(t), "pos": self.positions(t),
                         "tokens": x[..., 0].astype(int).tolist()})
        return x

    def _pair(self, other, pads):
        self.log.append({"op": "pair", "pads": pads.tolist()})
        return RecordingStream(self.log, 2, None, self.capacity)

    def _row(self, i):
        self.log.append({"op": "row", "row": i})
        return RecordingStream(self.log, 1, None, self.capacity)

    def _truncate(self, width):
        self.log.append({"op": "truncate", "width": width})


class MockModel:
    """The text head follows `script` (head indices); the visual head (through the runtime's
    real `ImageCursor`) prefers `cond_codes[i]` on the cond row and `uncond_codes[i]` on the
    uncond row at segment position i."""

    n_image_tokens, vision_size, grid, image_token_id, context_start, cfg_scale = 2, 16, (2, 2), 5, 5, 3.0
    space = SPACE

    def __init__(self, script, cond_codes=(1, 2, 3, 4), uncond_codes=(5, 6, 7, 0), context_length=256):
        self.script, self.cond_codes, self.uncond_codes = list(script), cond_codes, uncond_codes
        self.context_length = context_length
        self.log, self.adapter_calls, self.text_calls = [], [], 0

    def graph_seconds(self):
        return 0.0

    def start(self, ids, image_embeds=None):
        stream = RecordingStream(self.log, 1, self.text_logits, self.context_length)
        stream.append(ids, None if image_embeds is None else image_embeds.reshape(-1, 4))
        return stream

    def start_image(self, stream):
        hidden, mask = stream.context()
        return ImageCursor(self._visual_head, np.float32, 1, (1, 1), self.context_start, hidden, mask)

    def encode_images(self, pixels):
        return np.full((pixels.shape[0], self.n_image_tokens, 4), -1.0, np.float32)

    def text_logits(self, hidden):
        assert hidden.shape[1] == 1, "the text head must see the last position only"
        logits = np.zeros((hidden.shape[0], 1, V + 1), np.float32)
        logits[..., self.script[self.text_calls] if self.text_calls < len(self.script) else 10] = 5.0
        self.text_calls += 1
        return logits

    def _visual_head(self, feeds):
        hidden, mask, pos = feeds["hidden_states"], feeds["attention_mask"], feeds["position_ids"]
        past = feeds["past_key_values.0.key"]
        assert mask.shape[1] == past.shape[2] + hidden.shape[1] and pos.shape == hidden.shape[:2]
        self.adapter_calls.append({"tokens": hidden[..., 0].astype(int).tolist(), "mask": mask.copy(), "pos": pos.copy()})
        b, t = hidden.shape[:2]
        logits = np.zeros((b, t, N_CODES + 2), np.float32)
        for j in range(t):
            i = int(pos[0, j])  # the segment position of input j: 0 is `<imgbos>`
            logits[0, j, self.cond_codes[i] if i < len(self.cond_codes) else N_CODES] = 1.0
            if b == 2:
                logits[1, j, self.uncond_codes[i] if i < len(self.uncond_codes) else N_CODES] = 1.0
        logits[:, :, N_CODES + 1] = 100.0  # <imgpad> must be masked out by the loop
        present = np.concatenate([past, hidden[:, None, :, :1]], 2)
        return {"image_logits": logits, "present.0.key": present, "present.0.value": present}

    def decode_image(self, codes):
        return np.zeros((codes.shape[0], 3, 8, 8), np.float32)

    @property
    def decode_calls(self):
        return [e for e in self.log if e["op"] == "append"]


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
    assert len(model.adapter_calls) == 4  # the adapter ran for image positions only
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
    prefill = np.asarray(model.decode_calls[0]["tokens"][0])  # the image embeddings are -1 in channel 0
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


def test_the_loop_drives_the_cache_only_through_its_operations():
    """Text, an image with CFG, text: the cache sees appends, one pair and one row, all inside
    the image; truncate is never called by sequential decoding."""
    model = MockModel([10, V, 11, 12, SPACE.eos])
    events = run(model, cfg_scale=3.0)
    ops = [e["op"] for e in model.log]
    assert ops.count("pair") == 1 and ops.count("row") == 1 and "truncate" not in ops
    i_pair, i_row = ops.index("pair"), ops.index("row")
    before, during, after = model.log[:i_pair], model.log[i_pair + 1:i_row], model.log[i_row + 1:]
    assert [e["batch"] for e in before] == [1, 1, 1, 1]  # prompt, text token, <imgbos>, the uncond prefill
    assert before[2]["tokens"] == [[SPACE.img_bos]] and before[3]["tokens"][0][-1] == SPACE.img_bos
    assert model.log[i_pair]["pads"][0] == 0 and model.log[i_pair]["pads"][1] > 0  # the uncond row is padded
    assert all(e["batch"] == 2 for e in during) and len(during) == 3  # codes 1..3 on both rows
    assert [e["tokens"] for e in after] == [[[V + 4, SPACE.img_end]], [[11]], [[12]]]
    # positions continue on the conditional row after the image
    assert after[0]["pos"][0, 0] == during[-1]["pos"][0, 0] + 1
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("ImageStarted") < kinds.index("ImageDone")


def test_the_loop_holds_no_cache_arrays():
    import inspect

    import runtime.generation as g

    source = inspect.getsource(g)
    for forbidden in ("np.concatenate", "np.pad", "past", "present", ".mask("):
        assert forbidden not in source, forbidden
