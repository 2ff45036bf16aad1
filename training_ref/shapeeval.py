"""Deterministic shapes-world detector and the evaluation scores built on it.

`detect` turns any square RGB image (a `world.render` output, or a blurry/compressed image
decoded from VQ codes) back into a scene: each pixel is classified to the nearest palette
colour (or background when too far from every colour), coloured pixels are grouped into
8-connected components, tiny components are dropped, and each component takes the colour most
of its pixels have and gets a shape, a position (grid cell of its centroid) and a size from
blur-tolerant moments of that colour's soft coverage around it (see `classify_blob`).

The scorers compare detections with the scene a prompt asked for (GenEval-style t2i
scores), answers with references (VQA exact match), and a t2ti reply's text with its image.
This module knows the world's palette and geometry (from `training_ref.world`); it knows
nothing about models, tokens or torch.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Union

import numpy as np
from PIL import Image

from training_ref.world import BACKGROUND, COLOURS, POSITIONS, Obj, Request, Scene, Want, canonical, parse_description

log = logging.getLogger(__name__)

MAX_COLOUR_DISTANCE = 90.0  # RGB distance beyond which a pixel is background
MIN_AREA_FRACTION = 0.015  # components smaller than this fraction of a cell's area are noise
COVERAGE_FLOOR = 0.15  # coverage below this is treated as background noise
MAX_OFF_SEGMENT = 60.0  # RGB distance from the white-to-colour segment beyond which coverage is 0
WINDOW_MARGIN = 0.2  # features are measured in the bbox grown by this fraction of a cell (>= 2 px)
# Shape features are scale-free moments normalised by the coverage area A (see classify_blob).
TRIANGLE_M3 = -0.004  # E[dy^3] / A^1.5: the world's triangles -0.019, -0.006 after a 2 px blur at 64 px; others 0
SQUARE_C22 = -0.0014  # cov(dx^2, dy^2) / A^2: square 0 (-0.0009 blurred), disc -1/(48 pi^2) = -0.0021
SIZE_RADIUS_THRESHOLD = 0.31  # estimated radius / cell side: small 0.24, large 0.40
# Area of each shape in units of r^2 (r = radius of the circumscribing circle, see world.render).
SHAPE_AREA_FACTOR = {"circle": np.pi, "square": (2 * 0.9) ** 2, "triangle": 3 * np.sqrt(3) / 4}

_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float32)
_NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))  # with their opposites: 8-connectivity


def classify_pixels(pixels: np.ndarray) -> np.ndarray:
    """(H, W) int map: palette index for coloured pixels, -1 for background."""
    flat = pixels.reshape(-1, 3).astype(np.float32)
    dist2 = ((flat[:, None, :] - _PALETTE[None, :, :]) ** 2).sum(axis=2)
    nearest = dist2.argmin(axis=1)
    near_enough = dist2[np.arange(len(flat)), nearest] <= MAX_COLOUR_DISTANCE**2
    return np.where(near_enough, nearest, -1).reshape(pixels.shape[:2])


def label_components(classes: np.ndarray) -> np.ndarray:
    """8-connected components of equal non-negative class: (H, W) labels, -1 for background.

    A component's label is the smallest flat pixel index in it. Min-label propagation with
    pointer jumping, all in numpy (scipy is not available).
    """
    h, w = classes.shape
    fg = classes >= 0
    big = h * w
    labels = np.where(fg, np.arange(big).reshape(h, w), big)
    # For each neighbour offset, the pairs of pixels (a, b) that must share a label.
    pairs = []
    for dy, dx in _NEIGHBOURS:
        ys0, ys1 = (slice(0, h - dy), slice(dy, h))
        xs0, xs1 = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        same = fg[ys0, xs0] & (classes[ys0, xs0] == classes[ys1, xs1])
        idx = np.arange(big).reshape(h, w)
        pairs.append((idx[ys0, xs0][same], idx[ys1, xs1][same]))
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    flat = labels.ravel().copy()
    while True:
        previous = flat.copy()
        m = np.minimum(flat[a], flat[b])
        np.minimum.at(flat, a, m)
        np.minimum.at(flat, b, m)
        fg_idx = np.flatnonzero(flat < big)
        flat[fg_idx] = flat[flat[fg_idx]]  # pointer jumping: a label is a pixel index of the component
        if np.array_equal(flat, previous):
            break
    flat[flat == big] = -1
    return flat.reshape(h, w)


def coverage(pixels: np.ndarray, colour: str) -> np.ndarray:
    """Per-pixel coverage in [0, 1] by `colour`: the pixel's position on the white-to-colour
    segment in RGB (a blurred edge is a blend of the two). Pixels far off that segment
    (another colour) and faint ones (below COVERAGE_FLOOR, mostly noise) get 0."""
    direction = np.array(BACKGROUND, np.float32) - np.array(COLOURS[colour], np.float32)
    offset = np.array(BACKGROUND, np.float32) - pixels.astype(np.float32)
    alpha = (offset @ direction) / float(direction @ direction)
    off_segment = np.linalg.norm(offset - alpha[..., None] * direction, axis=-1) > MAX_OFF_SEGMENT
    alpha = np.clip(alpha, 0.0, 1.0)
    alpha[off_segment | (alpha < COVERAGE_FLOOR)] = 0.0
    return alpha


def classify_blob(alpha: np.ndarray, cell: float, origin: tuple[int, int] = (0, 0)) -> tuple[str, str, str]:
    """(shape, position, size) of one object from its coverage map (a window of the image
    whose top-left pixel is at `origin` = (row, col)), by coverage-weighted moments:

    - triangle: the vertical profile is skewed (mass at the bottom, apex up): the third
      central moment of y over A^1.5 is below TRIANGLE_M3 (0 for circles and squares);
    - square vs circle: cov(dx^2, dy^2) / A^2 is 0 for a square (x, y independent) and
      -1/(48 pi^2) for a disc; threshold SQUARE_C22;
    - position: the cell of the weighted centroid; size: the radius implied by the weighted
      area for that shape, relative to the cell side, against SIZE_RADIUS_THRESHOLD.

    A symmetric blur keeps the area, the centroid, the third central moment and
    cov(dx^2, dy^2) (cumulants add), which is why these features survive blurry decoder
    outputs better than bounding-box fill ratios or normalised skewness would.
    """
    area = float(alpha.sum())
    ys, xs = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]].astype(np.float64) + 0.5
    ys += origin[0]
    xs += origin[1]
    my, mx = (alpha * ys).sum() / area, (alpha * xs).sum() / area
    dy, dx = ys - my, xs - mx
    var_y = (alpha * dy**2).sum() / area
    var_x = (alpha * dx**2).sum() / area
    m3 = (alpha * dy**3).sum() / area / area**1.5
    c22 = ((alpha * dx**2 * dy**2).sum() / area - var_x * var_y) / area**2
    if m3 < TRIANGLE_M3:
        shape = "triangle"
    elif c22 > SQUARE_C22:
        shape = "square"
    else:
        shape = "circle"
    col = min(max(int(mx // cell), 0), 2)
    row = min(max(int(my // cell), 0), 2)
    radius = np.sqrt(area / SHAPE_AREA_FACTOR[shape]) / cell
    size = "large" if radius >= SIZE_RADIUS_THRESHOLD else "small"
    return shape, POSITIONS[row * 3 + col], size


def detect(image: Image.Image) -> Scene:
    """Objects in a square RGB image of any size, in canonical order (see module docstring).

    Components are the connected coloured regions; each takes the colour most of its pixels
    are nearest to, and its features are measured on the soft coverage of that colour in a
    window around its bounding box, with the pixels of other components masked out.
    """
    pixels = np.asarray(image.convert("RGB"))
    h, w = pixels.shape[:2]
    if h != w:
        raise ValueError(f"detect needs a square image, got {w}x{h}")
    cell = h / 3.0
    classes = classify_pixels(pixels)
    # objects sit in distinct cells with background between them: a component is any connected
    # coloured region, whatever the colours of its pixels (a blurred edge of one colour can lie
    # nearer another palette colour), and its colour is the one most of its pixels have,
    # weighted by how far from white they are (the edge counts least)
    labels = label_components(np.where(classes >= 0, 0, -1))
    strength = np.linalg.norm(pixels.astype(np.float32) - np.array(BACKGROUND, np.float32), axis=-1).ravel()
    flat_labels = labels.ravel()
    fg = np.flatnonzero(flat_labels >= 0)
    if len(fg) == 0:
        return ()
    ids, inverse, counts = np.unique(flat_labels[fg], return_inverse=True, return_counts=True)
    min_area = MIN_AREA_FRACTION * cell * cell
    margin = max(2, int(round(WINDOW_MARGIN * cell)))
    objs = []
    for k in np.flatnonzero(counts >= min_area):
        members = fg[inverse == k]
        ys, xs = np.divmod(members, w)
        y0, y1 = max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin + 1, h)
        x0, x1 = max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin + 1, w)
        votes = np.bincount(classes.ravel()[members], weights=strength[members], minlength=len(_PALETTE_NAMES))
        colour = _PALETTE_NAMES[int(votes.argmax())]
        alpha = coverage(pixels[y0:y1, x0:x1], colour)
        window_labels = labels[y0:y1, x0:x1]
        alpha[(window_labels >= 0) & (window_labels != ids[k])] = 0.0
        if alpha.sum() < 0.5 * counts[k]:  # colours far off the white-to-colour segment
            alpha = (window_labels == ids[k]).astype(np.float64)
        shape, position, size = classify_blob(alpha, cell, origin=(y0, x0))
        objs.append(Obj(shape=shape, colour=colour, position=position, size=size))
    return canonical(objs)


# ----------------------------------------------------------------------------- scores


Spec = Union[Scene, Request]  # a full scene, or what a prompt states (sizes, positions optional)


def _wants(spec: Spec) -> list[Want]:
    return [o if isinstance(o, Want) else Want.of(o) for o in spec]


def _agreement(w: Want, d: Obj) -> int:
    """Attributes of `d` that agree with what `w` states; a stated position counts double (the
    cell decides the match first)."""
    return (int(w.colour == d.colour) + int(w.shape == d.shape) + int(w.size is not None and w.size == d.size)
            + 2 * int(w.position is not None and w.position == d.position))


def _fits(w: Want, d: Obj, sized: bool = False) -> bool:
    """All-correct's test: shape and colour right, and the position when stated (size not part;
    with sized=True the size too, when stated)."""
    return (w.shape == d.shape and w.colour == d.colour and w.position in (None, d.position)
            and (not sized or w.size in (None, d.size)))


def match_objects(spec: Spec, dets: Sequence[Obj]) -> list[Obj | None]:
    """For each spec object (in order), its matched detection or None: the assignment of
    distinct detections with the most agreement (ties: the earlier detections). Exhaustive for
    up to 7 detections, greedy beyond (a picture of the world holds at most 3 objects)."""
    wants = _wants(spec)
    if len(dets) <= 7:
        k = min(len(wants), len(dets))
        best, best_score = (), -1
        for chosen in itertools.permutations(range(len(dets)), k):
            score = sum(_agreement(w, dets[j]) for w, j in zip(wants, chosen))
            if score > best_score:
                best, best_score = chosen, score
        return [dets[j] for j in best] + [None] * (len(wants) - k)
    free, matched = list(range(len(dets))), []
    for w in wants:
        j = max(free, key=lambda j: (_agreement(w, dets[j]), -j)) if free else None
        matched.append(None if j is None else dets[j])
        if j is not None:
            free.remove(j)
    return matched


def fulfils(spec: Spec, dets: Sequence[Obj], sized: bool = False) -> bool:
    """True when the detections are exactly what the spec asks for: as many, and some pairing
    gives every spec object a detection that `_fits` it (`sized`: stated sizes included)."""
    wants = _wants(spec)
    if len(dets) != len(wants):
        return False
    return any(all(_fits(w, dets[j], sized) for w, j in zip(wants, order))
               for order in itertools.permutations(range(len(dets))))


def score_t2i(specs: Sequence[Spec], images: Sequence[Image.Image]) -> dict[str, float]:
    """GenEval-style scores of generated images against what their prompts asked for.

    A spec is a full scene or a `Request` (shape and colour of every object; size and position
    where the prompt states them). Each image is run through `detect` and matched with
    `match_objects`; spec objects left unmatched (too few detections) count as wrong.

    Returns fractions in [0, 1]:
      colour, shape: over all spec objects, the matched detection has it right;
      size, position: the same over the spec objects that state it;
      count: over images, the number of detections equals the number of spec objects;
      all_correct: over images, `fulfils` (size is not part of it);
      all_correct_sized: the same with every stated size right too (the held-out split holds
        out whole scenes, sizes included, so only this one cannot be passed by drawing a
        training scene in another size, on prompts that state every size);
    plus n_images and n_objects.
    """
    if len(specs) != len(images):
        raise ValueError(f"{len(specs)} specs but {len(images)} images")
    hits = {"colour": 0, "shape": 0, "size": 0, "position": 0}
    stated = {"size": 0, "position": 0}
    n_objects = count_ok = all_ok = sized_ok = 0
    for spec, image in zip(specs, images):
        dets = detect(image)
        wants = _wants(spec)
        for w, d in zip(wants, match_objects(wants, dets)):
            n_objects += 1
            stated["size"] += w.size is not None
            stated["position"] += w.position is not None
            if d is not None:
                hits["colour"] += w.colour == d.colour
                hits["shape"] += w.shape == d.shape
                hits["size"] += w.size is not None and w.size == d.size
                hits["position"] += w.position is not None and w.position == d.position
        count_ok += len(dets) == len(wants)
        ok = fulfils(wants, dets)
        all_ok += ok
        sized_ok += ok and fulfils(wants, dets, sized=True)  # sized implies ok: skip the search otherwise
    n_images = len(specs)
    scores = {k: v / max(n_objects if k in ("colour", "shape") else stated[k], 1) for k, v in hits.items()}
    scores["count"] = count_ok / max(n_images, 1)
    scores["all_correct"] = all_ok / max(n_images, 1)
    scores["all_correct_sized"] = sized_ok / max(n_images, 1)
    scores["n_images"] = float(n_images)
    scores["n_objects"] = float(n_objects)
    log.debug("score_t2i: %s", scores)
    return scores


def normalize_answer(text: str) -> str:
    """Lowercase, strip, drop one trailing '.', strip again."""
    text = text.lower().strip()
    if text.endswith("."):
        text = text[:-1]
    return text.strip()


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Exact-match accuracy after `normalize_answer`; 0.0 for empty inputs."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
    if not answers:
        return 0.0
    right = sum(normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers))
    return right / len(answers)


def _core(objs: Sequence[Obj]) -> list[tuple[str, str, str]]:
    return sorted((o.shape, o.colour, o.position) for o in objs)


def t2ti_consistency(text_before: str, image: Image.Image) -> bool:
    """True when the scene parsed from the text before the image equals the detected scene
    on (shape, colour, position); False when the text names no object."""
    parsed = parse_description(text_before)
    if parsed is None:
        return False
    return _core(parsed) == _core(detect(image))


def text_fulfils(spec: Spec, text: str) -> bool:
    """True when the objects the text names (parse_description) are exactly what the spec asks
    for, as `fulfils` scores a drawing's detections; False when the text names no object."""
    parsed = parse_description(text)
    return parsed is not None and fulfils(spec, parsed)


__all__ = [
    "classify_pixels", "label_components", "coverage", "classify_blob", "detect", "match_objects",
    "fulfils", "score_t2i", "normalize_answer", "vqa_accuracy", "t2ti_consistency", "text_fulfils",
]
