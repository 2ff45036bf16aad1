"""The TensorRT form (`--target tensorrt`) and its static check (`--check tensorrt`).

What is checked here without a GPU: the export from a checkpoint and from a bundle at fp32,
fp16 and int8 (a bundle calibrated with scheme int8, target tensorrt), the manifest section and
files the native backend reads, the profiles and trtexec lines, the static check against the
vendored onnx-tensorrt tables (passing on our graphs, naming a planted unsupported node), the
refusals, and that the trt/ graphs in ONNX Runtime give the same tokens as the standard bundle.
Building engines needs TensorRT and a CUDA device: that test is marked gpu and skips with the reason.
"""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from armor_export import cli
from armor_export.tensorrt import (DECODE_MAX, Options, TensorRTExportError, engine_support, export_tensorrt,
                                   graph_profiles, trt_view, trtexec_lines)
from armor_export.trt_check import check_bundle, check_model, check_profiles, tier
from runtime.bundle import open_bundle
from runtime.graphs import bundle_graphs, trt_file
from runtime.schema import SchemaError, validate_manifest

GRAPHS = ("vision_encoder", "decoder", "text_head", "visual_head", "vq_decoder")
TIERS = ("10.3", "10.x", "11")


@pytest.fixture(scope="module")
def trt32(tmp_path_factory, tiny_checkpoint):
    """The issue's command on the shipped tiny: `armor-export tiny --target tensorrt --out B` (fp32)."""
    out = tmp_path_factory.mktemp("trt") / "tiny"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main([str(tiny_checkpoint), "--target", "tensorrt", "--precision", "fp32", "--out", str(out),
                       "--quiet"])
    return out, rc, buf.getvalue()


@pytest.fixture(scope="module")
def trt16(tmp_path_factory, trt32):
    """fp16 from the fp32 bundle (copied into a new folder, graphs converted)."""
    out = tmp_path_factory.mktemp("trt") / "tiny16"
    export_tensorrt(trt32[0], out, Options(precision="fp16"))
    return out


def test_export_from_the_shipped_tiny_writes_trt_and_says_where_engines_are_built(trt32):
    out, rc, printed = trt32
    assert rc == 0
    assert "engines are built on the device" in printed and "run the same armor-export command there" in printed
    for g in GRAPHS:
        assert (out / trt_file(g)).is_file()
    assert (out / "trt/profiles.json").is_file() and (out / "trt/trtexec.sh").is_file()
    assert not (out / ".trt.tmp").exists() and not (out / "engines").exists()


def test_manifest_section_is_the_backend_contract(trt32):
    out = trt32[0]
    m = open_bundle(out).manifest  # schema-validated, every file hashed
    t = m["tensorrt"]
    assert (t["tier"], t["precision"], t["max_batch"], t["capacity"], t["engines"]) == ("10.3", "fp32", 2,
                                                                                         m["model"]["kv_capacity"], {})
    assert set(t["graphs"]) == set(GRAPHS)
    for g, e in t["graphs"].items():
        assert e["file"] == f"trt/{g}.onnx"
        assert m["files"][e["file"]]["role"] == f"trt.{g}" and len(m["files"][e["file"]]["sha256"]) == 64
        assert [p["name"] for p in e["profiles"]] == (["prefill", "decode"] if g in ("decoder", "visual_head")
                                                      else ["default"])
        for p in e["profiles"]:
            assert set(p) == {"name", "min", "opt", "max"}
    assert json.loads((out / "trt/profiles.json").read_text())["graphs"] == {g: e["profiles"]
                                                                            for g, e in t["graphs"].items()}
    assert m["model"]["kv_cache"] == "static"


def test_trt_graphs_are_opset_20_standard_onnx(trt32, trt16):
    for out, float_type in ((trt32[0], TensorProto.FLOAT), (trt16, TensorProto.FLOAT16)):
        for g in GRAPHS:
            model = onnx.load(str(out / trt_file(g)), load_external_data=False)
            assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
            assert max(o.version for o in model.opset_import) <= 20
            assert not {n.op_type for n in model.graph.node} & {"MatMulNBits", "GroupQueryAttention"}
            floats = [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)
                      if v.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
            assert floats and set(floats) == {float_type}, (out, g)


@pytest.mark.parametrize("tier_name", TIERS)
def test_check_passes_on_tiny_fp32_and_fp16(trt32, trt16, tier_name, capsys):
    for out in (trt32[0], trt16):
        assert cli.main(["--check", "tensorrt", str(out), "--trt-version", tier_name]) == 0
        printed = capsys.readouterr().out
        assert "passed" in printed and "necessary, not sufficient" in printed


def test_export_from_a_random_checkpoint_with_a_capacity(tmp_path, random_checkpoint):
    manifest, note = export_tensorrt(random_checkpoint, tmp_path / "b", Options(precision="fp16", max_context=160,
                                                                                 trt_version="10.x"))
    t = manifest["tensorrt"]
    assert (t["capacity"], t["precision"], t["tier"]) == (160, "fp16", "10.x") and manifest["dtype"] == "fp16"
    decode = t["graphs"]["decoder"]["profiles"][1]
    assert decode["max"]["past_key_values.0.key"][2] == 160 and decode["max"]["inputs_embeds"][:2] == [2, DECODE_MAX]
    assert check_bundle(tmp_path / "b")[1] == []
    assert "engines are built on the device" in note


def test_an_adapter_reading_an_earlier_layer_has_a_tensorrt_form(tmp_path, reads_checkpoint):
    """`adapter_reads`: the TensorRT form of the wider decoder states ([last | layer k]) gets
    profiles of that width and passes the static check of what TensorRT parses."""
    manifest, _ = export_tensorrt(reads_checkpoint, tmp_path / "b", Options(precision="fp16", max_context=64))
    assert manifest["model"]["adapter_reads"] == 2
    assert manifest["tensorrt"]["graphs"]["text_head"]["profiles"][0]["max"]["hidden_states"][-1] == 256
    assert check_bundle(tmp_path / "b")[1] == []


# --- the check names what TensorRT cannot parse ---------------------------------------------------------
def _planted(opset: int = 17) -> onnx.ModelProto:
    """A hand-built graph with one node per kind of problem, each named."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.array(1, np.int64), "axis"),
             numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
             numpy_helper.from_array(np.array(3, np.int8), "zp"),
             numpy_helper.from_array(np.zeros((4, 4), np.uint8), "w4"),
             numpy_helper.from_array(np.array([1.0], np.float32), "scales")]
    nodes = [
        helper.make_node("MatMulNBits", ["x", "w4", "scales"], ["a"], name="planted_nbits", domain="com.microsoft",
                         K=4, N=4, bits=4, block_size=16),
        helper.make_node("Resize", ["x", "", "scales"], ["b"], name="planted_cubic", mode="cubic"),
        helper.make_node("CumSum", ["ids", "axis"], ["c"], name="planted_int_cumsum"),
        helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="planted_zero_point"),
        helper.make_node("Unique", ["x"], ["u"], name="planted_unique"),
        helper.make_node("Identity", ["x"], ["y"], name="fine"),
    ]
    graph = helper.make_graph(nodes, "planted", [x, ids], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])


def test_a_planted_unsupported_node_is_reported_by_name():
    problems = check_model(_planted(), "10.3", "planted")
    by_node = {p.node: p.message for p in problems}
    assert "fine" not in by_node
    assert "not standard ONNX" in by_node["planted_nbits"]
    assert "mode='cubic'" in by_node["planted_cubic"]
    assert "INT64" in by_node["planted_int_cumsum"]
    assert "must be 0" in by_node["planted_zero_point"]
    assert "not supported" in by_node["planted_unique"]
    assert all(str(p).startswith("planted: node ") for p in problems)


def test_opset_beyond_the_tier_is_reported():
    messages = [str(p) for p in check_model(_planted(opset=21), "10.3", "planted") if p.node == "(graph)"]
    assert any("opset 21" in m and "9..20" in m for m in messages)
    assert not [p for p in check_model(_planted(opset=21), "10.x", "planted") if p.node == "(graph)"]


def test_the_cli_lists_a_planted_node_in_a_bundle_and_exits_non_zero(trt32, tmp_path, capsys):
    bundle = tmp_path / "planted"
    shutil.copytree(trt32[0], bundle)
    model = onnx.load(str(bundle / "trt/decoder.onnx"))
    first = model.graph.input[0].name
    model.graph.node.append(helper.make_node("Unique", [first], ["unique_out"], name="planted_unique"))
    onnx.save(model, str(bundle / "trt/decoder.onnx"))
    assert cli.main(["--check", "tensorrt", str(bundle)]) == 1
    printed = capsys.readouterr().out
    assert "decoder: node 'planted_unique' (Unique): not supported" in printed
    assert "necessary, not sufficient" in printed


def test_the_10_3_change_log_lifts_slice_axes_only():
    assert "axes" in tier("10.3").constant_inputs("Squeeze")
    assert "axes" not in tier("10.3").constant_inputs("Slice")
    assert tier("10.3").opset == (9, 20) and tier("10.x").opset == (9, 24)
    assert not tier("10.3").ops["RMSNormalization"].supported if "RMSNormalization" in tier("10.3").ops else True
    assert tier("10.x").ops["RMSNormalization"].supported and tier("10.x").ops["TensorScatter"].supported


# --- profiles -----------------------------------------------------------------------------------------
SUMMARY = {"n_layers": 2, "n_kv_heads": 2, "head_dim": 8, "hidden_size": 32, "kv_cache": "static", "kv_capacity": 96,
           "vision_image_size": 32, "n_image_tokens": 16, "n_text_vocab": 100, "adapter_layers": 1,
           "adapter_heads": 4, "n_codes": 64, "image_grid": [4, 4], "image_size": 32}


def test_profiles_cover_every_input_with_the_declared_fixed_dims():
    specs = bundle_graphs(SUMMARY)
    for g, spec in specs.items():
        profiles = graph_profiles(g, SUMMARY, max_batch=2)
        for p in profiles:
            assert list(p["min"]) == spec.input_names
            for t in spec.inputs:
                for axis, a in enumerate(t.axes):
                    if isinstance(a, int):
                        assert p["min"][t.name][axis] == p["opt"][t.name][axis] == p["max"][t.name][axis] == a
        model = _io_model(spec)
        assert check_profiles(model, profiles, g) == [], g


def test_decoder_profiles_are_prefill_and_decode_batch_one_to_max():
    prefill, decode = graph_profiles("decoder", SUMMARY, max_batch=2)
    assert (prefill["name"], decode["name"]) == ("prefill", "decode")
    assert prefill["min"]["inputs_embeds"] == [1, 1, 32] and prefill["max"]["inputs_embeds"] == [2, 96, 32]
    assert prefill["opt"]["inputs_embeds"] == [1, 96, 32]  # the capacity caps the typical prompt
    assert decode["min"]["attention_mask"] == [1, 1] and decode["max"]["attention_mask"] == [2, DECODE_MAX]
    assert decode["opt"]["position_ids"] == [2, 1]  # image steps run as a CFG pair
    assert decode["max"]["past_key_values.1.value"] == [2, 2, 96, 8] and decode["max"]["cache_mask"] == [2, 96]
    head = graph_profiles("visual_head", SUMMARY, max_batch=1)
    assert head[0]["max"]["past_key_values.0.key"][2] == 0 and head[1]["max"]["past_key_values.0.key"][2] == 96 + 16


def _io_model(spec) -> onnx.ModelProto:
    types = {"float": TensorProto.FLOAT, "int64": TensorProto.INT64}
    inputs = [helper.make_tensor_value_info(t.name, types[t.dtype], list(t.axes)) for t in spec.inputs]
    return helper.make_model(helper.make_graph([], spec.name, inputs, []))


def test_profile_problems_are_named():
    spec = bundle_graphs(SUMMARY)["decoder"]
    profiles = graph_profiles("decoder", SUMMARY, max_batch=2)
    profiles[0]["min"].pop("cache_mask")
    for which in ("min", "opt", "max"):
        profiles[1][which]["past_key_values.0.key"][2] = 95  # not the fixed capacity
    profiles[1]["max"]["attention_mask"][1] = DECODE_MAX + 1  # 'sequence' disagrees with inputs_embeds
    text = "\n".join(map(str, check_profiles(_io_model(spec), profiles, "decoder")))
    assert "'cache_mask' has no min/opt/max" in text
    assert "'past_key_values.0.key' axis 2 is fixed at 96" in text
    assert "dimension 'sequence'" in text


def test_trtexec_lines_match_the_profiles():
    graphs = {"decoder": {"file": "trt/decoder.onnx", "profiles": graph_profiles("decoder", SUMMARY, 2)}}
    line = trtexec_lines(graphs, "10.3", 1024, "engines/timing.cache")[0]
    assert "--stronglyTyped" in line and line.count("--minShapes=") == 2 and line.count("--maxShapes=") == 2
    assert "inputs_embeds:2x96x32" in line and "--memPoolSize=workspace:1024M" in line
    assert "--saveEngine=engines/decoder.engine" in line and "--fp16" not in line and "--int8" not in line
    assert "--stronglyTyped" not in trtexec_lines(graphs, "11", None, None)[0]  # always strongly typed in 11


# --- refusals -----------------------------------------------------------------------------------------
def test_int8_without_qdq_graphs_is_refused_in_one_line_and_writes_nothing(trt32, tmp_path, capsys):
    with pytest.raises(TensorRTExportError, match="armor-calibrate --scheme int8 --target tensorrt"):
        export_tensorrt(trt32[0], tmp_path / "q", Options(precision="int8"))
    assert not (tmp_path / "q").exists()
    assert cli.main([str(trt32[0]), "--target", "tensorrt", "--precision", "int8", "--out", str(tmp_path / "q")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no TensorRT Q/DQ graphs" in err


def test_a_dynamic_cache_bundle_and_an_existing_form_are_refused(random_bundle, trt32, tmp_path):
    with pytest.raises(TensorRTExportError, match="static"):
        export_tensorrt(random_bundle, tmp_path / "d", Options())
    assert not (tmp_path / "d").exists()
    with pytest.raises(TensorRTExportError, match="--overwrite"):
        export_tensorrt(trt32[0], trt32[0], Options(precision="fp32"))


def test_the_schema_holds_the_tensorrt_section(trt32):
    m = json.loads((trt32[0] / "manifest.json").read_text())
    validate_manifest(m)
    bad = json.loads(json.dumps(m))
    bad["tensorrt"]["graphs"]["decoder"]["file"] = "decoder.onnx"
    with pytest.raises(SchemaError, match="tensorrt.graphs.decoder.file"):
        validate_manifest(bad)
    bad = json.loads(json.dumps(m))
    bad["tensorrt"]["graphs"]["decoder"]["profiles"][0]["name"] = "fast"
    with pytest.raises(SchemaError, match="profiles"):
        validate_manifest(bad)


# --- the graphs' meaning, in ONNX Runtime -------------------------------------------------------------
def _cases():
    from training_ref import world

    return {
        "text": [{"role": "user", "content": "what is 3 plus 4?"}],
        "vqa": [{"role": "user", "content": [
            {"type": "image", "image": world.render(world.sample_scene(np.random.default_rng(5)))},
            {"type": "text", "text": "describe the image."}]}],
        "t2i": [{"role": "user", "content": "draw a large red circle at the top left and a small blue square in the "
                                            "center."}],
        "interleaved": [{"role": "user", "content": "draw a picture with 3 shapes and tell me what it shows."}],
    }


def _tokens(bundle, messages, backend="ort", device="cpu", **kw):
    """Text deltas and image codes of one generation, in order."""
    from runtime import ArmorPipeline, ImageDone, TextDelta

    with ArmorPipeline.load(bundle, backend=backend, device=device) as pipe:
        out = []
        for e in pipe.generate(messages, **kw):
            if isinstance(e, TextDelta):
                out.append(e.text)
            elif isinstance(e, ImageDone):
                out.append(e.codes.reshape(-1).tolist())
        return out


@pytest.mark.slow
@pytest.mark.parametrize("case", ["text", "vqa", "t2i", "interleaved"])
def test_trt_graphs_give_the_standard_bundles_tokens_in_onnx_runtime(trt32, tmp_path, case):
    out = trt32[0]
    view = trt_view(out, tmp_path / "view")
    kw = dict(max_new_tokens=48, cfg_scale=3.0)
    ref, got = _tokens(out, _cases()[case], **kw), _tokens(view, _cases()[case], **kw)
    assert got == ref
    if case in ("t2i", "interleaved"):
        assert any(isinstance(x, list) for x in got), "the trained tiny answers these with an image"


def test_int8_qdq_bundle_gives_a_passing_trt_form_with_the_same_tokens(trt32, tmp_path):
    import subprocess
    import sys

    q = tmp_path / "q8"
    # in its own process: calibration refuses one whose ORT sessions already share a thread pool
    # (other tests in this run may have set one up)
    cmd = [sys.executable, "-m", "calibration.cli", str(trt32[0]), "--out", str(q), "--scheme", "int8", "--target",
           "tensorrt", "--samples", "8", "--prompts", "4", "--n-vqa", "4", "--n-t2i", "1", "--no-sensitivity",
           "--force", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    # the source's float TensorRT form is not carried into the quantized bundle
    assert "tensorrt" not in open_bundle(q).manifest and not (q / "trt").exists()
    manifest, _ = export_tensorrt(q, q, Options(precision="int8"))
    assert manifest["tensorrt"]["precision"] == "int8"
    assert manifest["verification"]["tensorrt"]["rewrites"]["vq_decoder"]["float_biases"] > 0
    for tier_name in TIERS:
        assert check_bundle(q, tier_name)[1] == []
    ops = {n.op_type for n in onnx.load(str(q / "trt/decoder.onnx"), load_external_data=False).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    view = trt_view(q, tmp_path / "view")
    case = _cases()["interleaved"]
    assert _tokens(view, case, max_new_tokens=48, cfg_scale=3.0) == _tokens(q, case, max_new_tokens=48, cfg_scale=3.0)


# --- on a device ---------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_engines_are_built_strongly_typed_on_a_device(trt32, tmp_path):
    why = engine_support()
    if why is not None:
        pytest.skip(f"building TensorRT engines needs the tensorrt package and a CUDA device: {why}")
    out = tmp_path / "engines"
    shutil.copytree(trt32[0], out)
    manifest, note = export_tensorrt(out, out, Options(precision="fp16", overwrite=True))
    engines = manifest["tensorrt"]["engines"]
    assert set(engines) == set(GRAPHS) and "engines built" in note
    for g, e in engines.items():
        assert (out / e["file"]).stat().st_size > 0 and e["tensorrt_version"] and e["device"]
