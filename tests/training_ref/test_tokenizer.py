"""The byte-level BPE: special token ids, lossless round trip, determinism, saved files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from runtime.chat import CHAT_TEMPLATE_JINJA, format_chat
from runtime.constants import SPECIAL_TEXT_TOKENS
from training_ref import world
from training_ref.tokenizer import save_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer()


def test_vocab_size_and_special_ids(tok: Tokenizer) -> None:
    assert tok.get_vocab_size() == 512
    assert SPECIAL_TEXT_TOKENS == ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>")
    for i, name in enumerate(SPECIAL_TEXT_TOKENS):
        assert tok.token_to_id(name) == i
        assert tok.encode(f"a{name}b", add_special_tokens=False).ids.count(i) == 1


def test_roundtrip_is_lossless_up_to_the_normalizer(tok: Tokenizer) -> None:
    texts = list(world.corpus_text(300, seed=99)) + [
        "ünïcödé ✓ 🎨 — tabs and\nnewlines double spaces",
        "", "what is 3 plus 4?",
        format_chat([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many shapes are there?"}]},
                     {"role": "assistant", "content": "2"}], n_image_tokens=16),
    ]
    for text in texts:  # already normal: lowercase, single spaces
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text


@pytest.mark.parametrize("raw", [
    "Draw a GREEN triangle in the Top Right.", "  draw a green   triangle\tin the top right.  ",
    "ＤＲＡＷ a green triangle in the top right.",  # fullwidth letters: NFKC
])
def test_case_width_and_spacing_do_not_matter(tok: Tokenizer, raw: str) -> None:
    expected = tok.encode("draw a green triangle in the top right.", add_special_tokens=False).ids
    assert tok.encode(raw, add_special_tokens=False).ids == expected
    chat = format_chat([{"role": "user", "content": raw}], n_image_tokens=16)
    assert tok.encode(chat).ids == tok.encode(format_chat([{"role": "user", "content": "draw a green triangle in the "
                                                                          "top right."}], 16)).ids
    assert tok.encode(chat).tokens[:3] == ["<|im_start|>", "user", "Ċ"]  # special tokens, newline kept


def test_world_words_are_compact(tok: Tokenizer) -> None:
    text = "here is a large red circle at the top left and a small blue square in the center."
    assert len(tok.encode(text, add_special_tokens=False).ids) <= 20
    assert tok.encode("assistant", add_special_tokens=False).tokens == ["assistant"]


def test_training_is_deterministic() -> None:
    a = train_tokenizer(vocab_size=320, n_texts=1000, seed=3)
    b = train_tokenizer(vocab_size=320, n_texts=1000, seed=3)
    assert a.to_str() == b.to_str()
    with pytest.raises(ValueError):
        train_tokenizer(vocab_size=100)


def test_save_tokenizer(tok: Tokenizer, tmp_path: Path) -> None:
    out = save_tokenizer(tok, tmp_path / "tok", num_image_tokens=16)
    loaded = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "<|im_start|>user\nwhat is 2 plus 5?<|im_end|>\n"
    assert loaded.encode(text).ids == tok.encode(text).ids
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE_JINJA
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (None, "<|im_end|>", "<|endoftext|>")
    assert config["num_image_tokens"] == 16


def test_chat_template_matches_format_chat() -> None:
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(CHAT_TEMPLATE_JINJA)
    conversations = [
        [{"role": "user", "content": "what is 2 plus 5?"}],
        [{"role": "system", "content": "be brief."},
         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image."}]},
         {"role": "assistant", "content": "a small red circle at the top"}],
    ]
    for messages in conversations:
        for add in (True, False):
            expected = format_chat(messages, n_image_tokens=4, add_generation_prompt=add)
            assert template.render(messages=messages, num_image_tokens=4, add_generation_prompt=add) == expected
