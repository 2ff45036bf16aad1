"""The shipped `tiny` checkpoint: small, fp16, loads, and answers an interleaved prompt."""

import json

from PIL import Image

from training_ref.checkpoint import load_checkpoint
from training_ref.generate import generate


def test_shipped_checkpoint_is_small_fp16_safetensors(tiny_checkpoint):
    size = sum(f.stat().st_size for f in tiny_checkpoint.iterdir())
    assert size <= 25 * 2**20
    assert json.loads((tiny_checkpoint / "config.json").read_text())["dtype"] == "float16"
    assert not [f for f in tiny_checkpoint.iterdir() if f.suffix in (".pt", ".pth", ".bin", ".ckpt", ".pkl")]


def test_shipped_checkpoint_answers_text_image_text(tiny_checkpoint):
    model, tok = load_checkpoint(tiny_checkpoint)
    out = generate(model, tok, [{"role": "user", "content": "draw a picture with 2 shapes and tell me what it shows."}],
                   max_new_tokens=64, cfg_scale=3.0)
    assert [type(p).__name__ for p in out] == ["str", "Image", "str"], out
    assert isinstance(out[1], Image.Image) and out[1].size == (64, 64)
    assert out[0].startswith("here is") and out[2].startswith("there ")
    # whether the image matches the text is a quality number (README), not asserted here
