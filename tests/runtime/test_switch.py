"""The forward switch state machine: legal paths, grid end, illegal transitions."""

import pytest

from runtime.switch import ForwardSwitch, IllegalTransition, Mode, TokenSpace

SPACE = TokenSpace(n_text_vocab=100, n_codes=10, img_bos=110, img_end=111, img_pad=112, eos=2)


def test_text_image_text_by_full_grid():
    s = ForwardSwitch(SPACE, grid_size=4)
    assert s.step(50) is Mode.TEXT
    assert s.step(110) is Mode.IMAGE
    for i, code in enumerate((100, 101, 102)):
        assert s.step(code) is Mode.IMAGE
    assert s.step(109) is Mode.TEXT  # the 4th code fills the grid
    assert s.codes == [0, 1, 2, 9] and s.grid_full
    assert s.step(2) is Mode.DONE


def test_imgend_ends_an_image_early():
    s = ForwardSwitch(SPACE, grid_size=4)
    s.step(110)
    s.step(103)
    assert s.step(111) is Mode.TEXT and s.codes == [3]


@pytest.mark.parametrize("mode_tokens, bad", [
    ([], 100),          # a code in TEXT
    ([], 111),          # <imgend> in TEXT
    ([110], 50),        # a text token in IMAGE
    ([110], 110),       # <imgbos> in IMAGE
    ([110], 2),         # eos in IMAGE
    ([], 112),          # <imgpad> anywhere
    ([110], 112),
    ([2], 50),          # anything after DONE
])
def test_illegal_transitions_raise(mode_tokens, bad):
    s = ForwardSwitch(SPACE, grid_size=4)
    for t in mode_tokens:
        s.step(t)
    with pytest.raises(IllegalTransition):
        s.step(bad)


def test_finish_only_between_images():
    s = ForwardSwitch(SPACE, grid_size=4)
    s.step(110)
    with pytest.raises(IllegalTransition):
        s.finish()
    for c in range(4):
        s.step(100 + c)
    s.finish()
    assert s.mode is Mode.DONE


def test_head_index_mapping():
    assert SPACE.text_index_to_id(100) == 110 and SPACE.text_index_to_id(7) == 7
    assert SPACE.image_index_to_id(3) == 103 and SPACE.image_index_to_id(10) == 111
    assert SPACE.image_index_to_id(11) == 112
