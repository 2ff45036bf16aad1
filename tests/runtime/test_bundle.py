"""Opening bundles: validation of the manifest and files, device errors, the pipeline API."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from runtime import ArmorPipeline, BundleError
from runtime.backends import DeviceError
from runtime.constants import MANIFEST_FILE


@pytest.fixture
def bundle_copy(random_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(random_bundle, out)
    return out


@pytest.mark.parametrize("damage, message", [
    ("no_manifest", "is not a bundle"),
    ("schema", "schema version"),
    ("missing_file", "decoder.onnx is missing"),
    ("truncated", "truncated or altered"),
    ("flipped", "sha256"),
    ("bad_json", "not valid JSON"),
])
def test_damaged_bundles_are_refused(bundle_copy, damage, message):
    mpath = bundle_copy / MANIFEST_FILE
    if damage == "no_manifest":
        mpath.unlink()
    elif damage == "schema":
        m = json.loads(mpath.read_text())
        m["schema_version"] = 0
        mpath.write_text(json.dumps(m))
    elif damage == "missing_file":
        (bundle_copy / "decoder.onnx").unlink()
    elif damage == "truncated":
        data = (bundle_copy / "vq_decoder.onnx").read_bytes()
        (bundle_copy / "vq_decoder.onnx").write_bytes(data[:-10])
    elif damage == "flipped":
        data = bytearray((bundle_copy / "text_head.onnx").read_bytes())
        data[-5] ^= 0xFF
        (bundle_copy / "text_head.onnx").write_bytes(bytes(data))
    elif damage == "bad_json":
        mpath.write_text("{")
    with pytest.raises(BundleError, match=message):
        ArmorPipeline.load(bundle_copy)


def test_hash_check_can_be_skipped(bundle_copy):
    """Same size, different bytes in an unused-by-shape weight: only the hash notices, and
    without the hash check the bundle opens and answers."""
    onnx = pytest.importorskip("onnx", reason="edits a graph with the onnx package (the `train` extra)")

    path = bundle_copy / "text_head.onnx"
    proto = onnx.load(str(path))
    w = proto.graph.initializer[0]
    raw = bytearray(w.raw_data)
    raw[0] ^= 0x01  # the lowest mantissa bit of one weight
    w.raw_data = bytes(raw)
    onnx.save(proto, str(path))
    assert path.stat().st_size == json.loads((bundle_copy / MANIFEST_FILE).read_text())["files"]["text_head.onnx"]["bytes"]
    with pytest.raises(BundleError, match="sha256"):
        ArmorPipeline.load(bundle_copy)
    with ArmorPipeline.load(bundle_copy, verify_hashes=False) as pipe:
        assert pipe.chat([{"role": "user", "content": "hi"}], max_new_tokens=2)


def test_unavailable_device_is_one_clear_error(random_bundle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA; the error path is for CPU-only installs")
    with pytest.raises(DeviceError, match="CUDAExecutionProvider"):
        ArmorPipeline.load(random_bundle, device="cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        ArmorPipeline.load(random_bundle, device="npu")


def test_pipeline_api_events_and_chat(random_bundle):
    with ArmorPipeline.load(random_bundle) as pipe:
        events = list(pipe.generate([{"role": "user", "content": "what is 2 plus 3?"}], max_new_tokens=5))
        assert type(events[-1]).__name__ == "Done" and events[-1].text_tokens == 5
        assert events[-1].timings["first_token_s"] > 0
        img = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
        out = pipe.chat([{"role": "user", "content": [{"type": "image", "image": img},
                                                        {"type": "text", "text": "what colour?"}]}], max_new_tokens=4)
        assert out and all(isinstance(p, (str, Image.Image)) for p in out)
        assert any(isinstance(p, str) and p for p in out)


def _rehash(bundle, name):
    from runtime.bundle import sha256

    mpath = bundle / MANIFEST_FILE
    m = json.loads(mpath.read_text())
    m["files"][name].update(bytes=(bundle / name).stat().st_size, sha256=sha256(bundle / name))
    mpath.write_text(json.dumps(m))


def test_a_graph_from_another_export_is_refused_in_one_line(bundle_copy, random_static_bundle, capsys):
    """The static bundle's decoder in a dynamic bundle, its hash updated: only the I/O check can tell."""
    from runtime.cli import main

    shutil.copyfile(random_static_bundle / "decoder.onnx", bundle_copy / "decoder.onnx")
    _rehash(bundle_copy, "decoder.onnx")
    with pytest.raises(BundleError, match=r"decoder does not match the manifest's graph declaration: has an "
                                          r"undeclared input 'cache_mask'"):
        ArmorPipeline.load(bundle_copy)
    assert main([str(bundle_copy), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decoder does not match" in err[0]


def test_a_graph_with_another_element_type_is_refused(bundle_copy, tmp_path, random_checkpoint):
    """An fp16 export's text head in an fp32 bundle."""
    from armor_export.export import export_bundle

    export_bundle(random_checkpoint, tmp_path / "b16", dtype="fp16", verify=False, with_text_model=False, progress=False)
    shutil.copyfile(tmp_path / "b16" / "text_head.onnx", bundle_copy / "text_head.onnx")
    _rehash(bundle_copy, "text_head.onnx")
    with pytest.raises(BundleError, match="input 'hidden_states' is float16, the manifest declares float32"):
        ArmorPipeline.load(bundle_copy)


def test_an_edited_graph_declaration_is_refused(bundle_copy):
    mpath = bundle_copy / MANIFEST_FILE
    m = json.loads(mpath.read_text())
    m["graphs"]["visual_head"]["inputs"][0]["name"] = "context"
    mpath.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="declares visual_head's I/O differently"):
        ArmorPipeline.load(bundle_copy)
