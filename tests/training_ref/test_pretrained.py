"""--from-pretrained: ARMOR around a local InternVL (transformers format) and a Chameleon VQGAN."""

import json

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration

from runtime.constants import IM_END, IMG_CONTEXT
from runtime.sampling import SamplingParams
from training_ref.checkpoint import load_checkpoint
from training_ref.cli import main
from training_ref.generate import generate
from training_ref.vqgan import VQGAN, VQGANConfig, config_from_state, load_vqgan_state


def _internvl(tokenizer, tmp_path):
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=[32, 32], patch_size=[8, 8]),
        text_config=dict(model_type="qwen2", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=tokenizer.get_vocab_size(),
                         max_position_embeddings=256, tie_word_embeddings=True),
        image_token_id=tokenizer.token_to_id(IMG_CONTEXT), image_seq_length=4, downsample_ratio=0.5,
        tie_word_embeddings=True)
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(cfg).eval()
    path = tmp_path / "internvl"
    model.save_pretrained(path)
    tokenizer.save(str(path / "tokenizer.json"))
    return model, path


def _chameleon_vqgan(tmp_path):
    """A small VQGAN saved the way Chameleon ships it: a torch file with `state_dict` and loss.* extras."""
    cfg = VQGANConfig(resolution=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                      z_channels=16, embed_dim=16, n_embed=64, norm_groups=8)
    torch.manual_seed(1)
    vq = VQGAN(cfg)
    state = dict(vq.state_dict())
    assert "quantize.embedding.weight" in state and "encoder.down.2.attn.0.q.weight" in state
    assert "decoder.up.2.block.1.conv2.weight" in state and "post_quant_conv.weight" in state
    state["loss.discriminator.main.0.weight"] = torch.zeros(1)
    path = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": state}, path)
    return vq, path


def test_vqgan_layout_is_inferred_from_a_chameleon_state(tmp_path):
    vq, path = _chameleon_vqgan(tmp_path)
    state = load_vqgan_state(path)
    assert not any(k.startswith("loss.") for k in state)
    cfg = config_from_state(state, resolution=32, norm_groups=8)
    assert (cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions, cfg.n_embed) == (16, (1, 2, 2), 1, (8,), 64)
    rebuilt = VQGAN(cfg)
    rebuilt.load_state_dict(state)  # strict: every Chameleon name has its place
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.decode(rebuilt.encode(pixels)), vq.decode(vq.encode(pixels)))


def test_from_pretrained_builds_armor_around_internvl(tokenizer, tmp_path, monkeypatch):
    base, base_dir = _internvl(tokenizer, tmp_path)
    vq, vq_path = _chameleon_vqgan(tmp_path)
    import training_ref.checkpoint as ck

    real = ck.config_from_state  # the test VQGAN is 32 px with 8 GroupNorm groups
    monkeypatch.setattr(ck, "config_from_state", lambda s: real(s, resolution=32, norm_groups=8))
    out = tmp_path / "run"
    assert main(["--from-pretrained", str(base_dir), "--vqgan", str(vq_path), "--out", str(out), "--stages"]) == 0
    model, tok = load_checkpoint(out / "final")
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert cfg["preset"] == "from-pretrained" and cfg["n_codes"] == 64 and cfg["image_grid"] == [8, 8]
    assert cfg["eos_token_id"] == tokenizer.token_to_id(IM_END)
    # the MLLM's weights are unchanged; the tied head became its own copy
    src = base.state_dict()
    for name, tensor in model.mllm.state_dict().items():
        if name in src:
            torch.testing.assert_close(tensor, src[name], msg=name)
    torch.testing.assert_close(model.mllm.lm_head.weight, base.get_input_embeddings().weight)
    assert model.mllm.lm_head.weight.data_ptr() != model.embedding.original.weight.data_ptr()
    for name, tensor in vq.state_dict().items():
        torch.testing.assert_close(model.vqgan.state_dict()[name], tensor, msg=name)
    # and it generates (a random model: plumbing, not quality)
    image = torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()
    out = generate(model, tok, [{"role": "user", "content": [{"type": "image", "image": image},
                                                             {"type": "text", "text": "hi"}]}],
                   max_new_tokens=4, sampling=SamplingParams())
    assert isinstance(out, list)
