"""How people say things to the shapes world: the phrasings of prompts, split into templates
training sees and templates it never sees (the paraphrase evaluation).

A prompt is built from parts: a frame ("can you draw {X}?"), object phrases ("a small red
circle on the left", "a red circle, small", "two blue squares"), position wordings ("in the top
right corner", "in the middle"), number words or digits. Each list below is explicit; a
*template* is one combination of a frame's parts (prefix + verb, question wording, arithmetic
form), and `PARAPHRASE` names the combinations held out: every word of a held-out template
occurs in training, only the combination is new, so a score on them measures generalisation
to new phrasings rather than memorisation or unknown words.

Case, punctuation and spacing are the tokenizer's business (its normalizer lowercases and
folds whitespace), so every phrasing here is lowercase. This module knows words; it does not
know scenes' geometry, images or tokens (`training_ref.world` builds the samples).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}

# Ways to say each grid cell, the canonical one (`world.position_phrase`) first.
POSITION_WORDINGS: dict[str, tuple[str, ...]] = {
    "top left": ("at the top left", "in the top left", "in the top left corner", "on the top left", "top-left"),
    "top": ("at the top", "on the top", "at the top middle", "up top"),
    "top right": ("at the top right", "in the top right", "in the top right corner", "on the top right", "top-right"),
    "left": ("at the left", "on the left", "to the left", "on the left side"),
    "center": ("in the center", "in the middle", "at the center", "in the centre"),
    "right": ("at the right", "on the right", "to the right", "on the right side"),
    "bottom left": ("at the bottom left", "in the bottom left", "in the bottom left corner", "on the bottom left",
                    "bottom-left"),
    "bottom": ("at the bottom", "on the bottom", "at the bottom middle", "down at the bottom"),
    "bottom right": ("at the bottom right", "in the bottom right", "in the bottom right corner", "on the bottom right",
                     "bottom-right"),
}
# hyphenated wordings stand alone ("a red circle top-left"); the rest follow the noun

# --- drawing requests: prefix + verb frame + objects + suffix
PREFIXES = ("", "please ", "can you ", "could you ", "would you ", "i'd like you to ", "now ", "hey, ", "ok, ")
VERBS = ("draw", "paint", "make", "create", "sketch", "show me", "generate an image of", "draw a picture of",
         "make a picture of", "give me a picture of", "draw me", "paint me a picture of")
NOUN_FRAMES = ("i'd like a picture of", "i want a picture of", "a picture of", "an image of", "i would like an image of",
               "picture of")
SUFFIXES = (".", "", "!", "?", " please.", ", please.")
PARAPHRASE_VERB_FRAMES = frozenset({
    ("could you ", "paint"), ("would you ", "sketch"), ("please ", "create"), ("i'd like you to ", "draw me"),
    ("can you ", "make a picture of"), ("hey, ", "show me"), ("now ", "give me a picture of"), ("ok, ", "draw"),
    ("", "paint me a picture of"), ("please ", "generate an image of"), ("would you ", "draw a picture of"),
})
PARAPHRASE_NOUN_FRAMES = frozenset({"i would like an image of", "picture of"})

# --- draw, then say (t2ti): tails after the request, by what the closing sentence answers
TELL_TAILS = (" and tell me what it shows", " and describe it", ", then tell me what you drew",
              " and tell me what you drew", " and say what it shows", " and then describe it")
WHERE_TAILS = (" and tell me its position", " and tell me where it is", " and say where you put it",
               ", then tell me where it is")
PARAPHRASE_TELL_TAILS = frozenset({" and then describe it", " and say what it shows"})
PARAPHRASE_WHERE_TAILS = frozenset({", then tell me where it is"})
COUNT_FRAMES = ("draw a picture with {count}{tail}", "make an image with {count}{tail}", "draw {count}{tail}",
                "show me {count}{tail}")
FREE_FRAMES = ("draw a picture{tail}", "make an image{tail}", "draw anything{tail}", "surprise me with a picture{tail}",
               "draw something{tail}")
PARAPHRASE_COUNT_FRAMES = frozenset({"show me {count}{tail}"})
PARAPHRASE_FREE_FRAMES = frozenset({"draw something{tail}"})

# --- questions about an input image, by VQA kind ({where}: a position wording, {c} {s}: colour, shape)
QUESTIONS: dict[str, tuple[str, ...]] = {
    "count": ("how many shapes are there?", "how many objects are in the image?", "how many shapes do you see?",
              "count the shapes.", "how many things are in the picture?", "how many objects can you see?"),
    "colour": ("what colour is the shape {where}?", "what color is the object {where}?",
               "which colour is the shape {where}?", "what is the colour of the shape {where}?",
               "what color is the thing {where}?"),
    "shape": ("what shape is {where}?", "which shape is {where}?", "what kind of shape is {where}?",
              "what is the shape {where}?"),
    "size": ("is the shape {where} small or large?", "is the object {where} big or small?",
             "how big is the shape {where}?", "is the thing {where} small or large?"),
    "where": ("where is the {c} {s}?", "where's the {c} {s}?", "in which cell is the {c} {s}?",
              "where can you see the {c} {s}?"),
    "exists": ("is there a {c} {s}?", "do you see a {c} {s}?", "is there any {c} {s} in the picture?",
               "can you find a {c} {s}?"),
    "describe": ("describe the image.", "what is in the picture?", "what do you see?", "tell me what is in this image."),
}
PARAPHRASE_QUESTIONS = frozenset({
    "how many objects can you see?", "what color is the thing {where}?", "what is the shape {where}?",
    "is the thing {where} small or large?", "where can you see the {c} {s}?", "can you find a {c} {s}?",
    "tell me what is in this image.",
})

# --- arithmetic ({a}, {b}: digits or number words); answers are digits
PLUS = ("what is {a} plus {b}?", "what's {a} plus {b}?", "what is {a} + {b}?", "{a} plus {b}?", "{a} + {b} =",
        "add {a} and {b}.", "how much is {a} plus {b}?", "calculate {a} plus {b}.", "what's {a} + {b}?",
        "what do you get when you add {a} and {b}?", "can you tell me what {a} plus {b} is?", "please add {a} and {b}.")
MINUS = ("what is {a} minus {b}?", "what's {a} minus {b}?", "{a} minus {b}?", "{a} - {b} =", "how much is {a} minus {b}?",
         "take {b} from {a}.", "subtract {b} from {a}.", "what is {a} - {b}?", "calculate {a} minus {b}.")
PARAPHRASE_ARITHMETIC = frozenset({"what's {a} + {b}?", "please add {a} and {b}.", "what is {a} - {b}?",
                                   "calculate {a} minus {b}."})

# --- small talk: (wordings, answer)
SMALL_TALK: tuple[tuple[tuple[str, ...], str], ...] = (
    (("hello", "hi", "hey there", "hello!", "hi there", "good morning"),
     "hello! i can draw shapes and answer questions about pictures."),
    (("how are you?", "how are you doing?", "how is it going?"), "i am fine, thank you."),
    (("what can you do?", "what do you do?", "how can you help me?"),
     "i can draw pictures of shapes, describe them and answer questions about them."),
    (("thank you", "thanks", "thanks a lot!", "thank you very much."), "you are welcome."),
    (("who are you?", "what are you?", "what is your name?"), "i am armor tiny, a small model of the shapes world."),
    (("goodbye", "bye", "see you later"), "goodbye!"),
)
PARAPHRASE_SMALL_TALK = frozenset({"hi there", "how is it going?", "how can you help me?", "thanks a lot!",
                                   "what is your name?", "see you later"})


def pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    return items[int(rng.integers(len(items)))]


def split(items: Sequence[T], held: frozenset, paraphrase: bool) -> list[T]:
    """The items of one split: the held-out ones with paraphrase=True, the others otherwise."""
    chosen = [x for x in items if (x in held) == paraphrase]
    if not chosen:
        raise ValueError("a phrasing list has no item in the requested split")
    return chosen


def number(rng: np.random.Generator, n: int, p_word: float = 0.3) -> str:
    """n as digits, or as a word with probability p_word."""
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) and rng.random() < p_word else str(n)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def drawing_frame(rng: np.random.Generator, paraphrase: bool) -> str:
    """A frame with one `{X}` slot for the objects, e.g. 'can you draw {X}', without a suffix."""
    if rng.random() < 0.2:
        return pick(rng, split(NOUN_FRAMES, PARAPHRASE_NOUN_FRAMES, paraphrase)) + " {X}"
    pairs = [(p, v) for p in PREFIXES for v in VERBS]
    prefix, verb = pick(rng, split(pairs, PARAPHRASE_VERB_FRAMES, paraphrase))
    return f"{prefix}{verb} {{X}}"
