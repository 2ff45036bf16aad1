"""The forward switch: an explicit TEXT -> IMAGE -> TEXT state machine over token ids.

The generation loops (PyTorch reference and runtime) ask it which head to run and tell it
every token; it raises on an illegal transition. It knows the special-token ids and the
grid size; it knows nothing about logits, engines or sampling.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Mode(enum.Enum):
    TEXT = "text"
    IMAGE = "image"
    DONE = "done"


class IllegalTransition(RuntimeError):
    """A token that the current mode cannot accept (a bug in the loop, never user input)."""


@dataclass(frozen=True)
class TokenSpace:
    """Where the heads' indices land in the unified id space."""

    n_text_vocab: int  # V: text head index i < V is text token i; index V is <imgbos>
    n_codes: int  # visual head index c < n_codes is code c (unified id V + c)
    img_bos: int
    img_end: int
    img_pad: int
    eos: int

    @classmethod
    def from_ids(cls, ids: dict, n_text_vocab: int, n_codes: int) -> "TokenSpace":
        return cls(n_text_vocab, n_codes, ids["img_bos"], ids["img_end"], ids["img_pad"], ids["eos"])

    def text_index_to_id(self, index: int) -> int:
        return self.img_bos if index == self.n_text_vocab else index

    def image_index_to_id(self, index: int) -> int:
        if index < self.n_codes:
            return self.n_text_vocab + index
        return self.img_end if index == self.n_codes else self.img_pad

    def is_code(self, token: int) -> bool:
        return self.n_text_vocab <= token < self.n_text_vocab + self.n_codes


class ForwardSwitch:
    """TEXT: text head; `<imgbos>` -> IMAGE; eos -> DONE. IMAGE: visual head; a code fills the
    grid, `<imgend>` or a full grid -> TEXT. `<imgpad>` is never a legal generated token."""

    def __init__(self, space: TokenSpace, grid_size: int):
        self.space = space
        self.grid_size = grid_size
        self.mode = Mode.TEXT
        self.codes: list[int] = []

    def step(self, token: int) -> Mode:
        """Accept one generated token; return the mode for the next token."""
        s = self.space
        if self.mode is Mode.DONE:
            raise IllegalTransition("generation is done; no token may follow")
        if token == s.img_pad:
            raise IllegalTransition("<imgpad> is padding and can never be generated")
        if self.mode is Mode.TEXT:
            if s.is_code(token) or token == s.img_end:
                raise IllegalTransition(f"token {token} is an image token but the mode is TEXT")
            if token == s.img_bos:
                self.mode, self.codes = Mode.IMAGE, []
            elif token == s.eos:
                self.mode = Mode.DONE
            return self.mode
        if token == s.img_end:
            self.mode = Mode.TEXT
        elif s.is_code(token):
            self.codes.append(token - s.n_text_vocab)
            if len(self.codes) == self.grid_size:
                self.mode = Mode.TEXT
        else:
            raise IllegalTransition(f"token {token} is a text token but the mode is IMAGE")
        return self.mode

    @property
    def grid_full(self) -> bool:
        return len(self.codes) == self.grid_size

    def finish(self) -> None:
        """Stop early (token budget or context): only legal between images."""
        if self.mode is Mode.IMAGE:
            raise IllegalTransition("cannot finish in the middle of an image")
        self.mode = Mode.DONE
