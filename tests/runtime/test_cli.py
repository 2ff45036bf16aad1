"""armor-run and armor-bench end to end on a bundle, and their one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from runtime.bench import main as bench_main
from runtime.cli import main as run_main


def test_armor_run_streams_text_and_prints_timings(random_bundle, tmp_path, capsys):
    img = tmp_path / "in.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(img)
    assert run_main([str(random_bundle), "--prompt", "what colour?", "--image", str(img),
                     "--max-new-tokens", "6", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "timings:" in out and "first token" in out
    assert run_main([str(random_bundle), "--prompt", "what colour?", "--image", str(img), "--io-binding",
                     "--max-new-tokens", "6", "--out", str(tmp_path / "out2")]) == 0
    bound = capsys.readouterr().out
    assert bound.split("timings:")[0] == out.split("timings:")[0]  # the same answer with the cache bound


def test_armor_run_bad_inputs(random_bundle, tmp_path, capsys):
    assert run_main([str(random_bundle), "--prompt", "x", "--image", str(tmp_path / "nope.png")]) == 2
    assert "image file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert run_main([str(random_bundle), "--prompt", "x", "--image", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be read" in err[0], err
    assert run_main([str(random_bundle), "--prompt", "x", "--top-p", "1.5"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert run_main([str(random_bundle), "--prompt", "x", "--temperature", "-1"]) == 2
    assert run_main([str(random_bundle), "--prompt", "x " * 2000]) == 2
    assert "context" in capsys.readouterr().err
    assert run_main([str(tmp_path), "--prompt", "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a bundle" in err[0]


def test_armor_bench_writes_json_csv_png(random_bundle, random_static_bundle, random_checkpoint, tmp_path):
    out = tmp_path / "bench"
    assert bench_main([str(random_bundle), str(random_static_bundle), "--checkpoint", str(random_checkpoint),
                       "--out", str(out), "--steps", "4", "--repeats", "1", "--positions", "8,100",
                       "--jacobi", "4"]) == 0
    data = json.loads((out / "bench.json").read_text())
    assert [r["engine"] for r in data["rows"]] == ["runtime", "runtime", "pytorch"]
    assert [r.get("kv_cache") for r in data["rows"]] == ["dynamic", "static", None]
    assert "text_tokens_per_s" in data["ratios"]  # the first bundle against PyTorch
    (second,) = data["ratios_vs_first_bundle"].values()  # every other bundle against the first
    assert second["text_tokens_per_s"] > 0 and "vq_decode_ms_speedup" in second
    for r in data["rows"]:
        assert r["peak_rss_mb"] > 0 and r["bundle_mb"] > 0 and r["ttft_ms"] > 0
        assert r["decoder_step_ms@8"] > 0 and r["decoder_step_ms@100"] > 0
        assert r["image_tokens_per_s"] > 0, "the forced image is measured on random weights too"
    for r in data["rows"][:2]:  # the runtime's own loop cost, and the roofline beside the step
        assert 0 < r["text_outside_share"] < 1 and 0 < r["image_outside_share"] < 1
        assert 0 < r["roofline_ms@8"] < r["decoder_step_ms@8"]
        assert r["image_call_ms@1"] > 0 and r["image_call_ms@4"] > 0  # one Jacobi iteration vs one step
    assert data["meta"]["read_bandwidth_gbs"] > 0.5
    assert (out / "bench.csv").read_text().startswith("device,precision,engine")
    assert (out / "bench.png").stat().st_size > 0
    assert not list(out.glob("tmp*")), "the workload folder is removed"


def test_armor_run_on_tiny_answers_with_text_and_an_image(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main([str(tiny_bundle), "--prompt", "draw a picture with 3 shapes and tell me what it shows.",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "here is" in printed and "[image 0:" in printed and "timings:" in printed
    image = Image.open(out / "image_0.png")
    assert image.size == (64, 64) and image.mode == "RGB"
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_jacobi_on_tiny_armor_run_and_bench(tiny_bundle, tmp_path, capsys):
    """armor-run --image-decoding jacobi answers as sequential decoding does (greedy); armor-bench
    --jacobi compares both on held-out prompts in one command and projects the speed-up."""
    prompt = ["--prompt", "draw a picture with 3 shapes and tell me what it shows."]
    answers = []
    for extra in ([], ["--image-decoding", "jacobi", "--window", "8"]):
        out = tmp_path / f"out{len(answers)}"
        assert run_main([str(tiny_bundle), *prompt, "--out", str(out), *extra]) == 0
        text = capsys.readouterr().out.split("timings:")[0].replace(str(out), "OUT")
        answers.append((text, (out / "image_0.png").read_bytes()))
    assert answers[0] == answers[1]
    out = tmp_path / "bench"
    assert bench_main([str(tiny_bundle), "--out", str(out), "--steps", "4", "--repeats", "1", "--jacobi", "4",
                       "--jacobi-prompts", "2"]) == 0
    data = json.loads((out / "bench.json").read_text())
    results = data["meta"]["image_decoding"]["results"]
    assert results["greedy/jacobi-4"]["identical_to_sequential"]
    assert results["greedy/jacobi-4"]["calls_per_image"] < results["greedy/sequential"]["calls_per_image"]
    assert data["rows"][0]["projected_image_speedup_greedy@4"] > 0


# The first prompts a person types (issue: tiny v2), each with what a sensible answer holds:
# the objects the image must show (world.Want: shape, colour, position when stated), or the text.
FIVE_PROMPTS = [
    ("Draw a green triangle in the top right.", [("triangle", "green", "top right")], None),
    ("draw two blue squares.", [("square", "blue", None), ("square", "blue", None)], None),
    # the shipped tiny draws the circle purple (attribute binding; docs/model-card.md); strict,
    # so that a checkpoint that answers it turns this into a failure until the marker goes
    pytest.param("draw a purple square on the left and an orange circle on the right.",
                 [("square", "purple", "left"), ("circle", "orange", "right")], None,
                 marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                         reason="issue 15: the shipped tiny draws the orange circle purple")),
    ("what is 3 plus 4?", None, "7"),
    ("show me a blue triangle and tell me its position.", [("triangle", "blue", None)], "position"),
]


@pytest.mark.parametrize("prompt,objects,text", FIVE_PROMPTS, ids=[p.values[0] if hasattr(p, "values") else p[0] for p in FIVE_PROMPTS])
def test_armor_run_on_tiny_answers_what_people_type(tiny_bundle, tmp_path, capsys, prompt, objects, text):
    from training_ref import shapeeval, world

    out = tmp_path / "out"
    assert run_main([str(tiny_bundle), "--prompt", prompt, "--out", str(out)]) == 0
    answer = capsys.readouterr().out.split("timings:")[0]
    images = sorted(out.glob("image_*.png"))
    if objects is None:  # answered in text, without an image
        assert not images and answer.strip() == text, answer
        return
    assert len(images) == 1, answer
    dets = shapeeval.detect(Image.open(images[0]))
    wants = tuple(world.Want(shape, colour, position=position) for shape, colour, position in objects)
    assert shapeeval.fulfils(wants, dets), (answer, dets)
    if text == "position":  # draw, then say: the closing sentence names where the triangle is
        closing = answer.split("]")[-1].strip()
        assert closing == f"it is {world.position_phrase(dets[0].position)}.", answer
