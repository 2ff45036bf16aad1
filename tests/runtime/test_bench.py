"""armor-bench's per-bundle `--backend` list and the llama.cpp roofline (no engine runs here)."""

import pytest

from runtime import constants as C
from runtime.bench import _precision, backends_for, roofline
from runtime.errors import InputError


def test_one_backend_for_all_bundles_or_one_per_bundle():
    assert backends_for("ort", 3) == ["ort"] * 3
    assert backends_for("ort, ort,llamacpp", 3) == ["ort", "ort", "llamacpp"]
    for bad in ("ort,llamacpp", "ort,,llamacpp", "ort,onnx,llamacpp"):
        with pytest.raises(InputError, match="--backend"):
            backends_for(bad, 3)


def _manifest(step_bytes=None):
    gguf = {"type": "q8_0", **({"step_bytes": step_bytes} if step_bytes else {})}
    return {"dtype": "fp32", "model": {"n_layers": 2, "n_kv_heads": 2, "head_dim": 8, "kv_cache": "dynamic"},
            "files": {"decoder.onnx": {"role": "decoder", "bytes": 4_000_000},
                      C.GGUF_FILE: {"role": "text_gguf", "dtype": "q8_0", "bytes": 1_200_000}}, "gguf": gguf}


def test_llamacpp_rows_read_text_gguf_bytes():
    kv = 2 * 2 * 2 * 8 * 4 * 10  # K and V, f32, 10 cached tokens
    ort, llama = roofline(_manifest(), [10], 1.0, "ort"), roofline(_manifest(1_000_000), [10], 1.0, "llamacpp")
    assert ort["roofline_ms@10"] == pytest.approx((4_000_000 + kv) / 1e6)
    assert llama["roofline_ms@10"] == pytest.approx((1_000_000 + kv) / 1e6)
    assert llama["roofline_weights"].startswith("text.gguf tensors")
    bound = roofline(_manifest(), [10], 1.0, "llamacpp")  # exported without step_bytes: the file size
    assert bound["decoder_weight_mb"] == 1.2 and "upper bound" in bound["roofline_weights"]
    assert _precision(_manifest(), "llamacpp") == "gguf-q8_0" and _precision(_manifest(), "ort") == "fp32"
