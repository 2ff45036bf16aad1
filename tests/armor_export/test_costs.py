"""armor_export.costs: bytes and FLOPs per call, measured from graphs (hand-built graphs with
known answers, and the tiny TensorRT form against its config)."""

import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from armor_export.costs import CostError, bundle_costs, call_cost, graph_costs, main


def _graph(nodes, inputs, outputs, inits, opset=17, domains=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(g, opset_imports=ops)


def test_matmul_conv_and_a_computed_reshape_are_counted_exactly():
    w = np.zeros((8, 16), np.float16)
    k = np.zeros((4, 3, 3, 3), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("Shape", ["y"], ["s"]),
             helper.make_node("Reshape", ["y", "s"], ["y2"]),  # a shape only known by following the graph
             helper.make_node("MatMul", ["y2", "w2"], ["z"], name="mm2"),
             helper.make_node("Conv", ["img", "k"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    model = _graph(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["b", "t", 8]),
                           helper.make_tensor_value_info("img", TensorProto.FLOAT, ["b", 3, 10, 10])],
                   [helper.make_tensor_value_info("z", TensorProto.FLOAT16, None),
                    helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
                   {"w": w, "w2": np.zeros((16, 4), np.float16), "k": k})
    cost = call_cost(model, {"x": [2, 5, 8], "img": [2, 3, 10, 10]})
    assert cost["unresolved"] == []
    assert cost["flops"] == 2 * 2 * 5 * 8 * 16 + 2 * 2 * 5 * 16 * 4 + 2 * (2 * 4 * 10 * 10) * (3 * 3 * 3)
    assert cost["weight_bytes"] == w.nbytes + 16 * 4 * 2 + k.nbytes
    assert cost["io_bytes"] == 2 * 5 * 8 * 2 + 2 * 3 * 100 * 4 + 2 * 5 * 4 * 2 + 2 * 4 * 100 * 4


def test_matmulnbits_counts_its_packed_bytes_and_k_by_n_products():
    k_, n_, block = 64, 32, 32
    packed = np.zeros((n_, k_ // block, block), np.uint8)  # 8 bits: one byte a weight
    scales = np.zeros((n_ * k_ // block,), np.float32)
    node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", name="q", K=k_, N=n_,
                            bits=8, block_size=block)
    model = _graph([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", k_])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["t", n_])],
                   {"w": packed, "s": scales}, domains=("com.microsoft",))
    cost = call_cost(model, {"x": [3, k_]})
    assert cost["flops"] == 2 * 3 * k_ * n_ and cost["unresolved"] == []
    assert cost["weight_bytes"] == packed.nbytes + scales.nbytes
    assert cost["io_bytes"] == 3 * k_ * 4 + 3 * n_ * 4  # the placeholder weight is not an input


def test_weights_in_external_data_are_sized_without_reading_them(tmp_path, caplog):
    """Large graphs keep weights beside them; their sizes come from the dims, and a Mul on a weight
    (which symbolic inference tries to evaluate) must not need the data nor fall back to ONNX's
    inference (which cannot follow the decoder's computed shapes)."""
    caplog.set_level(logging.INFO, logger="armor_export.costs")

    w = np.ones((32, 64), np.float32)
    nodes = [helper.make_node("Mul", ["w", "two"], ["w2"]), helper.make_node("MatMul", ["x", "w2"], ["y"], name="mm")]
    model = _graph(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
                   {"w": w, "two": np.array(2.0, np.float32)})
    onnx.save_model(model, tmp_path / "g.onnx", save_as_external_data=True, location="g.onnx.data",
                    size_threshold=1024)
    (tmp_path / "g.onnx.data").write_bytes(b"")  # were the data read, this would fail
    costs = graph_costs(tmp_path / "g.onnx", [{"name": "default", "opt": {"x": [1, 32]}}], {"x"})
    assert costs["default@b2"]["flops"] == 2 * 2 * 32 * 64 and costs["default@b2"]["unresolved"] == []
    assert costs["default@b1"]["weight_bytes"] == w.nbytes + 4
    assert "symbolic shape inference failed" not in caplog.text


def test_an_unknown_op_leaves_its_product_unresolved_never_guessed():
    nodes = [helper.make_node("Mystery", ["x"], ["h"], domain="example"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="after_mystery")]
    model = _graph(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                   {"w": np.zeros((4, 4), np.float32)}, domains=("example",))
    cost = call_cost(model, {"x": [2, 4]})
    assert "after_mystery" in cost["unresolved"] and cost["flops"] == 0


@pytest.fixture(scope="module")
def tiny_trt(tmp_path_factory, tiny_checkpoint):
    from armor_export.tensorrt import Options, export_tensorrt

    out = tmp_path_factory.mktemp("costs") / "tiny"
    export_tensorrt(tiny_checkpoint, out, Options(precision="fp16"))
    return out


def test_tiny_decoder_step_matches_its_config(tiny_trt, tiny_checkpoint):
    manifest = json.loads((tiny_trt / "manifest.json").read_text())
    recorded = manifest["tensorrt"]["costs"]
    assert recorded == json.loads(json.dumps(bundle_costs(tiny_trt)))  # the export records what the graphs say
    c = json.loads((tiny_checkpoint / "config.json").read_text())["mllm"]["text_config"]
    h, ff, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    hd, cap = h // heads, manifest["model"]["kv_capacity"]
    # q, k, v and o projections, the gated MLP, and attention over the whole static capacity
    expected = layers * (2 * h * (heads + 2 * kv_heads) * hd + 2 * heads * hd * h + 2 * 3 * h * ff
                         + 2 * 2 * heads * hd * cap)
    g = recorded["graphs"]["decoder"]
    assert all(not call["unresolved"] for graph in recorded["graphs"].values() for call in graph.values())
    assert g["decode@b1"]["flops"] == pytest.approx(expected, rel=0.01)
    assert g["decode@b2"]["flops"] == pytest.approx(2 * g["decode@b1"]["flops"], rel=1e-6)
    cache = 2 * layers * kv_heads * cap * hd * 2  # K and V, fp16, batch 1
    assert cache < g["decode@b1"]["io_bytes"] < cache * 1.1
    assert g["prefill@b1"]["flops"] > 50 * g["decode@b1"]["flops"]  # 128 prompt tokens in one call
    assert g["decode@b1"]["weight_bytes"] == g["decode@b2"]["weight_bytes"]


def test_a_dynamic_cache_bundle_is_refused_in_one_line(tiny_bundle, capsys):
    with pytest.raises(CostError, match="dynamic-cache"):
        bundle_costs(tiny_bundle)
    assert main([str(tiny_bundle)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
