"""The evaluation sets by name and the scorer each name picks (training_ref.evaluate)."""

from __future__ import annotations

import pytest

from training_ref import world
from training_ref.evaluate import (SET_NAMES, Undrawn, answer_until_image, evaluation_sets, main, messages_for,
                                   score_outputs, score_sentences)


def test_stated_sets_are_opt_in_and_scored_as_t2i() -> None:
    assert set(evaluation_sets(0, 3, 0, paraphrase=True)) == {"t2i", "t2i_paraphrase"}
    sets = evaluation_sets(0, 3, 0, paraphrase=True, stated=True)
    names = {"t2i", "t2i_paraphrase", "t2i_stated", "t2i_stated_paraphrase", "t2i_canonical"}
    assert set(sets) == names and names <= set(SET_NAMES)
    for name in ("t2i_stated", "t2i_stated_paraphrase", "t2i_canonical"):
        samples = sets[name]
        assert all(w.size is not None for s in samples for w in (s.request or s.answer[0]))
        # the target scene itself fulfils every request; an empty image fulfils none
        perfect = score_outputs(name, samples, [[world.render(s.answer[0])] for s in samples])
        empty = score_outputs(name, samples, [["no image"] for _ in samples])
        assert perfect["all_correct_sized"] == perfect["all_correct"] == perfect["size"] == 1.0
        assert empty["all_correct"] == 0.0


def test_t2ti_scores_the_sentence_and_the_image_apart() -> None:
    samples = [s for s in evaluation_sets(0, 0, 40)["t2ti"] if s.request is not None]
    right = [[s.answer[0], world.render(s.answer[1]), s.answer[2]] for s in samples]
    scores = score_outputs("t2ti", samples, right)
    assert scores["text_image_text"] == scores["consistent"] == scores["fulfils_request"] == 1.0
    assert scores["text_fulfils_request"] == 1.0
    # a sentence that names nothing: the image still fulfils the request, the text does not
    vague = [["here it is.", *out[1:]] for out in right]
    scores = score_outputs("t2ti", samples, vague)
    assert scores["fulfils_request"] == 1.0 and scores["text_fulfils_request"] == scores["consistent"] == 0.0


def test_sentences_before_the_image_are_scored_for_an_understanding_only_checkpoint() -> None:
    samples = evaluation_sets(0, 0, 40)["t2ti"]
    asked = [s for s in samples if s.request is not None]
    assert 0 < len(asked) < len(samples)
    right = [[s.answer[0], Undrawn()] for s in samples]
    assert score_sentences(samples, right) == {"text_then_image": 1.0, "text_fulfils_request": 1.0, "n": 40}
    # the right words without an image started, or an image after no text, restate nothing
    no_image = score_sentences(samples, [out[:1] for out in right])
    no_text = score_sentences(samples, [[Undrawn()] for _ in samples])
    assert no_image["text_fulfils_request"] == no_text["text_fulfils_request"] == 0.0
    assert no_image["text_then_image"] == no_text["text_then_image"] == 0.0
    # one object's colour carried on to the next: a typical miss of the "here is ..." sentence
    two = [s for s in asked if len({w.colour for w in s.request}) > 1][:1]
    assert two
    wrong = two[0].answer[0]
    first = two[0].request[0].colour
    for w in two[0].request[1:]:
        wrong = wrong.replace(f" {w.colour} ", f" {first} ")
    assert score_sentences(two, [[wrong, Undrawn()]])["text_fulfils_request"] == 0.0


@pytest.mark.parametrize("names", [[], ["a"], ["a", "a"]])
def test_results_keyed_by_name_refuse_names_that_collide_before_any_work(tmp_path, capsys, names) -> None:
    """runs/a/base and runs/b/base are both `base` by default: one would overwrite the other."""
    ckpts = [str(tmp_path / "a" / "base"), str(tmp_path / "b" / "base")]  # never loaded
    with pytest.raises(SystemExit) as e:
        main([*ckpts, *(["--names", *names] if names else [])])
    assert e.value.code == 2 and "its own name" in capsys.readouterr().err


def test_text_only_scoring_stops_at_the_image_and_counts_it(tiny_checkpoint) -> None:
    """`--skip-generation` and `base` draw nothing, yet an answer that starts an image is not
    text-only (the arithmetic score's `text_only`)."""
    from training_ref.checkpoint import load_checkpoint

    model, tok = load_checkpoint(tiny_checkpoint)
    asks = [world.Sample(mode="t2t", prompt="what is 3 plus 4?", answer=["7"]),
            world.Sample(mode="t2t", prompt="draw a red circle.", answer=["7"])]
    outs = [answer_until_image(model, tok, messages_for(s), 16) for s in asks]
    assert outs[0] == ["7"]
    assert isinstance(outs[1][-1], Undrawn) and all(isinstance(p, (str, Undrawn)) for p in outs[1])
    scores = score_outputs("arithmetic", asks, outs)
    assert scores["text_only"] == 0.5 and scores["arithmetic_accuracy"] == 0.5
