"""The colour probe of decoder hidden states (training_ref.probe)."""

from __future__ import annotations

import torch

from training_ref.checkpoint import load_checkpoint
from training_ref.probe import colour_probe, probe_accuracy, shape_word_states


def test_colour_is_read_where_the_decoder_put_it_and_nowhere_else(tiny_checkpoint) -> None:
    model, tok = load_checkpoint(tiny_checkpoint)
    by_layer = colour_probe(model, tok, n_fit=80, n_score=40)
    assert len(by_layer) == model.config.text_config.num_hidden_layers + 1
    # the shape word's embedding knows no colour; the trained decoder's states carry it there
    assert by_layer[0] < 0.35 and min(by_layer[1:]) > 0.5, by_layer


def test_the_probe_finds_nothing_in_shuffled_labels(tiny_checkpoint) -> None:
    model, tok = load_checkpoint(tiny_checkpoint)
    fit, y_fit = shape_word_states(model, tok, 80, seed=1)
    score, y_score = shape_word_states(model, tok, 40, seed=2)
    assert fit.shape[1] == len(y_fit) >= 160 and score.shape[1] == len(y_score)
    shuffled = y_fit[torch.randperm(len(y_fit), generator=torch.Generator().manual_seed(0))]
    assert probe_accuracy(fit[-1], shuffled, score[-1], y_score) < 0.4
