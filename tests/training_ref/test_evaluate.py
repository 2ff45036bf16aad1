"""The evaluation sets by name and the scorer each name picks (training_ref.evaluate)."""

from __future__ import annotations

from training_ref import world
from training_ref.evaluate import SET_NAMES, evaluation_sets, score_outputs


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
