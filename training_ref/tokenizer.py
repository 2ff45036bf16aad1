"""The text tokenizer of the tiny preset: a byte-level BPE trained on the shapes world's texts.

Special tokens come first, with ids 0..5 in the order of `runtime.constants.SPECIAL_TEXT_TOKENS`
(`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<img>`, `</img>`, `<IMG_CONTEXT>`); then the
256 byte symbols and the merges. ByteLevel pre-tokenizer and decoder without a prefix space,
so `decode(encode(x).ids) == normalize(x)`: the normalizer (`normalizer`) lowercases and folds
spaces first. No post-processor: nothing is added around
an encoded text (the chat template, `runtime.chat.format_chat`, writes every special token).

It knows the world's corpus and the special token names; it does not know ARMOR's extra
tokens (`<imgbos>`...), which live in the model's `new` embedding table, not in this vocabulary.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from runtime.chat import CHAT_TEMPLATE_JINJA
from runtime.constants import ENDOFTEXT, IM_END, SPECIAL_TEXT_TOKENS, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from training_ref.world import corpus_text

log = logging.getLogger(__name__)


def train_tokenizer(vocab_size: int = 512, n_texts: int = 20000, seed: int = 0) -> Tokenizer:
    """Train the byte-level BPE on `world.corpus_text(n_texts, seed)` plus the chat role names.

    Deterministic for fixed arguments.
    """
    min_size = len(SPECIAL_TEXT_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be at least {min_size} (special tokens + 256 bytes), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TEXT_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Every chat turn also carries its role name: weight the roles like one turn pair per sample.
    roles = (f"{role}\n" for _ in range(n_texts // 2) for role in ("user", "assistant"))
    tokenizer.train_from_iterator(itertools.chain(corpus_text(n_texts, seed), roles, ["system\n"] * 100),
                                  trainer=trainer)
    for i, name in enumerate(SPECIAL_TEXT_TOKENS):
        if tokenizer.token_to_id(name) != i:  # the trainer's documented behaviour; checked, not assumed
            raise RuntimeError(f"special token {name} got id {tokenizer.token_to_id(name)}, expected {i}")
    log.info("trained a byte-level BPE: %d tokens from %d texts (seed %d)",
             tokenizer.get_vocab_size(), n_texts, seed)
    return tokenizer


def normalizer() -> normalizers.Normalizer:
    """NFKC, lowercase, every run of spaces and tabs one space, none next to a newline or at
    either end of the text between two special tokens.

    Case and spacing carry no meaning in the world. Newlines stay: the chat template's line
    structure is part of the prompt. Special tokens are split off before normalization, so
    `<|im_start|>` and friends are untouched."""
    return normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[ \t]+"), " "),
        normalizers.Replace(Regex(r" ?\n ?"), "\n"),
        normalizers.Replace(Regex(r"\A | \z"), ""),
    ])


def tokenizer_config(num_image_tokens: int | None = None) -> dict:
    """The `tokenizer_config.json` content: chat template (jinja twin of format_chat) and token names.

    There is no BOS token (the template starts with `<|im_start|>`); EOS is `<|im_end|>` (an
    assistant turn ends with it); padding uses `<|endoftext|>`. The jinja template reads
    `num_image_tokens`, stored here when given.
    """
    config: dict = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE_JINJA,
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "additional_special_tokens": list(SPECIAL_TEXT_TOKENS[1:]),
    }
    if num_image_tokens is not None:
        config["num_image_tokens"] = num_image_tokens
    return config


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path, num_image_tokens: int | None = None) -> Path:
    """Write `tokenizer.json` and `tokenizer_config.json` into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / TOKENIZER_FILE))
    (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(tokenizer_config(num_image_tokens), indent=2) + "\n")
    log.info("saved the tokenizer to %s", directory)
    return directory
