"""The synthetic "shapes world": scenes, their pictures, their descriptions and the training samples.

A scene is 1-3 flat-coloured shapes (circle/square/triangle, 6 colours, 2 sizes) placed in
distinct cells of a 3x3 grid on a white background. This module knows how to draw a scene,
describe it in canonical English (and parse that English back), split scenes into a train
and a held-out set, state what a drawing prompt asks for (a `Request`: shapes and colours,
sizes and positions when stated), and build the four kinds of chat samples the model is
trained on (t2t, ti2t, t2i, t2ti) plus the fixed evaluation sets, in-distribution and
paraphrased. The phrasings themselves (and which templates are held out) are
`training_ref.language`'s.

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
from typing import Union

import numpy as np
from PIL import Image

from training_ref import language

log = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "yellow": (230, 190, 30),
    "purple": (150, 60, 190),
    "orange": (240, 120, 20),
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
P_SIZE = 0.5  # the share of drawing-request objects whose prompt states their size
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


_pick = language.pick


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


# ----------------------------------------------------------------------------- requests


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


Request = tuple[Want, ...]


def _want_key(w: Want) -> tuple:
    return (POSITION_INDEX.get(w.position or "", -1), w.shape, w.colour, w.size or "")


def _request_pairs(rng: np.random.Generator, scene: Scene, p_position: float = 0.65,
                   p_size: float = P_SIZE) -> list[tuple[Want, Obj]]:
    """What a prompt for `scene` states of each object, in the order the prompt names them, with
    the object: position and size stated with these probabilities (identical objects in a group
    scene state neither position); canonical order, or (30%) shuffled."""
    group = len(scene) > 1 and len({(o.shape, o.colour, o.size) for o in scene}) == 1 and rng.random() < 0.7
    pairs: list[tuple[Want, Obj]] = []
    for o in scene:
        position = None if group or rng.random() >= p_position else o.position
        if group and pairs:
            size = pairs[0][0].size
        else:
            size = o.size if rng.random() < p_size else None
        pairs.append((Want(o.shape, o.colour, size, position), o))
    pairs.sort(key=lambda p: _want_key(p[0]))
    if rng.random() < 0.3:
        pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    # identical unpositioned objects are named together ("two blue squares"): adjacent, first-named order
    first = {w: k for k, (w, _) in reversed(list(enumerate(pairs)))}
    order = sorted(range(len(pairs)), key=lambda k: first[pairs[k][0]] if pairs[k][0].position is None else k)
    return [pairs[k] for k in order]


# Where objects go whose position the prompt leaves open: a fixed layout by how many there are,
# in the order the prompt names them (first named, leftmost), then the first free cells of
# FALLBACK_CELLS. A drawing has one most likely layout, so greedy decoding draws every object
# asked for instead of leaving each cell at its most likely content, the background.
DEFAULT_CELLS: dict[int, tuple[str, ...]] = {1: ("center",), 2: ("left", "right"), 3: ("left", "center", "right")}
FALLBACK_CELLS: tuple[str, ...] = ("center", "left", "right", "top", "bottom", "top left", "top right",
                                   "bottom left", "bottom right")


def default_layout(request: Request, sizes: Sequence[str]) -> Scene:
    """The scene a request asks for: stated positions kept, the others placed by DEFAULT_CELLS
    (free cells only, in naming order); `sizes` gives each object's size where unstated."""
    taken = {w.position for w in request if w.position is not None}
    if len(taken) != sum(w.position is not None for w in request):
        raise ValueError("a request states one cell twice")
    open_ = [i for i, w in enumerate(request) if w.position is None]
    cells = [c for c in DEFAULT_CELLS.get(len(open_), ()) if c not in taken]
    cells += [c for c in FALLBACK_CELLS if c not in taken and c not in cells]
    placed = dict(zip(open_, cells))
    return canonical([Obj(w.shape, w.colour, w.position or placed[i], w.size or s)
                      for i, (w, s) in enumerate(zip(request, sizes))])


def drawing_request(rng: np.random.Generator, heldout: bool, max_objects: int,
                    p_position: float = 0.65, p_size: float = P_SIZE, min_objects: int = 1) -> tuple[Scene, Request]:
    """A request (in naming order) and the scene that fulfils it by the default layout, the
    scene of the requested split; `min_objects` (capped by `max_objects`) to `max_objects` objects."""
    for _ in range(10_000):
        if max_objects > 1 and rng.random() < 0.15:
            scene = _group_scene(rng, int(rng.integers(2, max_objects + 1)))
        else:
            scene = _random_scene(rng, int(rng.integers(min(min_objects, max_objects), max_objects + 1)))
        pairs = _request_pairs(rng, scene, p_position, p_size)
        request = tuple(w for w, _ in pairs)
        drawn = default_layout(request, [o.size for _, o in pairs])
        if is_heldout(drawn) == heldout:
            return drawn, request
    raise RuntimeError("rejection sampling failed to find a drawing request of the requested split")


def _object_phrase(rng: np.random.Generator, w: Want) -> str:
    """'a small red circle on the left', 'a red circle, small, on the left', 'a big red circle'."""
    size = language.pick(rng, language.SIZE_WORDS[w.size]) if w.size else None
    where = "" if w.position is None else " " + language.pick(rng, language.POSITION_WORDINGS[w.position])
    if size and rng.random() < 0.25:
        return f"{language.article(w.colour)} {w.colour} {w.shape}, {size}{',' if where else ''}{where}"
    if size and not where and rng.random() < 0.15:
        return f"{language.article(w.shape)} {w.shape} that is {size} and {w.colour}"
    words = f"{size} {w.colour} {w.shape}" if size else f"{w.colour} {w.shape}"
    return f"{language.article(words)} {words}{where}"


def request_phrase(rng: np.random.Generator, request: Request) -> str:
    """The request in words: 'a small red circle on the left and two blue squares'.

    Unpositioned identical objects become one plural phrase; the phrases come in the request's
    order (the order the default layout places objects by); a stated position follows its noun."""
    groups: dict[Want, int] = {}
    for w in request:
        groups[w] = groups.get(w, 0) + 1
    phrases = []
    for w, n in groups.items():
        if n > 1 and w.position is None:
            size = f"{language.pick(rng, language.SIZE_WORDS[w.size])} " if w.size else ""
            phrases.append(f"{language.number(rng, n, 0.6)} {size}{w.colour} {language.PLURALS[w.shape]}")
            continue
        phrases += [_object_phrase(rng, w) for _ in range(n)]
    if len(phrases) > 2 and rng.random() < 0.3:
        return ", ".join(phrases[:-1]) + ", and " + phrases[-1]
    return join_words(phrases)


def drawing_prompt(rng: np.random.Generator, request: Request, paraphrase: bool) -> str:
    """A drawing frame around the request's words, without a suffix: 'can you draw a red circle'."""
    return language.drawing_frame(rng, paraphrase).format(X=request_phrase(rng, request))


def _group_scene(rng: np.random.Generator, n: int) -> Scene:
    """n objects of one shape, colour and size in distinct cells."""
    shape, colour, size = _pick(rng, SHAPES), _pick(rng, list(COLOURS)), _pick(rng, SIZES)
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    return canonical([Obj(shape, colour, POSITIONS[int(c)], size) for c in cells])


# ----------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One chat exchange: the user's text (plus an input image for ti2t) and the assistant's reply.

    `answer` interleaves text strings and scenes; a scene in the answer is an image the
    assistant generates. `image` is the input scene of a ti2t sample, else None. `request` is
    what a drawing prompt (t2i, t2ti) states of the scene it asks for (None: it names none).
    """

    mode: str
    prompt: str
    image: Scene | None = None
    answer: list[AnswerPart] = field(default_factory=list)
    request: Request | None = None

    def answer_text(self) -> str:
        """The answer's text parts joined with spaces (images left out)."""
        return " ".join(p for p in self.answer if isinstance(p, str))


NUMBER_WORDS = language.NUMBER_WORDS
_SIDES = {"circle": "zero", "square": "four", "triangle": "three"}
_OPPOSITES = {"top": "bottom", "bottom": "top", "left": "right", "right": "left",
              "small": "large", "large": "small"}


def _facts(rng: np.random.Generator) -> tuple[str, str]:
    kind = int(rng.integers(8))
    if kind == 0:
        shape = _pick(rng, SHAPES)
        return _pick(rng, [f"how many sides does a {shape} have?", f"how many sides has a {shape}?"]), _SIDES[shape]
    if kind == 1:
        return _pick(rng, [("which shape is round?", "circle"), ("which shape has three sides?", "triangle"),
                           ("which shape has four sides?", "square")])
    if kind == 2:
        return _pick(rng, [("name a colour of the world.", "red"), ("name a shape of the world.", "circle"),
                           ("what colours can you draw?", join_words(list(COLOURS))),
                           ("list the colours of the world.", join_words(list(COLOURS))),
                           ("what shapes can you draw?", join_words(list(SHAPES))),
                           ("list the shapes of the world.", join_words(list(SHAPES))),
                           ("list the sizes of the world.", join_words(list(SIZES)))])
    if kind == 3:
        word = _pick(rng, list(_OPPOSITES))
        return f"what is the opposite of {word}?", _OPPOSITES[word]
    if kind == 4:
        n = int(rng.integers(10))
        return f"what number comes after {language.number(rng, n)}?", str(n + 1)
    if kind == 5:
        n = int(rng.integers(11))
        return f"write the number {n} in words.", NUMBER_WORDS[n]
    if kind == 6:
        a, b = int(rng.integers(10)), int(rng.integers(10))
        return f"is {language.number(rng, a)} bigger than {language.number(rng, b)}?", "yes" if a > b else "no"
    return _pick(rng, [("how many cells does the grid have?", "9"),
                       ("how many colours are there in the world?", str(len(COLOURS))),
                       ("how many shapes can a picture hold at most?", "3")])


def arithmetic(rng: np.random.Generator, paraphrase: bool = False) -> tuple[str, str]:
    """('what is 3 plus 4?', '7'): a sum or difference of numbers 0-9, digits or words."""
    a, b = int(rng.integers(10)), int(rng.integers(10))
    if rng.random() < 0.5:
        template, answer = _pick(rng, language.split(language.PLUS, language.PARAPHRASE_ARITHMETIC, paraphrase)), a + b
    else:
        a, b = max(a, b), min(a, b)
        template, answer = _pick(rng, language.split(language.MINUS, language.PARAPHRASE_ARITHMETIC, paraphrase)), a - b
    return template.format(a=language.number(rng, a), b=language.number(rng, b)), str(answer)


def _make_t2t(rng: np.random.Generator, paraphrase: bool) -> tuple[str, str]:
    r = rng.random()
    if r < 0.3:
        return _make_reading(rng, paraphrase)
    if r < 0.75:  # arithmetic's 200 facts in many wordings need the most samples of `base`
        return arithmetic(rng, paraphrase)
    if r < 0.85:
        wordings, answer = _pick(rng, language.SMALL_TALK)
        return _pick(rng, language.split(wordings, language.PARAPHRASE_SMALL_TALK, paraphrase)), answer
    return _facts(rng)


def _make_reading(rng: np.random.Generator, paraphrase: bool) -> tuple[str, str]:
    """Reading comprehension over a described scene: the VQA questions, asked of a text.

    It teaches the base model to hold a scene, in the words people use for it, in context
    (what the frozen decoder must carry to the image positions when such words are a drawing
    prompt)."""
    scene = sample_scene(rng)
    objects = request_phrase(rng, tuple(Want.of(o) for o in scene))
    lead = _pick(rng, ["imagine {X}.", "suppose the picture shows {X}.", "the picture shows {X}.",
                       "picture this: {X}.", language.drawing_frame(rng, paraphrase) + "."]).format(X=objects)
    while True:
        qa = vqa_question(rng, scene, _pick(rng, VQA_KINDS[:-1]), paraphrase)
        if qa is not None:
            question = qa[0].replace("the image", "the picture").replace("this image", "the picture")
            return f"{lead} {question}", qa[1]


def _where(rng: np.random.Generator, position: str) -> str:
    return _pick(rng, [w for w in language.POSITION_WORDINGS[position] if " " in w])


def vqa_question(rng: np.random.Generator, scene: Scene, kind: str,
                 paraphrase: bool = False) -> tuple[str, str] | None:
    """(question, answer) of the given VQA kind about `scene`, or None if the kind has no
    unambiguous question for this scene ('where' needs a colour+shape pair that occurs once)."""
    wording = _pick(rng, language.split(language.QUESTIONS[kind], language.PARAPHRASE_QUESTIONS, paraphrase))
    if kind == "count":
        return wording, str(len(scene))
    if kind in ("colour", "shape", "size"):
        obj = _pick(rng, scene)
        answer = {"colour": obj.colour, "shape": obj.shape, "size": obj.size}[kind]
        return wording.format(where=_where(rng, obj.position)), answer
    if kind == "where":
        pairs = [(o.colour, o.shape) for o in scene]
        unique = [o for o in scene if pairs.count((o.colour, o.shape)) == 1]
        if not unique:
            return None
        obj = _pick(rng, unique)
        return wording.format(c=obj.colour, s=obj.shape), obj.position
    if kind == "exists":
        present = {(o.colour, o.shape) for o in scene}
        if rng.random() < 0.5:
            colour, shape = _pick(rng, sorted(present))
        else:
            absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
            colour, shape = _pick(rng, absent)
        return wording.format(c=colour, s=shape), "yes" if (colour, shape) in present else "no"
    if kind == "describe":
        return wording, f"i see {describe(scene)}."
    raise ValueError(f"unknown VQA kind {kind!r}")


def _make_ti2t(rng: np.random.Generator, heldout: bool, kinds: Sequence[str] = VQA_KINDS,
               paraphrase: bool = False) -> Sample:
    scene = sample_scene(rng, heldout=heldout)
    while True:
        qa = vqa_question(rng, scene, _pick(rng, kinds), paraphrase)
        if qa is not None:
            return Sample(mode="ti2t", prompt=qa[0], image=scene, answer=[qa[1]])


def count_phrase(n: int, word: bool = False) -> str:
    """'1 shape', '2 shapes', ... ('two shapes' with word=True)."""
    number = NUMBER_WORDS[n] if word else str(n)
    return f"{number} shape" if n == 1 else f"{number} shapes"


def total_sentence(n: int) -> str:
    """'there is 1 shape in total.' / 'there are N shapes in total.'"""
    return "there is 1 shape in total." if n == 1 else f"there are {n} shapes in total."


def _suffix(rng: np.random.Generator) -> str:
    return _pick(rng, language.SUFFIXES)


def _make_t2ti(rng: np.random.Generator, heldout: bool, max_objects: int, paraphrase: bool,
               p_multi: float = 0.0) -> Sample:
    """Draw, then say: 'here is <the scene>.' + the image + a closing sentence that answers the tail.
    A share `p_multi` of the samples are requests for two or three objects (restating practice)."""
    lang = language
    r = rng.random()
    request = None
    if p_multi and max_objects > 1 and rng.random() < p_multi:
        scene, request = drawing_request(rng, heldout, max_objects, min_objects=2)
        tail = _pick(rng, lang.split(lang.TELL_TAILS, lang.PARAPHRASE_TELL_TAILS, paraphrase))
        prompt = drawing_prompt(rng, request, paraphrase) + tail
        closing = total_sentence(len(scene))
    elif r < 0.2:  # a single object, then where it is
        scene, request = drawing_request(rng, heldout, 1, p_position=0.0)
        tail = _pick(rng, lang.split(lang.WHERE_TAILS, lang.PARAPHRASE_WHERE_TAILS, paraphrase))
        prompt = drawing_prompt(rng, request, paraphrase) + tail
        closing = f"it is {position_phrase(scene[0].position)}."
    else:
        tail = _pick(rng, lang.split(lang.TELL_TAILS, lang.PARAPHRASE_TELL_TAILS, paraphrase))
        if r < 0.65:
            scene, request = drawing_request(rng, heldout, max_objects)
            prompt = drawing_prompt(rng, request, paraphrase) + tail
        elif r < 0.85:
            scene = sample_scene(rng, n_objects=int(rng.integers(1, max_objects + 1)), heldout=heldout)
            frame = _pick(rng, lang.split(lang.COUNT_FRAMES, lang.PARAPHRASE_COUNT_FRAMES, paraphrase))
            prompt = frame.format(count=count_phrase(len(scene), rng.random() < 0.4), tail=tail)
        else:
            scene = sample_scene(rng, heldout=heldout, max_objects=max_objects)
            prompt = _pick(rng, lang.split(lang.FREE_FRAMES, lang.PARAPHRASE_FREE_FRAMES, paraphrase)).format(tail=tail)
        closing = total_sentence(len(scene))
    answer: list[AnswerPart] = [f"here is {describe(scene)}.", scene, closing]
    return Sample(mode="t2ti", prompt=prompt + _pick(rng, (".", "", "!")), answer=answer, request=request)


def make_sample(rng: np.random.Generator, mode: str, heldout: bool = False,
                max_objects: int = MAX_OBJECTS, paraphrase: bool = False, p_size: float = P_SIZE,
                p_multi: float = 0.0) -> Sample:
    """A random sample of `mode`; scenes come from the held-out split with heldout=True, and
    phrasings from the held-out templates with paraphrase=True (language.PARAPHRASE_*). A t2i
    prompt states each object's size with probability `p_size`; a share `p_multi` of t2ti
    samples ask for two or three objects (the `base` stage's restating phase).

    t2t ignores `heldout` (no scene). `max_objects` caps the scenes the model is asked to draw
    (t2i, t2ti: the training curriculum); understanding scenes (ti2t) keep 1-3 objects.
    Deterministic given the generator's state.
    """
    if mode == "t2t":
        prompt, answer = _make_t2t(rng, paraphrase)
        return Sample(mode="t2t", prompt=prompt, answer=[answer])
    if mode == "ti2t":
        return _make_ti2t(rng, heldout, paraphrase=paraphrase)
    if mode == "t2i":
        scene, request = drawing_request(rng, heldout, max_objects, p_size=p_size)
        prompt = drawing_prompt(rng, request, paraphrase) + _suffix(rng)
        return Sample(mode="t2i", prompt=prompt, answer=[scene], request=request)
    if mode == "t2ti":
        return _make_t2ti(rng, heldout, max_objects, paraphrase, p_multi)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# ----------------------------------------------------------------------------- fixed sets


def heldout_t2i(n: int = 200, seed: int = 1234, paraphrase: bool = False, every_size: bool = False) -> list[Sample]:
    """Fixed text-to-image evaluation set on held-out scenes (held-out templates with paraphrase).

    The split holds out drawn scenes, sizes included, and a size the prompt leaves open is the
    scene's random one, so an open-size request is often a training scene in its other size,
    which ShapeEval's all_correct does not tell apart. every_size=True states every size: each
    request fixes its held-out scene, and all_correct_sized scores it without that leak
    (docs/model-card.md, the v2 trials)."""
    rng = np.random.default_rng(seed)
    return [make_sample(rng, "t2i", heldout=True, paraphrase=paraphrase, p_size=1.0 if every_size else P_SIZE)
            for _ in range(n)]


def canonical_t2i(n: int = 40, seed: int = 1234) -> list[Sample]:
    """Held-out scenes asked for in the world's one canonical phrasing, every attribute stated:
    'draw a large red circle at the top left and a small blue square in the center.' Every
    checkpoint of the world reads it (v1 knew only this form; v2 trains on it among others), so
    quality gates that compare two builds of one checkpoint use it."""
    rng = np.random.default_rng(seed)
    return [Sample(mode="t2i", prompt=f"draw {describe(scene)}.", answer=[scene])
            for scene in (sample_scene(rng, heldout=True) for _ in range(n))]


def heldout_vqa(n: int = 200, seed: int = 1234, paraphrase: bool = False) -> list[Sample]:
    """Fixed VQA set on held-out scenes, short exact-match answers only (no 'describe')."""
    rng = np.random.default_rng(seed)
    kinds = tuple(k for k in VQA_KINDS if k != "describe")
    return [_make_ti2t(rng, heldout=True, kinds=kinds, paraphrase=paraphrase) for _ in range(n)]


def heldout_t2ti(n: int = 200, seed: int = 1234, paraphrase: bool = False) -> list[Sample]:
    """Fixed interleaved text+image generation set on held-out scenes."""
    rng = np.random.default_rng(seed)
    return [make_sample(rng, "t2ti", heldout=True, paraphrase=paraphrase) for _ in range(n)]


def heldout_arithmetic(n: int = 200, seed: int = 1234, paraphrase: bool = False) -> list[Sample]:
    """Fixed t2t arithmetic set (sums and differences of 0-9); the answer is the number in digits."""
    rng = np.random.default_rng(seed)
    return [_arith_sample(rng, paraphrase) for _ in range(n)]


def _arith_sample(rng: np.random.Generator, paraphrase: bool) -> Sample:
    prompt, answer = arithmetic(rng, paraphrase)
    return Sample(mode="t2t", prompt=prompt, answer=[answer])


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
