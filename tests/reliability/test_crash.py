"""Crash safety: armor-export, armor-calibrate and armor-train killed with SIGKILL at several
moments never leave a bundle or a `final` that looks complete and is not; the next run cleans
up after them (no temporary folders) and training resumes with its step count.

And determinism: the same seed twice gives byte-identical text and PNGs."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.constants import MANIFEST_FILE, TRAIN_STATE_FILE
from training_ref.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
KILL_AFTER = (0.5, 2.0, 4.0, 7.0)  # seconds after start: imports, building, writing graphs, verifying


def _run(module: str, args: list[str], kill_after: float | None = None, timeout: float = 600):
    """Run `python -m module args`; with `kill_after`, SIGKILL it then (if still running)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if kill_after is None:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    return proc.returncode, out, err


def _kill_during_stage(args: list[str], marker: str, seconds: float, sig=signal.SIGKILL) -> int:
    """Start armor-train, wait for `marker` on stderr (a stage's progress bar), then `seconds`, then `sig`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "training_ref.cli", *args], env=env, stderr=subprocess.PIPE,
                            text=True)
    seen = ""
    while marker not in seen and proc.poll() is None:
        seen += proc.stderr.read(1)
    time.sleep(seconds)
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.stderr.read()
    return proc.wait(timeout=120)


def _bundle_is_whole_or_absent(folder: Path) -> bool:
    """No manifest, or a manifest whose every file is there with its sha256 (open_bundle checks)."""
    from runtime.bundle import open_bundle

    if not (folder / MANIFEST_FILE).exists():
        return False
    open_bundle(folder, verify_hashes=True)  # raises on anything missing, truncated or altered
    return True


def _assert_whole_or_not_a_bundle(out: Path, code: int, kill_after: float) -> None:
    """A success is a whole bundle; after a kill, a manifest may exist only if the kill came after its
    atomic write (the process was printing or exiting), and then every file verifies against it."""
    if code == 0:
        assert _bundle_is_whole_or_absent(out)
    elif (out / MANIFEST_FILE).exists():
        assert _bundle_is_whole_or_absent(out), f"a manifest over an incomplete bundle after a kill at {kill_after} s"


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".armor-calibrate-scratch")]


pytestmark = pytest.mark.slow


def test_killed_export_leaves_no_bundle_that_looks_valid(random_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    args = [str(random_checkpoint), "--out", str(out), "--overwrite", "--quiet", "--no-text-model"]
    for kill_after in KILL_AFTER:
        code, _, _ = _run("armor_export.cli", args, kill_after)
        _assert_whole_or_not_a_bundle(out, code, kill_after)
    code, _, err = _run("armor_export.cli", args)
    assert code == 0, err
    assert _bundle_is_whole_or_absent(out) and not _leftovers(out)


def test_killed_calibration_leaves_no_bundle_and_no_scratch(random_bundle, tmp_path):
    out = tmp_path / "int8w"
    args = [str(random_bundle), "--out", str(out), "--scheme", "int8-weight", "--prompts", "2", "--n-vqa", "2",
            "--n-t2i", "1", "--overwrite", "--quiet", "--force"]
    for kill_after in KILL_AFTER:
        code, _, _ = _run("calibration.cli", args, kill_after)
        _assert_whole_or_not_a_bundle(out, code, kill_after)
    code, _, err = _run("calibration.cli", args)
    assert code == 0, err
    assert _bundle_is_whole_or_absent(out) and not _leftovers(out)


def test_killed_training_resumes_with_its_step_count(tmp_path):
    out = tmp_path / "run"
    args = ["--preset", "tiny", "--out", str(out), "--stages", "base", "--max-steps", "300", "--batch-size", "2",
            "--save-every", "7"]
    steps_seen = []
    for kill_after in (0.5, 1.5, 3.0):  # seconds into the stage's steps
        _kill_during_stage(args, "base:", kill_after)
        if (out / "final").exists():  # only ever a whole checkpoint
            load_checkpoint(out / "final")
        state = out / "base" / TRAIN_STATE_FILE
        if state.exists():
            steps_seen.append(json.loads(state.read_text())["step"])
    assert steps_seen and steps_seen == sorted(steps_seen), steps_seen
    code, _, err = _run("training_ref.cli", args + ["--quiet"])
    assert code == 0, err[-2000:]
    if steps_seen[-1] < 300:
        assert f"resuming stage base at step {steps_seen[-1]}" in err
    assert json.loads((out / "base" / TRAIN_STATE_FILE).read_text()) == {"stage": "base", "step": 300, "done": True}
    assert (out / "final").is_dir() and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_sigterm_during_training_exits_143_and_saves(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "training_ref.cli", "--preset", "tiny", "--out", str(out), "--stages", "base",
           "--max-steps", "100000", "--batch-size", "2", "--save-every", "100000", "--save-seconds", "100000"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "base:" not in seen and proc.poll() is None:  # the stage's progress bar (stderr) has started
        seen += proc.stderr.read(1)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 143, rest[-2000:]
    assert "armor-train: error: terminated" in rest
    state = json.loads((out / "base" / TRAIN_STATE_FILE).read_text())
    assert state["step"] >= 1 and state["done"] is False


def test_same_seed_gives_byte_identical_text_and_pngs(tiny_bundle):
    from runtime import ArmorPipeline, ImageDone, TextDelta

    msgs = [{"role": "user", "content": "draw a picture with 3 shapes and tell me what it shows."}]
    runs = []
    with ArmorPipeline.load(tiny_bundle) as pipe:
        for _ in range(2):
            text, pngs = [], []
            for e in pipe.generate(msgs, temperature=0.8, top_k=32, seed=11):
                if isinstance(e, TextDelta):
                    text.append(e.text)
                elif isinstance(e, ImageDone):
                    buf = io.BytesIO()
                    e.image.save(buf, format="PNG")
                    pngs.append(buf.getvalue())
            runs.append(("".join(text), pngs))
    assert runs[0] == runs[1] and runs[0][1], "no image drawn"
