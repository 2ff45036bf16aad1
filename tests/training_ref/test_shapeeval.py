"""The detector and the scorers: accuracy on clean and degraded renders, matching, VQA consistency."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image, ImageFilter

from training_ref import language, shapeeval, world
from training_ref.world import COLOURS, Obj

ATTRIBUTES = ("colour", "shape", "position", "count", "all_correct")


def _scenes(n: int, seed: int) -> list[tuple[Obj, ...]]:
    rng = np.random.default_rng(seed)
    return [world.sample_scene(rng) for _ in range(n)]


def _degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian noise (sigma 12 per channel), then a 1-px Gaussian blur."""
    noisy = np.asarray(image).astype(np.float64) + rng.normal(0.0, 12.0, size=np.asarray(image).shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))


@pytest.mark.parametrize("size,n", [(64, 300), (256, 50)])
def test_detector_on_clean_renders(size: int, n: int) -> None:
    specs = _scenes(n, seed=size)
    scores = shapeeval.score_t2i(specs, [world.render(s, size) for s in specs])
    for key in ATTRIBUTES + ("size",):
        assert scores[key] >= 0.99, (key, scores)
    assert scores["n_images"] == n


@pytest.mark.parametrize("size,n", [(64, 300), (256, 30)])
def test_detector_on_noisy_blurred_renders(size: int, n: int) -> None:
    rng = np.random.default_rng(5)
    specs = _scenes(n, seed=size + 1)
    scores = shapeeval.score_t2i(specs, [_degrade(world.render(s, size), rng) for s in specs])
    for key in ATTRIBUTES:
        assert scores[key] >= 0.95, (key, scores)


def test_detect_exact_objects() -> None:
    scene = (Obj("triangle", "purple", "top", "small"), Obj("circle", "blue", "center", "large"),
             Obj("square", "yellow", "bottom right", "small"))
    assert shapeeval.detect(world.render(scene, 64)) == scene
    assert shapeeval.detect(world.render(scene, 96)) == scene
    assert shapeeval.detect(world.render((), 64)) == ()
    with pytest.raises(ValueError):
        shapeeval.detect(Image.new("RGB", (64, 32), "white"))


def test_detect_ignores_specks_and_off_palette_colours() -> None:
    pixels = np.asarray(world.render((Obj("square", "red", "left", "large"),), 64)).copy()
    pixels[2, 2] = world.COLOURS["green"]  # a one-pixel speck
    pixels[50:56, 50:56] = (0, 0, 0)  # black is not a palette colour
    assert shapeeval.detect(Image.fromarray(pixels)) == (Obj("square", "red", "left", "large"),)


def test_label_components_uses_8_connectivity_per_class() -> None:
    classes = -np.ones((6, 6), dtype=np.int64)
    classes[0, 0] = classes[1, 1] = 0  # diagonal neighbours: one component
    classes[4, 4] = classes[4, 5] = 1
    classes[5, 5] = 0  # touches class 1 but is another class
    labels = shapeeval.label_components(classes)
    assert labels[0, 0] == labels[1, 1] == 0
    assert labels[4, 4] == labels[4, 5] != labels[5, 5]
    assert len(np.unique(labels[labels >= 0])) == 3
    assert (labels[classes < 0] == -1).all()


def test_score_t2i_matching_and_failures() -> None:
    a = Obj("circle", "red", "top left", "large")
    b = Obj("square", "blue", "center", "small")
    spec = (a, b)
    wrong_colour = world.render((a, Obj("square", "green", "center", "small")), 64)
    s = shapeeval.score_t2i([spec], [wrong_colour])
    assert s["colour"] == 0.5 and s["shape"] == 1.0 and s["position"] == 1.0
    assert s["count"] == 1.0 and s["all_correct"] == 0.0
    # The square drawn one cell off: matched by attributes in pass 2, position wrong.
    moved = world.render((a, Obj("square", "blue", "right", "small")), 64)
    s = shapeeval.score_t2i([spec], [moved])
    assert s["colour"] == 1.0 and s["shape"] == 1.0 and s["position"] == 0.5 and s["all_correct"] == 0.0
    missing = world.render((a,), 64)
    s = shapeeval.score_t2i([spec], [missing])
    assert s["count"] == 0.0 and s["colour"] == 0.5 and s["all_correct"] == 0.0
    # Size is reported but not part of all_correct; all_correct_sized checks a stated size too.
    s = shapeeval.score_t2i([spec], [world.render((a, Obj("square", "blue", "center", "large")), 64)])
    assert s["size"] == 0.5 and s["all_correct"] == 1.0 and s["all_correct_sized"] == 0.0
    assert shapeeval.score_t2i([spec], [world.render(spec, 64)])["all_correct_sized"] == 1.0
    with pytest.raises(ValueError):
        shapeeval.score_t2i([spec], [])


def test_vqa_accuracy_normalisation() -> None:
    assert shapeeval.vqa_accuracy(["Red.", " 2 ", "top left"], ["red", "2", "top right"]) == pytest.approx(2 / 3)
    assert shapeeval.vqa_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        shapeeval.vqa_accuracy(["a"], [])


def test_t2ti_consistency() -> None:
    scene = _scenes(1, seed=3)[0]
    text = f"here is {world.describe(scene)}."
    assert shapeeval.t2ti_consistency(text, world.render(scene, 64))
    other = tuple(Obj(o.shape, "green" if o.colour != "green" else "red", o.position, o.size) for o in scene)
    assert not shapeeval.t2ti_consistency(text, world.render(other, 64))
    assert not shapeeval.t2ti_consistency("here is a nice picture.", world.render(scene, 64))
    for s in world.heldout_t2ti():
        assert shapeeval.t2ti_consistency(s.answer[0], world.render(s.answer[1], 64))


_WORDINGS = sorted(((w, p) for p, ws in language.POSITION_WORDINGS.items() for w in ws), key=lambda x: -len(x[0]))


def _answer_from_detections(question: str, scene: tuple[Obj, ...]) -> str:
    """An independent reading of every VQA question type against a detected scene, by keywords.

    Asserts that the question has exactly one correct answer on that scene.
    """
    if question.startswith(("how many", "count")):
        return str(len(scene))
    if question in language.QUESTIONS["describe"]:
        return f"i see {world.describe(scene)}."
    named = re.search(rf"\b(?:the|an?|any) ({'|'.join(COLOURS)}) (circle|square|triangle)\b", question)
    if question.startswith(("where", "in which cell")):
        found = [o for o in scene if (o.colour, o.shape) == (named.group(1), named.group(2))]
        assert len(found) == 1, (question, scene)
        return found[0].position
    if question.startswith(("is there", "do you see", "can you find")):
        return "yes" if any((o.colour, o.shape) == (named.group(1), named.group(2)) for o in scene) else "no"
    position = next(p for w, p in _WORDINGS if f" {w}" in question)
    at = [o for o in scene if o.position == position]
    assert len(at) == 1, (question, scene)
    if "colo" in question:
        return at[0].colour
    if any(k in question for k in ("small", "big", "large")):
        return at[0].size
    assert "shape" in question, question
    return at[0].shape


def test_every_vqa_answer_agrees_with_the_detector() -> None:
    rng = np.random.default_rng(14)
    samples = [world.make_sample(rng, "ti2t") for _ in range(300)] + world.heldout_vqa() + \
        world.heldout_vqa(100, paraphrase=True)
    predictions, answers = [], []
    for s in samples:
        predictions.append(_answer_from_detections(s.prompt, shapeeval.detect(world.render(s.image, 64))))
        answers.append(s.answer[0])
    assert shapeeval.vqa_accuracy(predictions, answers) == 1.0


def test_partial_requests_score_what_they_state() -> None:
    from training_ref.world import Want

    a, b = Obj("circle", "red", "top left", "large"), Obj("square", "blue", "center", "small")
    image = world.render((a, b), 64)
    dets = shapeeval.detect(image)
    assert shapeeval.fulfils((Want("circle", "red"), Want("square", "blue", position="center")), dets)
    assert shapeeval.fulfils((Want("square", "blue", "large"), Want("circle", "red")), dets)  # size not in all-correct
    assert not shapeeval.fulfils((Want("circle", "red"), Want("square", "blue", position="top")), dets)
    assert not shapeeval.fulfils((Want("circle", "red"),), dets)  # one extra object
    two = world.render((Obj("square", "blue", "left", "small"), Obj("square", "blue", "bottom right", "large")), 64)
    assert shapeeval.fulfils((Want("square", "blue"), Want("square", "blue")), shapeeval.detect(two))
    assert not shapeeval.fulfils((Want("square", "blue"), Want("square", "blue")), dets)
    s = shapeeval.score_t2i([(Want("circle", "red", "small"), Want("square", "blue", position="top"))], [image])
    assert (s["colour"], s["shape"], s["size"], s["position"], s["count"], s["all_correct"]) == (1, 1, 0, 0, 1, 0)


def test_text_fulfils_reads_what_the_sentence_names_against_the_request() -> None:
    W = world.Want
    request = (W("circle", "red", position="left"), W("square", "blue"))
    assert shapeeval.text_fulfils(request, "here is a small red circle at the left and a large blue square at the top.")
    assert not shapeeval.text_fulfils(request, "here is a small red circle at the right and a large blue square.")
    assert not shapeeval.text_fulfils(request, "here is a small red circle at the left and a small red circle at the top.")
    assert not shapeeval.text_fulfils(request, "here is a small red circle at the left.")  # one object missing
    assert not shapeeval.text_fulfils(request, "here it is.")
    # the world's own answers restate their requests
    assert all(shapeeval.text_fulfils(s.request, s.answer[0]) for s in world.heldout_t2ti() if s.request)
