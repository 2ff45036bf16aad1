"""armor-bench --project: datasheet devices, the roofline of a call, and projection rows beside
measured ones (costs from a hand-written cost table; the real graphs' costs: tests/armor_export/test_costs.py)."""

import json
import subprocess
import sys

import pytest

from runtime.bench import CSV_FIELDS, main as bench_main
from runtime.devices import DEVICES, Device, device
from runtime.errors import InputError
from runtime.project import call_ms, compute_kind, project_row

DEV = Device("test", "a test device", bandwidth_gbs=100.0, int8_tops=40.0, memory_gb=1.0, source="made up")


def test_datasheet_compute_reproduces_the_orin_nano_which_has_no_dla():
    assert device("orin-nano-8gb").int8_tops * 2 == pytest.approx(40, rel=0.03)  # 40 sparse TOPS
    assert device("orin-nano-super").int8_tops * 2 == pytest.approx(67, rel=0.03)
    assert device("agx-orin-64gb").int8_tops * 2 == pytest.approx(170, rel=1e-6)  # the GPU's share of 275
    assert set(DEVICES) == {"agx-orin-64gb", "orin-nx-16gb", "orin-nano-8gb", "orin-nano-super", "rtx-4060-laptop"}
    with pytest.raises(InputError, match="unknown device"):
        device("orin-nano-4gb")


def test_a_call_takes_the_slower_of_its_bytes_and_its_flops():
    memory = {"weight_bytes": 1e9, "io_bytes": 0.0, "flops": 1e9}
    assert call_ms(memory, DEV, "fp16") == (pytest.approx(10.0), "memory")  # 1 GB at 100 GB/s
    math = {"weight_bytes": 0.0, "io_bytes": 1e6, "flops": 2e12}
    assert call_ms(math, DEV, "fp16") == (pytest.approx(100.0), "compute")  # 2 TFLOP at 20 TFLOP/s
    assert call_ms(math, DEV, "int8")[0] == pytest.approx(50.0)


def _cost(w, io, f):
    return {"weight_bytes": w, "io_bytes": io, "flops": f, "unresolved": []}


COSTS = {"form": "tensorrt", "graphs": {
    "decoder": {"prefill@b1": _cost(1e8, 1e7, 4e12), "decode@b1": _cost(1e8, 1e7, 1e8), "decode@b2": _cost(1e8, 2e7, 2e8)},
    "text_head": {"default@b1": _cost(1e7, 0, 1e7)},
    "visual_head": {"prefill@b2": _cost(2e7, 1e6, 1e10), "decode@b2": _cost(2e7, 1e6, 1e7)},
    "vision_encoder": {"default@b1": _cost(1e7, 1e6, 1e12)},
    "vq_decoder": {"default@b1": _cost(1e7, 1e6, 2e12)}}}
MANIFEST = {"dtype": "fp32", "tensorrt": {"precision": "fp16"}, "model": {"n_image_tokens": 16}}


def test_a_projection_row_sums_its_calls_per_token():
    r = project_row(COSTS, MANIFEST, DEV, [64, 1024])
    step = 1.1e8 / 1e11 * 1e3  # memory-bound: 1.1 ms
    assert r["decoder_step_ms@64"] == r["decoder_step_ms@1024"] == pytest.approx(step)
    assert r["text_tokens_per_s"] == pytest.approx(1e3 / (step + 0.1))
    image = 1.2e8 / 1e11 * 1e3 + 2.1e7 / 1e11 * 1e3
    assert r["image_tokens_per_s"] == pytest.approx(1e3 / image)
    assert r["vision_ms"] == pytest.approx(50.0) and r["vq_decode_ms"] == pytest.approx(100.0)  # compute-bound
    assert r["ttft_ms"] == pytest.approx(50.0 + 200.0 + 0.1)
    assert r["s_per_image"] == pytest.approx((0.5 + 16 * image + 100.0) / 1e3)
    assert r["engine"] == "projection" and r["decoder_bound"] == "memory" and r["fits"]
    assert {"device", "engine", "backend", "ttft_ms", "text_tokens_per_s", "image_tokens_per_s"} <= set(r)
    assert set(CSV_FIELDS) & set(r) >= {"vision_ms", "vq_decode_ms", "s_per_image", "text_head_ms"}


def test_the_compute_kind_follows_the_precision_in_the_graphs():
    assert compute_kind({"dtype": "fp32", "tensorrt": {"precision": "fp16"}}) == "fp16"
    assert compute_kind({"dtype": "fp32", "calibration": {"scheme": "int8"}, "tensorrt": {"precision": "int8"}}) == "int8"
    assert compute_kind({"dtype": "fp32", "calibration": {"scheme": "int8-weight"}}) == "fp16"
    assert compute_kind({"dtype": "fp32"}) == "tf32"


def test_bench_projects_a_tensorrt_bundle_without_running_it(tmp_path, capsys, tiny_checkpoint):
    pytest.importorskip("onnx")  # the export writes the costs
    from armor_export.tensorrt import Options, export_tensorrt

    out = tmp_path / "trt"
    export_tensorrt(tiny_checkpoint, out, Options(precision="fp16"))
    assert bench_main([str(out), "--project", "orin-nano-8gb,rtx-4060-laptop", "--no-measure",
                       "--out", str(tmp_path / "b")]) == 0
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    assert [r["device"] for r in rows] == ["orin-nano-8gb", "rtx-4060-laptop"]
    assert rows[0]["text_tokens_per_s"] < rows[1]["text_tokens_per_s"]  # 68 GB/s against 256
    assert "projection" in capsys.readouterr().out


def test_bad_project_arguments_get_one_line(tmp_path):
    for extra in (["--project", "orin-nano-4gb", "--no-measure"], ["--no-measure"]):
        done = subprocess.run([sys.executable, "-m", "runtime.bench", str(tmp_path), *extra, "--out", str(tmp_path / "o")],
                              capture_output=True, text=True)
        assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "--project" in done.stderr or "--no-measure" in done.stderr


@pytest.mark.slow
def test_projection_rows_sit_beside_the_measured_row(tmp_path, tiny_checkpoint):
    pytest.importorskip("onnx")
    import csv

    from armor_export.tensorrt import Options, export_tensorrt

    out = tmp_path / "trt"
    export_tensorrt(tiny_checkpoint, out, Options(precision="fp16"))  # its ORT graphs are measured
    assert bench_main([str(out), "--project", "orin-nano-8gb", "--steps", "2", "--repeats", "1",
                       "--out", str(tmp_path / "b")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "b" / "bench.csv")))
    assert [(r["engine"], r["device"]) for r in rows] == [("runtime", "cpu"), ("projection", "orin-nano-8gb")]
    assert float(rows[0]["text_tokens_per_s"]) > 0 and float(rows[1]["text_tokens_per_s"]) > 0
    assert rows[1]["decoder_bound"] == "memory" and rows[0]["decoder_bound"] == ""
