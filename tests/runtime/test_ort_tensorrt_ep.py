"""The TensorRT execution provider's options, derived from the exporter's profiles (no GPU
needed to check them; the EP itself runs only where onnxruntime-gpu has TensorRT)."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime.backends import DeviceError
from runtime.backends.ort import tensorrt_ep_session

PROFILES = [
    {"name": "prefill", "min": {"inputs_embeds": [1, 1, 64], "position_ids": [1, 1]},
     "opt": {"inputs_embeds": [1, 128, 64], "position_ids": [1, 128]},
     "max": {"inputs_embeds": [2, 512, 64], "position_ids": [2, 512]}},
    {"name": "decode", "min": {"inputs_embeds": [1, 1, 64], "position_ids": [1, 1]},
     "opt": {"inputs_embeds": [2, 1, 64], "position_ids": [2, 1]},
     "max": {"inputs_embeds": [2, 16, 64], "position_ids": [2, 16]}},
]


def bundle(path: Path, kv_cache="static", profiles=PROFILES):
    manifest = {"model": {"kv_cache": kv_cache},
                "tensorrt": {"graphs": {"decoder": {"file": "trt/decoder.onnx", "profiles": profiles}}}}
    return SimpleNamespace(path=path, manifest=manifest, model=manifest["model"])


def test_one_profile_spans_the_exporters_profiles_and_caches_live_in_the_bundle(tmp_path):
    path, opts = tensorrt_ep_session(bundle(tmp_path), "decoder")
    assert path == tmp_path / "trt" / "decoder.onnx"
    assert opts["trt_profile_min_shapes"] == "inputs_embeds:1x1x64,position_ids:1x1"
    assert opts["trt_profile_opt_shapes"] == "inputs_embeds:2x1x64,position_ids:2x1"  # the decode step
    assert opts["trt_profile_max_shapes"] == "inputs_embeds:2x512x64,position_ids:2x512"
    cache = Path(opts["trt_engine_cache_path"])
    assert cache == tmp_path / "engines" / "ort-trt" and cache.is_dir()
    assert opts["trt_timing_cache_path"] == str(cache) and opts["trt_engine_cache_enable"] == "True"


def test_read_only_bundle_caches_under_the_user_cache(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        monkeypatch.setattr(os, "access", lambda p, mode: False)  # root writes anywhere
    else:
        tmp_path.chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path.parent / "user-cache"))
    try:
        _, opts = tensorrt_ep_session(bundle(tmp_path), "decoder")
    finally:
        tmp_path.chmod(0o755)
    assert opts["trt_engine_cache_path"].startswith(str(tmp_path.parent / "user-cache"))


def test_bundles_without_the_tensorrt_form_are_refused_in_one_line(tmp_path):
    with pytest.raises(DeviceError, match="--target tensorrt"):
        tensorrt_ep_session(bundle(tmp_path, profiles=[]), "decoder")
    with pytest.raises(DeviceError, match="--target tensorrt"):
        tensorrt_ep_session(bundle(tmp_path), "vq_decoder")
    with pytest.raises(DeviceError, match="static-cache decoder"):
        tensorrt_ep_session(bundle(tmp_path, kv_cache="dynamic"), "decoder")
