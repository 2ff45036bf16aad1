"""The reference model: shapes of each entry point, the unified id space, the freeze table."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from training_ref import train, world
from training_ref.data import make_batch, CodeCache


def test_entry_point_shapes(tiny_model):
    cfg = tiny_model.config
    pixels = torch.randn(2, 3, 64, 64)
    embeds = tiny_model.encode_images(pixels)  # [2, N_img, H]
    assert embeds.shape == (2, cfg.n_image_tokens, cfg.hidden_size)
    ids = torch.randint(10, cfg.n_text_vocab, (2, 40))
    ids[:, 3:3 + cfg.n_image_tokens] = cfg.image_token_id
    ids[1, -1] = cfg.img_bos_id
    hidden, _ = tiny_model.decode(tiny_model.embed(ids, embeds))
    assert hidden.shape == (2, 40, cfg.hidden_size)
    assert tiny_model.text_logits(hidden).shape == (2, 40, cfg.n_text_vocab + 1)
    logits, cache = tiny_model.image_logits(hidden[:, :5], tiny_model.image_positions(4)[None].expand(2, 5))
    assert logits.shape == (2, 5, cfg.n_codes + 2)
    assert len(cache) == cfg.adapter_layers


def test_unified_embedding_routes_new_ids_to_new_table(tiny_model):
    cfg = tiny_model.config
    ids = torch.tensor([[7, cfg.code_offset + 3, cfg.img_bos_id, cfg.img_end_id]])
    x = tiny_model.embedding(ids)[0]
    assert torch.equal(x[0], tiny_model.embedding.original.weight[7])
    assert torch.equal(x[1], tiny_model.embedding.new.weight[3])
    assert torch.equal(x[2], tiny_model.embedding.new.weight[cfg.n_codes])
    assert torch.equal(x[3], tiny_model.embedding.new.weight[cfg.n_codes + 1])
    assert tiny_model.embedding.table().shape == (cfg.vocab_size, cfg.hidden_size)


def test_image_placeholder_count_is_checked(tiny_model):
    cfg = tiny_model.config
    ids = torch.full((1, 8), cfg.image_token_id)
    with pytest.raises(ValueError, match="placeholders"):
        tiny_model.embed(ids, torch.zeros(1, cfg.n_image_tokens, cfg.hidden_size))


def test_adapter_cache_matches_full_segment(tiny_model):
    """Context + `<imgbos>` at once, then one code per call == everything in one call."""
    seg = torch.randn(1, 9, tiny_model.config.hidden_size)  # 4 context tokens, <imgbos>, 4 codes
    full, _ = tiny_model.image_logits(seg, tiny_model.image_positions(4, 0, 5)[None])
    out, past = tiny_model.image_logits(seg[:, :5], tiny_model.image_positions(4)[None])
    steps = [out]
    for i in range(5, 9):
        out, past = tiny_model.image_logits(seg[:, i:i + 1], torch.tensor([[i - 4]]), past=past)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_adapter_reads_the_context_and_ignores_padding(tiny_model):
    """Changing a context token changes the image logits; left padding (masked) does not."""
    h = tiny_model.config.hidden_size
    ctx, seg = torch.randn(1, 4, h), torch.randn(1, 1, h)
    pos = tiny_model.image_positions(4)[None]
    base, _ = tiny_model.image_logits(torch.cat([ctx, seg], 1), pos)
    other = ctx.clone()
    other[:, 1] += 1.0
    changed, _ = tiny_model.image_logits(torch.cat([other, seg], 1), pos)
    assert (changed[:, -1] - base[:, -1]).abs().max() > 1e-3
    padded = torch.cat([torch.randn(1, 3, h), ctx, seg], 1)
    mask = torch.tensor([[0, 0, 0] + [1] * 5])
    pos_padded = torch.cat([torch.zeros(3, dtype=torch.long), tiny_model.image_positions(4)])[None]
    out, _ = tiny_model.image_logits(padded, pos_padded, mask=mask)
    torch.testing.assert_close(out[:, -1], base[:, -1], atol=1e-5, rtol=1e-5)


def test_lm_head_is_not_tied_to_frozen_embeddings(tiny_model):
    assert tiny_model.mllm.lm_head.weight.data_ptr() != tiny_model.embedding.original.weight.data_ptr()


def test_image_only_loss_is_exact_with_its_shortcuts(tiny_model, tokenizer):
    """The image-only loss's shortcuts (nothing decoded past the last image, as in `how`; no
    decoder graph when nothing below the adapter trains) give the full computation's loss."""

    rng = np.random.default_rng(1)
    batch = make_batch(rng, {"t2i": 1, "t2ti": 1}, 6, tokenizer, tiny_model.config, CodeCache(tiny_model.vqgan, 64), 64)
    train.set_trainable(tiny_model, train.STAGES["how"])
    _, short = train.ArmorLoss(tiny_model, 0.0, 1.0)(batch)
    train.set_trainable(tiny_model, replace(train.STAGES["how"], trainable=("adapter", "visual_head")))
    _, no_graph = train.ArmorLoss(tiny_model, 0.0, 1.0)(batch)
    train.set_trainable(tiny_model, train.STAGES["better"])
    _, full = train.ArmorLoss(tiny_model, 1.0, 1.0)(batch)  # text loss on: no truncation, decoder graph built
    assert short["image"] == pytest.approx(full["image"], rel=1e-5)
    assert no_graph["image"] == pytest.approx(full["image"], rel=1e-5)
    for p in tiny_model.parameters():
        p.requires_grad_(False)


def test_patch_code_cache_equals_whole_image_encoding(tiny_model):
    from runtime.image import to_unit_range

    scenes = [world.sample_scene(np.random.default_rng(i)) for i in range(12)]
    cache = CodeCache(tiny_model.vqgan, 64)
    cached = cache(scenes[:6]) + cache(scenes)[6:]  # the second call reuses patches of the first
    with torch.no_grad():
        whole = tiny_model.vqgan.encode(torch.from_numpy(np.stack([to_unit_range(world.render(s, 64), 64)
                                                                  for s in scenes]))).flatten(1).tolist()
    assert cached == whole
    assert len(cache.patch_codes) < 12 * 64  # patches are shared between pictures


@pytest.mark.parametrize("stage_name", ["what", "how", "better"])
def test_wohg_freeze_table(tiny_model, tokenizer, stage_name):
    """Exactly the stage's groups require and receive gradients."""
    model = tiny_model
    stage = train.STAGES[stage_name]
    train.set_trainable(model, stage)
    model.zero_grad(set_to_none=True)
    rng = np.random.default_rng(0)
    mix = {"t2t": 1, "ti2t": 1, "t2i": 1, "t2ti": 1}
    batch = make_batch(rng, mix, 8, tokenizer, model.config, CodeCache(model.vqgan, 64), 64)
    loss, _ = train.ArmorLoss(model, stage.alpha, stage.beta)(batch)
    loss.backward()
    expected = {"what": {"new_embeddings", "text_head", "imgbos_head"},
                "how": {"new_embeddings", "adapter", "visual_head"},
                "better": {"new_embeddings", "text_head", "imgbos_head", "adapter", "visual_head"}}[stage_name]
    for group, params in model.param_groups().items():
        for p in params:
            if group in expected:
                assert p.requires_grad, group
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{group} got no gradient in {stage_name}"
            else:
                assert not p.requires_grad, f"{group} must be frozen in {stage_name}"
                assert p.grad is None, f"{group} received a gradient in {stage_name}"
    for group in train.ALWAYS_FROZEN:
        assert group not in expected
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)


@pytest.mark.parametrize("frozen_head", [False, True], ids=["how", "how-like-with-imgbos"])
def test_a_stage_without_the_text_head_leaves_text_only_answers_as_base(tiny_model, tokenizer, frozen_head):
    """Steps of `how` (all its modes, the cell loss included) change no text logit of a text-only
    input: t2t / ti2t answers stay the base's. With `<imgbos>`'s row trainable too (the head's
    extra row is its own group), only that logit moves: a stage can train when to start an image
    without touching the MLLM's text rows."""
    model = tiny_model
    stage = train.STAGES["how"]
    if frozen_head:
        stage = replace(stage, trainable=stage.trainable + ("imgbos_head",), alpha=1.0,
                        mix=(("t2t", 0.2), ("ti2t", 0.2), ("t2i", 0.3), ("t2ti", 0.3)))
    ids = torch.randint(10, model.config.n_text_vocab, (2, 12))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model.text_logits(model.decode(model.embed(ids))[0])  # [2, 12, V + 1]
    loss_module = train.ArmorLoss(model, stage.alpha, stage.beta, cell_weight=stage.cell_weight)
    opt = torch.optim.AdamW(train.set_trainable(model, stage) + list(loss_module.cell_head.parameters()), lr=1e-2)
    rng = np.random.default_rng(2)
    for _ in range(2):
        batch = make_batch(rng, dict(stage.mix), 8, tokenizer, model.config, CodeCache(model.vqgan, 64), 64)
        opt.zero_grad()
        loss_module(batch)[0].backward()
        opt.step()
    with torch.no_grad():
        after = model.text_logits(model.decode(model.embed(ids))[0])
    torch.testing.assert_close(after[..., :-1], ref[..., :-1], rtol=0, atol=0)
    assert torch.equal(after[..., -1], ref[..., -1]) != frozen_head  # `<imgbos>`'s logit moved iff it trained
    model.load_state_dict(before)
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)


def test_loss_weights_select_heads(tiny_model, tokenizer):
    rng = np.random.default_rng(1)
    batch = make_batch(rng, {"t2ti": 1}, 2, tokenizer, tiny_model.config, CodeCache(tiny_model.vqgan, 64), 64)
    with torch.no_grad():
        _, text_only = train.ArmorLoss(tiny_model, 1.0, 0.0)(batch)
        _, image_only = train.ArmorLoss(tiny_model, 0.0, 1.0)(batch)
    assert set(text_only) == {"text"} and set(image_only) == {"image"}


def test_cell_labels_name_the_object_of_each_patch_cell():
    from training_ref.data import IGNORE, cell_labels

    scene = world.canonical([world.Obj("circle", "red", "top left", "small"),
                             world.Obj("triangle", "orange", "bottom right", "large")])
    cells = cell_labels(scene, (8, 8)).reshape(8, 8, 3)
    # patch centres 4, 12, 20 | 28, 36 | 44, 52, 60 px of 64: cells of 3, 2 and 3 patches a side
    red, circle, small = 1 + list(world.COLOURS).index("red"), 1 + world.SHAPES.index("circle"), 1
    assert (cells[:3, :3] == (red, circle, small)).all()
    orange, triangle, large = 1 + list(world.COLOURS).index("orange"), 1 + world.SHAPES.index("triangle"), 2
    assert (cells[5:, 5:] == (orange, triangle, large)).all()
    assert (cells[3:5].sum() == 0) and (cells[:3, 3:].sum() == 0)  # empty cells: 0
    assert IGNORE < 0


def test_cell_loss_trains_its_head_and_skips_unconditional_images(tiny_model, tokenizer):
    from training_ref.data import IGNORE

    rng = np.random.default_rng(3)
    codes = CodeCache(tiny_model.vqgan, 64)
    batch = make_batch(rng, {"t2i": 1, "t2ti": 1}, 8, tokenizer, tiny_model.config, codes, 64, p_uncond=0.5)
    cells = batch.image_cells  # [B_img, N+1, 3]
    assert cells.shape == (len(batch.image_rows), tiny_model.config.n_grid + 1, 3)
    assert (cells[:, -1] == IGNORE).all()  # `<imgend>`'s input has no cell
    uncond = (cells[:, :-1] == IGNORE).all(-1).all(-1)
    assert 0 < int(uncond.sum()) < len(uncond)  # p_uncond=0.5: some rows of each kind
    assert (cells[~uncond, :-1] >= 0).all()
    train.set_trainable(tiny_model, train.STAGES["how"])
    loss_module = train.ArmorLoss(tiny_model, 0.0, 1.0, cell_weight=0.5)
    loss, stats = loss_module(batch)
    assert set(stats) == {"image", "cell"}
    assert loss.item() == pytest.approx(stats["image"] + 0.5 * stats["cell"], rel=1e-5)
    loss.backward()
    assert loss_module.cell_head.weight.grad.abs().sum() > 0
    assert not any("cell_head" in n for n in tiny_model.state_dict())  # train-only: never in the model
    tiny_model.zero_grad(set_to_none=True)
    for p in tiny_model.parameters():
        p.requires_grad_(False)


def test_text_leads_samples_keep_the_answer_swap_the_prompt_and_train_no_text(tiny_model, tokenizer):
    from training_ref.data import IGNORE

    cfg, codes = tiny_model.config, CodeCache(tiny_model.vqgan, 64)

    def draw(p):  # the same samples, then (p > 0) the prompt swaps
        return make_batch(np.random.default_rng(5), {"t2ti": 1}, 4, tokenizer, cfg, codes, 64, p_text_leads=p)

    def split(row):  # (user turn, assistant turn) of a row's text
        text = tokenizer.decode([int(i) for i in row if i < cfg.n_text_vocab])
        return text.split("assistant", 1)

    plain, led = draw(0.0), draw(1.0)
    assert (plain.text_labels != IGNORE).any(1).all()
    assert (led.text_labels == IGNORE).all()  # the swapped prompt and its answer teach no text
    assert torch.equal(plain.image_labels, led.image_labels)  # the same images to draw ...
    assert (led.image_cells[:, :-1] != IGNORE).all()  # ... with their cells
    for a, b in zip(plain.ids, led.ids):
        (prompt_a, answer_a), (prompt_b, answer_b) = split(a), split(b)
        assert answer_a == answer_b and prompt_a != prompt_b  # "here is ..." stays; the request is another's


def test_only_vq_and_how_are_said_to_use_every_group():
    assert {name for name, stage in train.STAGES.items() if train.uses_every_group(stage)} == {"vq", "how"}


@pytest.mark.parametrize("stage_name", ["how"])
def test_a_stage_said_to_use_every_group_gives_each_a_gradient(tiny_model, tokenizer, stage_name):
    """DDP skips its unused-parameter search for the stages `uses_every_group` names; a step on
    such an ARMOR stage's own mix (the cell loss included) must then give every trainable
    parameter a gradient, or DDP stops on the next step."""
    stage = train.STAGES[stage_name]
    model = tiny_model
    params = train.set_trainable(model, stage)
    loss_module = train.ArmorLoss(model, stage.alpha, stage.beta, stage.cell_weight)
    for seed in range(3):  # the first steps of the curriculum (one object) and later ones
        loss_module.zero_grad(set_to_none=True)  # the model's too: it is a submodule
        batch = make_batch(np.random.default_rng(seed), dict(stage.mix), 4, tokenizer, model.config,
                           CodeCache(model.vqgan, 64), 64, stage.p_uncond, 1 + seed, stage.p_text_leads)
        loss_module(batch)[0].backward()
        for p in [*params, *loss_module.cell_head.parameters()]:
            assert p.grad is not None, "a trainable parameter got no gradient"
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)


def test_an_adapter_that_reads_an_earlier_layer_starts_as_the_last_layer_only(tiny_model):
    """`adapter_reads` k: the decoder states are [last | layer k after the final norm]; the text
    head reads the first half; the adapter's mixing weights start as "the last layer only" (so
    a run gets the same numbers until `how` trains them) and then read layer k too."""
    from training_ref.model import ArmorModel

    cfg = tiny_model.config
    reads = ArmorModel(replace(cfg, adapter_reads=1)).eval()
    missing, unexpected = reads.load_state_dict(tiny_model.state_dict(), strict=False)
    assert missing == ["adapter.mix"] and not unexpected
    ids = torch.randint(10, cfg.n_text_vocab, (2, 12))
    with torch.no_grad():
        last, _ = tiny_model.decode(tiny_model.embed(ids))
        states, _ = reads.decode(reads.embed(ids))
        h = cfg.hidden_size
        assert states.shape == (2, 12, 2 * h) and reads.config.state_width == 2 * h
        torch.testing.assert_close(states[..., :h], last)
        lm = reads.mllm.model.language_model
        layer1 = lm(inputs_embeds=reads.embed(ids), output_hidden_states=True).hidden_states[1]
        torch.testing.assert_close(states[..., h:], lm.norm(layer1))
        torch.testing.assert_close(reads.text_logits(states), tiny_model.text_logits(last))
        pos = reads.image_positions(11)[None].expand(2, 12)
        before = tiny_model.image_logits(last, pos)[0]
        torch.testing.assert_close(reads.image_logits(states, pos)[0], before)
        reads.adapter.mix[:, h:] = 0.1 * torch.randn(h, h)  # as if `how` had trained it
        assert not torch.allclose(reads.image_logits(states, pos)[0], before, atol=1e-3)


@pytest.mark.parametrize("layer", [0, 4, True, "1"])
def test_adapter_reads_must_name_an_earlier_decoder_layer(tiny_model, layer):
    with pytest.raises(ValueError, match="adapter_reads"):
        replace(tiny_model.config, adapter_reads=layer)
