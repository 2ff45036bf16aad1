"""The shapes world: constants, rendering, language round trip, split and samples."""

from __future__ import annotations

import re

import numpy as np
import pytest

from training_ref import language, shapeeval, world
from training_ref.world import COLOURS, POSITIONS, SHAPES, SIZES, Obj


def _scenes(n: int, seed: int = 0) -> list[tuple[Obj, ...]]:
    rng = np.random.default_rng(seed)
    return [world.sample_scene(rng) for _ in range(n)]


def test_constants_are_exact() -> None:
    assert COLOURS == {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 220),
                       "yellow": (230, 190, 30), "purple": (150, 60, 190), "orange": (240, 120, 20)}
    assert world.BACKGROUND == (255, 255, 255)
    assert SHAPES == ("circle", "square", "triangle")
    assert SIZES == ("small", "large")
    assert POSITIONS == ("top left", "top", "top right", "left", "center", "right",
                         "bottom left", "bottom", "bottom right")


def test_obj_rejects_unknown_values() -> None:
    with pytest.raises(ValueError):
        Obj("hexagon", "red", "top", "small")
    with pytest.raises(ValueError):
        Obj("circle", "red", "middle", "small")


@pytest.mark.parametrize("size", [64, 256])
def test_render_is_flat_and_places_objects_in_their_cells(size: int) -> None:
    palette = {*COLOURS.values(), world.BACKGROUND}
    cell = size / 3
    for scene in _scenes(20, seed=size):
        image = world.render(scene, size)
        assert image.mode == "RGB" and image.size == (size, size)
        pixels = np.asarray(image)
        packed = np.unique(pixels.reshape(-1, 3).astype(np.int64) @ np.array([65536, 256, 1]))
        assert {(int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255) for v in packed} <= palette
        for obj in scene:
            row, col = divmod(POSITIONS.index(obj.position), 3)
            cy, cx = int((row + 0.5) * cell), int((col + 0.5) * cell)
            assert tuple(pixels[cy, cx]) == COLOURS[obj.colour]
        # Nothing but background on the grid lines: objects stay inside their cells.
        for k in (1, 2):
            line = int(round(k * cell))
            assert (pixels[line, :] == 255).all() and (pixels[:, line] == 255).all()


def test_describe_example_and_joining() -> None:
    a = Obj("circle", "red", "top left", "large")
    b = Obj("square", "blue", "center", "small")
    c = Obj("triangle", "green", "bottom", "small")
    assert world.describe((b, a)) == "a large red circle at the top left and a small blue square in the center"
    assert world.describe((c, a, b)) == ("a large red circle at the top left, a small blue square in the center "
                                         "and a small green triangle at the bottom")
    assert world.describe((a,)) == "a large red circle at the top left"


def test_describe_parse_roundtrip_500() -> None:
    for scene in _scenes(500, seed=1):
        assert world.parse_description(world.describe(scene)) == scene
        assert world.parse_description(f"Sure! here is {world.describe(scene)}. Anything else?") == scene


def test_parse_description_edge_cases() -> None:
    assert world.parse_description("hello there") is None
    assert world.parse_description("") is None
    # "top" must not be read from "top left", nor "left" from "bottom left".
    parsed = world.parse_description("a small red circle at the top left and a large blue square at the bottom left")
    assert parsed == (Obj("circle", "red", "top left", "small"), Obj("square", "blue", "bottom left", "large"))


def test_heldout_split_is_about_ten_percent_and_disjoint() -> None:
    rng = np.random.default_rng(2)
    raw = [world._random_scene(rng, int(rng.integers(1, 4))) for _ in range(20000)]
    fraction = np.mean([world.is_heldout(s) for s in raw])
    assert 0.08 < fraction < 0.12
    train = set(_scenes(3000, seed=3))
    assert not any(world.is_heldout(s) for s in train)
    held = {s.answer[0] for s in world.heldout_t2i()}
    assert all(world.is_heldout(s) for s in held)
    assert not train & held
    assert world.is_heldout(raw[0]) == world.is_heldout(tuple(reversed(raw[0])))  # order-free


def test_sample_scene_shapes() -> None:
    rng = np.random.default_rng(4)
    for n in (1, 2, 3):
        for heldout in (False, True):
            scene = world.sample_scene(rng, n_objects=n, heldout=heldout)
            assert len(scene) == n and world.is_heldout(scene) == heldout
            assert len({o.position for o in scene}) == n
            assert scene == world.canonical(scene)
    with pytest.raises(ValueError):
        world.sample_scene(rng, n_objects=4)


def test_max_objects_caps_only_the_scenes_to_draw() -> None:
    for cap in (1, 2):
        rng = np.random.default_rng(cap)
        for mode in ("t2i", "t2ti"):
            counts = {len(next(p for p in world.make_sample(rng, mode, max_objects=cap).answer if not isinstance(p, str)))
                      for _ in range(200)}
            assert counts == set(range(1, cap + 1))
        assert max(len(world.make_sample(rng, "ti2t", max_objects=cap).image) for _ in range(200)) == 3
    for mode in world.MODES:  # the default cap draws the same stream (held-out sets do not move)
        rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
        assert [world.make_sample(rng1, mode) for _ in range(20)] == \
            [world.make_sample(rng2, mode, max_objects=3) for _ in range(20)]
    with pytest.raises(ValueError):
        world.sample_scene(np.random.default_rng(0), max_objects=0)


def test_samples_are_deterministic_for_a_seed() -> None:
    for mode in world.MODES:
        rng1, rng2 = np.random.default_rng(8), np.random.default_rng(8)
        assert [world.make_sample(rng1, mode) for _ in range(50)] == [world.make_sample(rng2, mode) for _ in range(50)]
        assert world.make_sample(np.random.default_rng(7), mode) == world.make_sample(np.random.default_rng(7), mode)
    assert world.heldout_t2i() == world.heldout_t2i()
    assert world.heldout_vqa() == world.heldout_vqa()
    assert world.heldout_t2ti() == world.heldout_t2ti()
    with pytest.raises(ValueError):
        world.make_sample(np.random.default_rng(0), "i2i")


def test_t2t_answers_are_short_and_determined_by_the_question() -> None:
    rng = np.random.default_rng(9)
    seen: dict[str, str] = {}
    for _ in range(3000):
        s = world.make_sample(rng, "t2t")
        assert s.image is None and len(s.answer) == 1 and isinstance(s.answer[0], str)
        assert seen.setdefault(s.prompt, s.answer[0]) == s.answer[0]
    assert seen["how many sides does a triangle have?"] == "three"
    assert seen["which shape is round?"] == "circle"
    sums = [(p, a) for p, a in seen.items() if re.fullmatch(r"what is \d plus \d\?", p)]
    assert len(sums) > 10 and all(a == str(int(p[8]) + int(p[15])) for p, a in sums)
    assert seen["hello"].startswith("hello!")
    assert len(seen) > 1000
    # t2t never asks to draw: its prompts hold no drawing tail, and no answer names an image
    assert not any(tail in p for p in seen for tail in language.TELL_TAILS + language.WHERE_TAILS)


def test_arithmetic_in_digits_and_words() -> None:
    rng = np.random.default_rng(14)
    words = {w: i for i, w in enumerate(world.NUMBER_WORDS)}
    forms = set()
    for _ in range(500):
        prompt, answer = world.arithmetic(rng)
        nums = [int(t) if t.isdigit() else words[t] for t in re.findall(r"\b(\d+|[a-z]+)\b", prompt)
                if t.isdigit() or t in words]
        a, b = nums
        assert answer == str(a + b) or (("minus" in prompt or "-" in prompt) and answer == str(a - b)) or \
            (prompt.startswith(("take", "subtract")) and answer == str(b - a)), prompt
        forms.add(any(t in words for t in prompt.split()))
    assert forms == {True, False}


def test_ti2t_samples() -> None:
    rng = np.random.default_rng(10)
    kinds_seen = set()
    for _ in range(800):
        s = world.make_sample(rng, "ti2t")
        assert s.image is not None and len(s.answer) == 1 and isinstance(s.answer[0], str)
        kinds_seen.add(s.prompt.split()[0])
        if s.prompt in ("describe the image.", "what do you see?"):
            assert s.answer[0] == f"i see {world.describe(s.image)}."
    assert {"how", "what", "where", "is", "describe", "count", "do", "which"} <= kinds_seen


def test_exists_questions_are_balanced() -> None:
    rng = np.random.default_rng(11)
    answers = [world.vqa_question(rng, world.sample_scene(rng), "exists")[1] for _ in range(2000)]
    assert 0.45 < answers.count("yes") / len(answers) < 0.55


def _stated_words(want: world.Want) -> list[str]:
    return [want.colour, want.shape]


def test_t2i_prompt_states_its_request_and_the_scene_fulfils_it() -> None:
    rng = np.random.default_rng(12)
    plural = positioned = partial = 0
    for _ in range(400):
        s = world.make_sample(rng, "t2i")
        scene = s.answer[0]
        assert len(s.answer) == 1 and isinstance(scene, tuple) and s.request is not None
        assert shapeeval.fulfils(s.request, scene)  # the target image is one answer to the prompt
        for w in s.request:
            assert w.colour in s.prompt and (w.shape in s.prompt or language.PLURALS[w.shape] in s.prompt)
        plural += any(language.PLURALS[w.shape] in s.prompt for w in s.request)
        positioned += any(w.position is not None for w in s.request)
        partial += any(w.position is None or w.size is None for w in s.request)
    assert plural > 20 and positioned > 200 and partial > 200


def test_unstated_positions_follow_the_default_layout_in_naming_order() -> None:
    W = world.Want
    # one open object: the center; two: left, right (first named, leftmost); three: left, center, right
    assert world.default_layout((W("circle", "red"),), ["small"]) == (Obj("circle", "red", "center", "small"),)
    two = world.default_layout((W("square", "blue", "large"), W("circle", "red")), ["large", "small"])
    assert two == world.canonical([Obj("square", "blue", "left", "large"), Obj("circle", "red", "right", "small")])
    # a stated cell is kept and skipped: the open one takes the first free fallback cell
    kept = world.default_layout((W("circle", "red"), W("square", "blue", position="center")), ["large", "small"])
    assert kept == world.canonical([Obj("circle", "red", "left", "large"), Obj("square", "blue", "center", "small")])
    with pytest.raises(ValueError, match="twice"):
        world.default_layout((W("circle", "red", position="top"), W("square", "red", position="top")), ["small"] * 2)
    # in the samples: every open object sits where the layout puts it, in the order the prompt names it
    rng = np.random.default_rng(21)
    opened = 0
    for _ in range(400):
        s = world.make_sample(rng, "t2i")
        scene = s.answer[0]
        laid = world.default_layout(s.request, ["small"] * len(s.request))  # sizes aside: fulfils() checks them
        assert [(o.shape, o.colour, o.position) for o in laid] == [(o.shape, o.colour, o.position) for o in scene]
        opened += sum(w.position is None for w in s.request) > 1
        at, previous = -1, None
        for w in s.request:  # the request is in naming order: each shape word after the previous one
            if w != previous or w.position is not None:  # identical open objects share a plural
                at = s.prompt.find(w.shape, at + 1)
                assert at >= 0, s.prompt
            previous = w
    assert opened > 20


def test_t2ti_text_before_image_specifies_it() -> None:
    rng = np.random.default_rng(13)
    closings = set()
    for _ in range(300):
        s = world.make_sample(rng, "t2ti")
        before, scene, after = s.answer
        assert before == f"here is {world.describe(scene)}."
        assert world.parse_description(before) == scene
        n = len(scene)
        if after.startswith("it is"):
            assert n == 1 and after == f"it is {world.position_phrase(scene[0].position)}."
        else:
            assert after == ("there is 1 shape in total." if n == 1 else f"there are {n} shapes in total.")
        closings.add(after.split()[0])
        assert s.request is None or shapeeval.fulfils(s.request, scene)
        m = re.search(r"with (\d) shape", s.prompt)
        assert m is None or int(m.group(1)) == n
    assert closings == {"it", "there"}


_FRAMES = sorted([(f"{p}{v} ", (p, v) in language.PARAPHRASE_VERB_FRAMES) for p in language.PREFIXES
                  for v in language.VERBS] + [(f"{f} ", f in language.PARAPHRASE_NOUN_FRAMES)
                                              for f in language.NOUN_FRAMES], key=lambda x: -len(x[0]))


def _frame_is_held_out(prompt: str) -> bool | None:
    """Whether the drawing frame a prompt starts with (the longest that fits) is held out; None
    when it starts with none."""
    return next((held for head, held in _FRAMES if prompt.startswith(head)), None)


def _question_is_held_out(prompt: str) -> bool:
    def pattern(q: str) -> str:
        return re.escape(q).replace(r"\{where\}", ".+").replace(r"\{c\}", r"\w+").replace(r"\{s\}", r"\w+")
    return any(re.fullmatch(pattern(q), prompt) for q in language.PARAPHRASE_QUESTIONS)


def test_paraphrase_templates_never_reach_training() -> None:
    rng = np.random.default_rng(15)
    for mode in world.MODES:
        for _ in range(1500):
            s = world.make_sample(rng, mode)
            assert not _frame_is_held_out(s.prompt), s.prompt
            assert not (mode == "ti2t" and _question_is_held_out(s.prompt)), s.prompt
            assert s.prompt not in language.PARAPHRASE_SMALL_TALK
    assert all(_frame_is_held_out(s.prompt) for s in world.heldout_t2i(100, paraphrase=True))
    assert all(_question_is_held_out(s.prompt) for s in world.heldout_vqa(100, paraphrase=True))


def test_fixed_evaluation_sets() -> None:
    t2i, vqa, t2ti, ar = world.heldout_t2i(), world.heldout_vqa(), world.heldout_t2ti(), world.heldout_arithmetic()
    assert (len(t2i), len(vqa), len(t2ti), len(ar)) == (200, 200, 200, 200)
    assert all(s.mode == "t2i" and world.is_heldout(s.answer[0]) for s in t2i)
    assert all(s.mode == "ti2t" and world.is_heldout(s.image) for s in vqa)
    assert not any(s.answer[0].startswith("i see") for s in vqa)
    assert all(s.mode == "t2ti" and world.is_heldout(s.answer[1]) for s in t2ti)
    assert all(s.mode == "t2t" and s.answer[0].isdigit() for s in ar)
    assert world.heldout_t2i(n=5, seed=1) != world.heldout_t2i(n=5, seed=2)
    assert world.heldout_t2i(n=5) != world.heldout_t2i(n=5, paraphrase=True)
    canon = world.canonical_t2i()  # the gates' set: every attribute stated, the one canonical phrasing
    assert len(canon) == 40 and canon == world.canonical_t2i()
    for s in canon:
        assert world.is_heldout(s.answer[0]) and s.request is None
        assert s.prompt == f"draw {world.describe(s.answer[0])}." and world.parse_description(s.prompt) == s.answer[0]


def test_corpus_text_covers_the_vocabulary() -> None:
    texts = list(world.corpus_text(400, seed=0))
    assert all(isinstance(t, str) and t for t in texts)
    words = set(" ".join(texts).replace(".", " ").replace(",", " ").replace("?", " ").split())
    assert set(COLOURS) | set(SHAPES) | set(SIZES) | {"top", "left", "center", "here", "draw"} <= words


def test_the_stated_t2i_set_states_every_size_so_each_request_fixes_its_held_out_scene() -> None:
    # an open size is drawn at the scene's random size, so the same request in the other size can
    # be a training scene; with every size stated the request fixes its one held-out scene (and
    # ShapeEval's all_correct_sized tells it from a training scene of other sizes)
    stated = world.heldout_t2i(100, every_size=True)
    assert all(w.size is not None for s in stated for w in s.request)
    assert all(world.is_heldout(s.answer[0]) for s in stated)
    assert all(world.default_layout(s.request, ["small"] * len(s.request)) == s.answer[0] for s in stated)
    assert any(w.size is None for s in world.heldout_t2i(100) for w in s.request)  # the leaking default set
    assert world.heldout_t2i(20, every_size=True) == world.heldout_t2i(20, every_size=True)


def test_restating_practice_asks_for_several_objects_and_leaves_the_stream_alone():
    """p_multi: t2ti samples that ask for two or three objects (base's last phase); at 0 the
    generator's stream, and so every shipped recipe's data, is what it was."""
    many = [world.make_sample(np.random.default_rng(i), "t2ti", p_multi=1.0) for i in range(40)]
    assert all(s.request is not None and len(s.request) >= 2 for s in many)
    assert all(s.answer[0] == f"here is {world.describe(s.answer[1])}." for s in many)
    plain = [world.make_sample(np.random.default_rng(i), "t2ti") for i in range(40)]
    again = [world.make_sample(np.random.default_rng(i), "t2ti", p_multi=0.0) for i in range(40)]
    assert plain == again and sum(s.request is not None and len(s.request) >= 2 for s in plain) < 30
