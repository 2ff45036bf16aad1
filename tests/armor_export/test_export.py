"""armor-export: the bundle's files and manifest, verification, and refusal of bad input."""

import json
import shutil

import onnx
import pytest

from armor_export.cli import main
from armor_export.export import ExportError, export_bundle
from runtime.constants import BUNDLE_SCHEMA_VERSION, MANIFEST_FILE
from runtime.graphs import bundle_graphs


def test_bundle_layout_and_manifest(random_bundle):
    manifest = json.loads((random_bundle / MANIFEST_FILE).read_text())
    assert manifest["format"] == "armor-bundle" and manifest["schema_version"] == BUNDLE_SCHEMA_VERSION
    for name in ("vision_encoder.onnx", "decoder.onnx", "text_head.onnx", "visual_head.onnx", "vq_decoder.onnx",
                 "embeddings.npy", "tokenizer.json", "text/model.onnx", "text/genai_config.json"):
        assert name in manifest["files"], name
        entry = manifest["files"][name]
        assert len(entry["sha256"]) == 64 and entry["bytes"] > 0 and entry["role"]
    assert manifest["verification"]["passed"]
    assert set(manifest["verification"]["checks"]) >= {"vision_encoder", "decoder", "text_head", "visual_head",
                                                        "vq_decoder", "text_model"}
    for name, check in manifest["verification"]["checks"].items():
        assert check["max_abs_diff"] <= 1e-3, name
    m = manifest["model"]
    assert m["special_token_ids"]["img_bos"] == m["n_text_vocab"] + m["n_codes"]
    assert manifest["chat_template"]


def test_graph_io_follows_the_declaration(random_bundle):
    manifest = json.loads((random_bundle / MANIFEST_FILE).read_text())
    for name, spec in bundle_graphs(manifest["model"]).items():
        proto = onnx.load(str(random_bundle / spec.filename), load_external_data=False)
        assert [i.name for i in proto.graph.input] == spec.input_names
        assert [o.name for o in proto.graph.output] == spec.output_names
        for value, declared in zip(proto.graph.input, spec.inputs):
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            assert dims == list(declared.axes), (name, value.name)
    dec = bundle_graphs(manifest["model"])["decoder"]
    assert "past_key_values.0.key" in dec.input_names and "present.0.value" in dec.output_names


def test_fp16_bundle_verifies(random_checkpoint, random_bundle, tmp_path):
    manifest = export_bundle(random_checkpoint, tmp_path / "b16", dtype="fp16", progress=False, with_text_model=False)
    assert manifest["dtype"] == "fp16" and manifest["verification"]["passed"]
    assert manifest["graphs"]["decoder"]["inputs"][0]["dtype"] == "float16"
    size16 = sum(f["bytes"] for f in manifest["files"].values() if f["role"] in manifest["graphs"])
    size32 = sum((random_bundle / f"{n}.onnx").stat().st_size for n in manifest["graphs"])
    assert 0.4 < size16 / size32 < 0.6, (size16, size32)  # fp16 weights: half the bytes


def test_existing_bundle_is_refused_without_overwrite(random_checkpoint, random_bundle, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(random_bundle, out)
    assert main([str(random_checkpoint), "--out", str(out), "--quiet", "--no-verify", "--no-text-model"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert main([str(random_checkpoint), "--out", str(out), "--quiet", "--no-verify", "--no-text-model",
                 "--overwrite"]) == 0


@pytest.mark.parametrize("damage, message", [
    ("missing", "checkpoint folder not found"),
    ("no_weights", "model.safetensors is missing"),
    ("truncated", "corrupt or truncated"),
    ("bad_json", "not valid JSON"),
    ("other_version", "version"),
])
def test_bad_checkpoints_fail_with_one_line_and_leave_no_bundle(random_checkpoint, tmp_path, capsys, damage, message):
    ckpt = tmp_path / "ckpt"
    if damage != "missing":
        shutil.copytree(random_checkpoint, ckpt)
    if damage == "no_weights":
        (ckpt / "model.safetensors").unlink()
    elif damage == "truncated":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "bad_json":
        (ckpt / "config.json").write_text("{not json")
    elif damage == "other_version":
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["format_version"] = 99
        (ckpt / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "bundle"
    assert main([str(ckpt), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (out / MANIFEST_FILE).exists()


def test_unknown_target_and_dtype(random_checkpoint, tmp_path, capsys):
    for argv, word in ((["--target", "coreml"], "--target"), (["--dtype", "int3"], "--dtype"),
                       (["--max-context", "-4"], "--max-context")):
        with pytest.raises(SystemExit) as e:
            main([str(random_checkpoint), *argv, "--out", str(tmp_path / "o"), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and word in err[0], err
    assert not (tmp_path / "o").exists()


def test_failed_verification_writes_no_manifest(random_checkpoint, tmp_path, monkeypatch):
    import armor_export.verify as verify

    monkeypatch.setitem(verify.TOLERANCES, "fp32", (0.0, 0.0))  # nothing passes a zero tolerance
    with pytest.raises(ExportError, match="verification failed"):
        export_bundle(random_checkpoint, tmp_path / "b", progress=False, with_text_model=False)
    assert (tmp_path / "b" / "decoder.onnx").exists() and not (tmp_path / "b" / MANIFEST_FILE).exists()


def test_not_enough_disk_is_refused(random_checkpoint, tmp_path, monkeypatch):
    import armor_export.export as ex

    monkeypatch.setattr(ex.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1024))
    with pytest.raises(ExportError, match="not enough disk space"):
        export_bundle(random_checkpoint, tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()


def test_graphs_past_protobufs_2gib_limit_go_to_external_data(tmp_path, monkeypatch):
    """proxy-1b's text model is > 2 GiB: ByteSize() raises EncodeError, so weights go external."""
    from google.protobuf.message import EncodeError
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    import armor_export.onnx_files as graphs

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    proto = helper.make_model(g)

    def too_big(_):
        raise EncodeError("Failed to serialize proto")

    monkeypatch.setattr(graphs, "_byte_size", lambda p: graphs.EXTERNAL_DATA_BYTES + 1)
    files = graphs.save_onnx(proto, tmp_path / "m.onnx")
    assert [f.name for f in files] == ["m.onnx", "m.onnx.data"]
    monkeypatch.undo()
    monkeypatch.setattr(type(proto), "ByteSize", too_big)
    assert graphs._byte_size(proto) == float("inf")


def test_fp16_conversion_with_shapes_inferred_on_disk_matches_in_memory(random_bundle, tmp_path):
    """Graphs past protobuf's 2 GiB get their shapes from the file (infer_shapes_path); the
    result must be the same graph as the in-memory path (forced here on a small graph)."""
    import shutil

    import numpy as np
    import onnxruntime as ort

    from armor_export.onnx_files import convert_fp16
    from runtime.backends.ort import session_options  # joins the process's shared pool if a test made one

    outs = []
    for on_disk in (False, True):
        folder = tmp_path / str(on_disk)
        folder.mkdir()
        shutil.copy(random_bundle / "text_head.onnx", folder / "text_head.onnx")
        convert_fp16(folder / "text_head.onnx", infer_on_disk=on_disk)
        assert sorted(p.name for p in folder.iterdir()) == ["text_head.onnx"]  # no temporary left behind
        sess = ort.InferenceSession(str(folder / "text_head.onnx"), session_options(), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, 3, sess.get_inputs()[0].shape[-1])).astype(np.float16)
        outs.append(sess.run(None, {"hidden_states": x})[0])
    assert outs[0].dtype == np.float16
    np.testing.assert_array_equal(outs[0], outs[1])


def test_overwrite_without_text_model_leaves_no_stale_text_folder(random_checkpoint, random_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(random_bundle, out)
    assert (out / "text" / "model.onnx").is_file()
    manifest = export_bundle(random_checkpoint, out, overwrite=True, with_text_model=False, progress=False)
    assert not (out / "text").exists() and "text_model" not in manifest["verification"]["checks"]
    assert not any(name.startswith("text/") for name in manifest["files"])


def test_explicit_head_dim_is_read_from_the_config(tokenizer, tmp_path):
    """Qwen3 / InternVL3.5 configs set head_dim != hidden / heads: every graph and the manifest follow it."""
    import torch

    from training_ref.checkpoint import save_checkpoint, tiny_config
    from training_ref.model import ArmorConfig, ArmorModel

    cfg = tiny_config(tokenizer).to_dict()
    cfg["mllm"]["text_config"]["head_dim"] = 48  # hidden 128 / 4 heads would be 32
    cfg = ArmorConfig.from_dict(cfg)
    assert cfg.head_dim == 48
    torch.manual_seed(0)
    model = ArmorModel(cfg)
    assert model.mllm.model.language_model.layers[0].self_attn.k_proj.out_features == 2 * 48
    ckpt = save_checkpoint(model, tokenizer, tmp_path / "hd")
    for form in ("dynamic", "static"):
        m = export_bundle(ckpt, tmp_path / form, kv_cache=form, max_context=64 if form == "static" else None,
                          progress=False)
        assert m["verification"]["passed"] and m["model"]["head_dim"] == 48
        past = next(t for t in m["graphs"]["decoder"]["inputs"] if t["name"] == "past_key_values.0.key")
        assert past["axes"][3] == 48


def test_an_adapter_reading_an_earlier_layer_exports_in_both_cache_forms(reads_checkpoint, tmp_path):
    """`adapter_reads`: the decoder's states [last | layer k] flow through every graph of both
    cache forms; each is verified against PyTorch and the runtime's image logits match the
    reference's (llama.cpp: tests/runtime/test_llamacpp.py)."""
    import numpy as np
    import torch

    from runtime.backends import open_model
    from runtime.bundle import open_bundle
    from training_ref.checkpoint import load_checkpoint

    ckpt = reads_checkpoint
    model = load_checkpoint(ckpt)[0]
    h = model.config.hidden_size
    ids = [5, 17, 40, 9, 33, model.config.img_bos_id] + [model.config.code_offset + c for c in (3, 7, 1)]
    with torch.no_grad():
        states, _ = model.decode(model.embed(torch.tensor([ids])))
        n = len(ids) - 3  # context + `<imgbos>`, then the codes
        pos = model.image_positions(n - 1, 0, 4)[None]
        ref = model.image_logits(states, pos)[0][0, n - 1:].numpy()  # [4, n_codes + 2]
    for form in ("dynamic", "static"):
        m = export_bundle(ckpt, tmp_path / form, kv_cache=form, max_context=64 if form == "static" else None,
                          with_text_model=form == "dynamic", progress=False)
        assert m["verification"]["passed"] and m["model"]["adapter_reads"] == 2
        out = next(t for t in m["graphs"]["decoder"]["outputs"] if t["name"] == "hidden_states")
        assert out["axes"][-1] == 2 * h
        bundle = open_bundle(tmp_path / form)
        rt = open_model(bundle, "ort", "cpu", 1)
        try:
            ctx = rt.start(ids).context()[0]
            cursor = rt.image_cursor(ctx[:, :n], np.ones((1, n), np.int64))
            got = np.concatenate([cursor.prefill()[:, None], cursor.append(ctx[:, n:])], 1)[0]
        finally:
            rt.close()
        np.testing.assert_allclose(got, ref, atol=1e-4)
