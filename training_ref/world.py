"""The synthetic "shapes world": scenes, their pictures, their descriptions and the training samples.

A scene is 1-3 flat-coloured shapes (circle/square/triangle, 5 colours, 2 sizes) placed in
distinct cells of a 3x3 grid on a white background. This module knows how to draw a scene,
describe it in English (and parse that English back), split scenes into a train and a
held-out set, and build the four kinds of chat samples the model is trained on (t2t, ti2t,
t2i, t2ti) plus the fixed evaluation sets.

It does not know tokens, chat templates, image codes or torch: a `Sample` is plain text and
scenes; turning it into a token sequence is the training code's job. Detecting objects in
an image (the inverse of `render`) lives in `training_ref.shapeeval`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, Union

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "yellow": (230, 190, 30),
    "purple": (150, 60, 190),
}
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # row-major over the 3x3 grid
POSITION_INDEX: dict[str, int] = {p: i for i, p in enumerate(POSITIONS)}

# Radius of an object's circumscribing circle, as a fraction of a grid cell's side.
RADIUS_FRACTION: dict[str, float] = {"small": 0.24, "large": 0.40}
SQUARE_SIDE_FACTOR = 0.9  # square side = 2 r * 0.9

MAX_OBJECTS = 3  # a scene holds 1..MAX_OBJECTS objects
MODES: tuple[str, ...] = ("t2t", "ti2t", "t2i", "t2ti")
# VQA question kinds, in the order make_sample draws them from.
VQA_KINDS: tuple[str, ...] = ("count", "colour", "shape", "size", "where", "exists", "describe")
HELDOUT_MODULUS = 10  # a scene is held out when sha1(canonical) % 10 == 0


@dataclass(frozen=True, order=True)
class Obj:
    """One object of a scene. Values are the names in SHAPES, COLOURS, POSITIONS and SIZES."""

    shape: str
    colour: str
    position: str
    size: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}")
        if self.position not in POSITION_INDEX:
            raise ValueError(f"unknown position {self.position!r}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")


Scene = tuple[Obj, ...]
AnswerPart = Union[str, Scene]


@dataclass(frozen=True)
class Want:
    """One object a prompt asks for: shape and colour always, size and position when stated."""

    shape: str
    colour: str
    size: str | None = None
    position: str | None = None

    @classmethod
    def of(cls, obj: Obj) -> "Want":
        """The fully stated request for `obj`."""
        return cls(obj.shape, obj.colour, obj.size, obj.position)


Request = tuple[Want, ...]  # what a drawing prompt states of the scene it asks for


def _obj_key(obj: Obj) -> tuple[int, str, str, str]:
    return (POSITION_INDEX[obj.position], obj.shape, obj.colour, obj.size)


def canonical(objs: Sequence[Obj]) -> Scene:
    """The scene's canonical form: objects sorted by position index (then shape, colour, size)."""
    return tuple(sorted(objs, key=_obj_key))


# ----------------------------------------------------------------------------- rendering


def _cell_centre(position: str, size: int) -> tuple[float, float]:
    row, col = divmod(POSITION_INDEX[position], 3)
    cell = size / 3.0
    return ((col + 0.5) * cell, (row + 0.5) * cell)


def object_mask(obj: Obj, size: int) -> np.ndarray:
    """Boolean (size, size) mask of the pixels whose centres fall inside the object."""
    cx, cy = _cell_centre(obj.position, size)
    r = RADIUS_FRACTION[obj.size] * size / 3.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xs - cx, ys - cy
    if obj.shape == "circle":
        return dx * dx + dy * dy <= r * r
    if obj.shape == "square":
        half = r * SQUARE_SIDE_FACTOR
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # Upward equilateral (hence isoceles) triangle inscribed in the circle of radius r:
    # apex (0, -r), base corners (+-r*sqrt(3)/2, r/2); inside = below both slanted edges and above the base.
    s3 = np.sqrt(3.0)
    return (dy <= r / 2) & (dy >= -r + s3 * dx) & (dy >= -r - s3 * dx)


def render(scene: Sequence[Obj], size: int = 64) -> Image.Image:
    """Draw a scene as a (size x size) RGB image: flat colours, no antialiasing, white background."""
    if size < 12:
        raise ValueError(f"image size must be at least 12 pixels, got {size}")
    pixels = np.empty((size, size, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    for obj in scene:
        pixels[object_mask(obj, size)] = COLOURS[obj.colour]
    return Image.fromarray(pixels, mode="RGB")


# ----------------------------------------------------------------------------- language


def position_phrase(position: str) -> str:
    """'in the center' for the center cell, 'at the X' otherwise."""
    return "in the center" if position == "center" else f"at the {position}"


def describe_object(obj: Obj) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape} {position_phrase(obj.position)}"


def join_words(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def describe(scene: Sequence[Obj]) -> str:
    """English description of a scene in canonical order, without a final period."""
    return join_words([describe_object(o) for o in canonical(scene)])


def _alternation(names: Sequence[str]) -> str:
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


_OBJECT_RE = re.compile(
    rf"\b({_alternation(SIZES)})\s+({_alternation(list(COLOURS))})\s+({_alternation(SHAPES)})"
    rf"\s+(?:at|in)\s+the\s+({_alternation(POSITIONS)})\b",
    re.IGNORECASE,
)


def parse_description(text: str) -> Scene | None:
    """Objects named in `text` as '<size> <colour> <shape> at/in the <position>', canonically sorted.

    Tolerant of any text around or between the object phrases; None when none is found.
    Duplicates are kept (a well-formed description never has two objects in one cell).
    """
    objs = [
        Obj(shape=m.group(3).lower(), colour=m.group(2).lower(),
            position=" ".join(m.group(4).lower().split()), size=m.group(1).lower())
        for m in _OBJECT_RE.finditer(text)
    ]
    return canonical(objs) if objs else None


# ----------------------------------------------------------------------------- splits


def scene_key(scene: Sequence[Obj]) -> str:
    """Canonical string of a scene, e.g. 'large red circle@top left;small blue square@center'."""
    return ";".join(f"{o.size} {o.colour} {o.shape}@{o.position}" for o in canonical(scene))


def is_heldout(scene: Sequence[Obj]) -> bool:
    """Deterministic ~10% split: the scene is held out when sha1(scene_key) is 0 mod 10."""
    digest = hashlib.sha1(scene_key(scene).encode("utf-8")).hexdigest()
    return int(digest[:12], 16) % HELDOUT_MODULUS == 0


T = TypeVar("T")


def _pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    return items[int(rng.integers(len(items)))]


def _random_scene(rng: np.random.Generator, n_objects: int) -> Scene:
    cells = rng.choice(len(POSITIONS), size=n_objects, replace=False)
    colours = list(COLOURS)
    return canonical([
        Obj(shape=_pick(rng, SHAPES), colour=_pick(rng, colours), position=POSITIONS[int(c)],
            size=_pick(rng, SIZES))
        for c in cells
    ])


def sample_scene(rng: np.random.Generator, n_objects: int | None = None, heldout: bool = False,
                 max_objects: int = MAX_OBJECTS) -> Scene:
    """A random scene of the train split (or of the held-out split with heldout=True).

    n_objects None draws 1..max_objects uniformly. Rejection sampling on `is_heldout`.
    """
    if n_objects is not None and not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be 1..{MAX_OBJECTS}, got {n_objects}")
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be 1..{MAX_OBJECTS}, got {max_objects}")
    for _ in range(10_000):
        n = n_objects if n_objects is not None else int(rng.integers(1, max_objects + 1))
        scene = _random_scene(rng, n)
        if is_heldout(scene) == heldout:
            return scene
    raise RuntimeError("rejection sampling failed to find a scene of the requested split")


# ----------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One chat exchange: the user's text (plus an input image for ti2t) and the assistant's reply.

    `answer` interleaves text strings and scenes; a scene in the answer is an image the
    assistant generates. `image` is the input scene of a ti2t sample, else None.
    """

    mode: str
    prompt: str
    image: Scene | None = None
    answer: list[AnswerPart] = field(default_factory=list)

    def answer_text(self) -> str:
        """The answer's text parts joined with spaces (images left out)."""
        return " ".join(p for p in self.answer if isinstance(p, str))


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_SIDES = {"circle": "zero", "square": "four", "triangle": "three"}
_OPPOSITES = {"top": "bottom", "bottom": "top", "left": "right", "right": "left",
              "small": "large", "large": "small"}


def _make_t2t(rng: np.random.Generator) -> tuple[str, str]:
    if rng.random() < 0.5:
        return _make_reading(rng)
    kind = int(rng.integers(10))
    if kind == 0:
        shape = _pick(rng, SHAPES)
        return f"how many sides does a {shape} have?", _SIDES[shape]
    if kind == 1:
        a, b = int(rng.integers(10)), int(rng.integers(10))
        return f"what is {a} plus {b}?", str(a + b)
    if kind == 2:
        a, b = sorted((int(rng.integers(10)), int(rng.integers(10))), reverse=True)
        return f"what is {a} minus {b}?", str(a - b)
    if kind == 3:
        return _pick(rng, [("which shape is round?", "circle"),
                           ("which shape has three sides?", "triangle"),
                           ("which shape has four sides?", "square")])
    if kind == 4:
        return _pick(rng, [("name a colour of the world.", "red"),
                           ("name a shape of the world.", "circle"),
                           ("list the colours of the world.", join_words(list(COLOURS))),
                           ("list the shapes of the world.", join_words(list(SHAPES))),
                           ("list the sizes of the world.", join_words(list(SIZES)))])
    if kind == 5:
        word = _pick(rng, list(_OPPOSITES))
        return f"what is the opposite of {word}?", _OPPOSITES[word]
    if kind == 6:
        n = int(rng.integers(10))
        return f"what number comes after {n}?", str(n + 1)
    if kind == 7:
        n = int(rng.integers(11))
        return f"write the number {n} in words.", NUMBER_WORDS[n]
    if kind == 8:
        a, b = int(rng.integers(10)), int(rng.integers(10))
        return f"is {a} bigger than {b}?", "yes" if a > b else "no"
    return _pick(rng, [("how many cells does the grid have?", "9"),
                       ("how many colours are there in the world?", str(len(COLOURS))),
                       ("how many shapes can a picture hold at most?", "3")])


def _make_reading(rng: np.random.Generator) -> tuple[str, str]:
    """Reading comprehension over a described scene: the VQA questions, asked of a text.

    It teaches the base model to hold a scene description in context (what the frozen decoder
    must carry to the image positions when the same description is a t2i prompt)."""
    scene = sample_scene(rng)
    lead = _pick(rng, [f"{verb} {describe(scene)}." for verb in T2I_VERBS] + [f"the picture shows {describe(scene)}."])
    while True:
        qa = vqa_question(rng, scene, _pick(rng, VQA_KINDS))
        if qa is not None:
            question = qa[0].replace("in the image", "in the picture").replace("describe the image", "repeat the picture")
            return f"{lead} {question}", qa[1]


def vqa_question(rng: np.random.Generator, scene: Scene, kind: str) -> tuple[str, str] | None:
    """(question, answer) of the given VQA kind about `scene`, or None if the kind has no
    unambiguous question for this scene ('where' needs a colour+shape pair that occurs once)."""
    if kind == "count":
        return _pick(rng, ["how many shapes are there?", "how many objects are in the image?"]), str(len(scene))
    if kind in ("colour", "shape", "size"):
        obj = _pick(rng, scene)
        where = position_phrase(obj.position)
        if kind == "colour":
            return f"what colour is the shape {where}?", obj.colour
        if kind == "shape":
            return f"what shape is {where}?", obj.shape
        return f"is the shape {where} small or large?", obj.size
    if kind == "where":
        pairs = [(o.colour, o.shape) for o in scene]
        unique = [o for o in scene if pairs.count((o.colour, o.shape)) == 1]
        if not unique:
            return None
        obj = _pick(rng, unique)
        return f"where is the {obj.colour} {obj.shape}?", obj.position
    if kind == "exists":
        present = {(o.colour, o.shape) for o in scene}
        if rng.random() < 0.5:
            colour, shape = _pick(rng, sorted(present))
        else:
            absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
            colour, shape = _pick(rng, absent)
        return f"is there a {colour} {shape}?", "yes" if (colour, shape) in present else "no"
    if kind == "describe":
        return _pick(rng, ["describe the image.", "what is in the picture?"]), describe(scene)
    raise ValueError(f"unknown VQA kind {kind!r}")


def _make_ti2t(rng: np.random.Generator, heldout: bool, kinds: Sequence[str] = VQA_KINDS) -> Sample:
    scene = sample_scene(rng, heldout=heldout)
    while True:
        qa = vqa_question(rng, scene, _pick(rng, kinds))
        if qa is not None:
            return Sample(mode="ti2t", prompt=qa[0], image=scene, answer=[qa[1]])


T2I_VERBS: tuple[str, ...] = ("draw", "generate an image of", "show me")
T2TI_TEMPLATES: tuple[str, ...] = (
    "draw a picture with {count} and tell me what it shows.",
    "make an image with {count} and describe it.",
)
T2TI_FREE_TEMPLATES: tuple[str, ...] = (
    "draw a picture and tell me what it shows.",
    "make an image and describe it.",
)


def count_phrase(n: int) -> str:
    """'1 shape', '2 shapes', ..."""
    return f"{n} shape" if n == 1 else f"{n} shapes"


def total_sentence(n: int) -> str:
    """'there is 1 shape in total.' / 'there are N shapes in total.'"""
    return "there is 1 shape in total." if n == 1 else f"there are {n} shapes in total."


def make_sample(rng: np.random.Generator, mode: str, heldout: bool = False,
                max_objects: int = MAX_OBJECTS) -> Sample:
    """A random sample of `mode`; scenes come from the held-out split with heldout=True.

    t2t ignores `heldout` (no scene). `max_objects` caps the scenes the model is asked to draw
    (t2i, t2ti: the training curriculum); understanding scenes (ti2t) keep 1-3 objects.
    Deterministic given the generator's state; the default draws the same stream as before.
    """
    if mode == "t2t":
        prompt, answer = _make_t2t(rng)
        return Sample(mode="t2t", prompt=prompt, answer=[answer])
    if mode == "ti2t":
        return _make_ti2t(rng, heldout)
    if mode == "t2i":
        scene = sample_scene(rng, heldout=heldout, max_objects=max_objects)
        return Sample(mode="t2i", prompt=f"{_pick(rng, T2I_VERBS)} {describe(scene)}.", answer=[scene])
    if mode == "t2ti":
        if rng.random() < 0.25:
            scene = sample_scene(rng, heldout=heldout, max_objects=max_objects)
            prompt = _pick(rng, T2TI_FREE_TEMPLATES)
        else:
            scene = sample_scene(rng, n_objects=int(rng.integers(1, max_objects + 1)), heldout=heldout)
            prompt = _pick(rng, T2TI_TEMPLATES).format(count=count_phrase(len(scene)))
        answer: list[AnswerPart] = [f"here is {describe(scene)}.", scene, total_sentence(len(scene))]
        return Sample(mode="t2ti", prompt=prompt, answer=answer)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# ----------------------------------------------------------------------------- fixed sets


def heldout_t2i(n: int = 200, seed: int = 1234) -> list[Sample]:
    """Fixed text-to-image evaluation set on held-out scenes."""
    rng = np.random.default_rng(seed)
    return [make_sample(rng, "t2i", heldout=True) for _ in range(n)]


def heldout_vqa(n: int = 200, seed: int = 1234) -> list[Sample]:
    """Fixed VQA set on held-out scenes, short exact-match answers only (no 'describe')."""
    rng = np.random.default_rng(seed)
    kinds = tuple(k for k in VQA_KINDS if k != "describe")
    return [_make_ti2t(rng, heldout=True, kinds=kinds) for _ in range(n)]


def heldout_t2ti(n: int = 20, seed: int = 1234) -> list[Sample]:
    """Fixed interleaved text+image generation set on held-out scenes."""
    rng = np.random.default_rng(seed)
    return [make_sample(rng, "t2ti", heldout=True) for _ in range(n)]


def corpus_text(n: int, seed: int = 0) -> Iterator[str]:
    """Texts for tokenizer training: a vocabulary line, then prompts and answer texts of
    `n` samples cycling over the four modes (train split)."""
    yield " ".join([*COLOURS, *SHAPES, *SIZES, *POSITIONS, *NUMBER_WORDS, "0 1 2 3 4 5 6 7 8 9 10"])
    rng = np.random.default_rng(seed)
    for i in range(n):
        sample = make_sample(rng, MODES[i % len(MODES)])
        yield sample.prompt
        for part in sample.answer:
            if isinstance(part, str):
                yield part
