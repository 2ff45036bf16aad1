"""armor-train end to end (capped steps), resume after a kill, and DDP over two CPU processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.constants import CONFIG_FILE, MODEL_FILE, TRAIN_STATE_FILE
from training_ref import train
from training_ref.checkpoint import load_checkpoint
from training_ref.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_armor_train_tiny_max_steps_end_to_end(tmp_path):
    out = tmp_path / "run"
    assert main(["--preset", "tiny", "--out", str(out), "--max-steps", "20", "--batch-size", "4", "--quiet",
                 "--ablation", "--dtype", "float16"]) == 0
    for stage in ("vq", "base", "what", "how", "better", "onestage"):
        state = json.loads((out / stage / TRAIN_STATE_FILE).read_text())
        assert state == {"stage": stage, "step": 20, "done": True}
    model, tok = load_checkpoint(out / "final")
    assert model.config.preset == "tiny"
    assert json.loads((out / "final" / CONFIG_FILE).read_text())["dtype"] == "float16"
    assert (out / "final-onestage" / MODEL_FILE).is_file()
    assert not list(out.glob(".*tmp*")), "temporary folders left behind"
    # the ablation alone, later, from the run's `base`: the run's `final` stays as it was
    before = (out / "final" / MODEL_FILE).read_bytes()
    assert main(["--preset", "tiny", "--out", str(out), "--stages", "--ablation", "--max-steps", "20",
                 "--batch-size", "4", "--quiet", "--workers", "1"]) == 0
    assert (out / "final" / MODEL_FILE).read_bytes() == before


def test_a_later_stage_continues_from_the_runs_previous_stage(tmp_path, caplog):
    """`--stages base` after `--stages vq` trains base on that VQGAN, not on untrained weights;
    with no complete previous stage in --out it says so."""
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "run"
    common = ["--preset", "tiny", "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--quiet", "--workers", "1"]
    with caplog.at_level("WARNING", logger="armor-train"):
        assert main([*common, "--stages", "base"]) == 0  # nothing before it in --out
    assert "stage base starts from untrained weights" in caplog.text
    for stage in ("base", "final"):
        shutil.rmtree(out / stage)
    caplog.clear()
    assert main([*common, "--stages", "vq"]) == 0
    with caplog.at_level("INFO", logger="armor-train"):
        assert main([*common, "--stages", "base"]) == 0
    assert f"stage base starts from {out / 'vq'}" in caplog.text
    vq, base = load_file(out / "vq" / "vqgan.safetensors"), load_file(out / "base" / "vqgan.safetensors")
    assert vq.keys() == base.keys() and all(torch.equal(vq[k], base[k]) for k in vq)


def test_continuing_a_run_stage_by_stage_gives_the_one_command_weights(tmp_path):
    """`--stages how` after `--stages vq base what` trains the `how` one command trains: loading
    the previous stage does not move the random state that draws `how`'s cell head."""
    common = ["--preset", "tiny", "--max-steps", "2", "--batch-size", "2", "--quiet", "--workers", "1"]
    one, split = tmp_path / "one", tmp_path / "split"
    assert main([*common, "--out", str(one), "--stages", "vq", "base", "what", "how"]) == 0
    assert main([*common, "--out", str(split), "--stages", "vq", "base", "what"]) == 0
    assert main([*common, "--out", str(split), "--stages", "how"]) == 0
    assert (one / "how" / MODEL_FILE).read_bytes() == (split / "how" / MODEL_FILE).read_bytes()


@pytest.mark.parametrize("stage_name", ["base", "how+cell"])
def test_resume_continues_from_last_checkpoint(tmp_path, tokenizer, stage_name):
    """... also the train-only cell head of `how`, which travels in the optimizer file."""
    import dataclasses

    import torch

    from training_ref import train
    from training_ref.checkpoint import tiny_config
    from training_ref.model import ArmorModel

    torch.manual_seed(0)
    # a stage cut short by a smaller total stands in for a killed one: so without a last phase,
    # whose first step depends on the total (test_phase_restarts_the_learning_rate_on_its_own_mix)
    stage = train.STAGES[stage_name.split("+")[0]]
    assert stage.then is None
    if stage_name.endswith("+cell"):
        stage = dataclasses.replace(stage, cell_weight=1.0)
    out = tmp_path / stage.name
    # a run "killed" after 4 of 6 steps: its last checkpoint says step 4, not done
    train.train_stage(ArmorModel(tiny_config(tokenizer)), tokenizer, stage, out, 4, 2, seed=0,
                      save_every=2, progress=False)
    state = json.loads((out / TRAIN_STATE_FILE).read_text())
    state["done"] = False
    (out / TRAIN_STATE_FILE).write_text(json.dumps(state))
    resumed = train.train_stage(ArmorModel(tiny_config(tokenizer)), tokenizer, stage, out, 6, 2, seed=0,
                                save_every=2, progress=False)
    assert json.loads((out / TRAIN_STATE_FILE).read_text()) == {"stage": stage.name, "step": 6, "done": True}
    # the same 6 steps in one go give the same weights: same data stream, restored optimizer
    torch.manual_seed(0)
    straight = train.train_stage(ArmorModel(tiny_config(tokenizer)), tokenizer, stage, tmp_path / "straight",
                                 6, 2, seed=0, save_every=100, progress=False)
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)


def test_phase_restarts_the_learning_rate_on_its_own_mix():
    import dataclasses

    from training_ref import train

    base = dataclasses.replace(train.STAGES["base"], then=train.RESTATING)  # the 15th trial's `base`
    assert dict(base.then.mix)["t2ti"] > dict(base.mix)["t2ti"]
    assert base.phase_at(0, 3600) == (0, 2400, base.mix, base.lr, 0.0)
    assert base.phase_at(2399, 3600)[:2] == (0, 2400)
    assert base.phase_at(2400, 3600) == (2400, 1200, base.then.mix, base.then.lr, base.then.p_multi)
    assert base.phase_at(3599, 3600)[:2] == (2400, 1200)
    assert train.STAGES["how"].phase_at(9999, 10000)[:2] == (0, 10000)  # no phase: one cycle
    # the phase's first step is its warmup's first, the step before it the first cycle's last
    first, length, _, lr, _ = base.phase_at(2400, 3600)
    assert train._lr_at(2400 - first, length, lr) == lr / 50
    assert train._lr_at(2399, 2400, base.lr) < 1e-8


def test_bad_arguments_fail_with_one_line(tmp_path, capsys):
    assert main(["--from-pretrained", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--vqgan" in err[0]
    assert main(["--from-pretrained", str(tmp_path / "nope"), "--vqgan", str(tmp_path / "v.ckpt"),
                 "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a transformers InternVL checkpoint" in err[0]


@pytest.mark.parametrize("argv, word", [
    (["--max-steps", "-1"], "--max-steps"), (["--max-steps", "0"], "--max-steps"), (["--batch-size", "0"], "--batch-size"),
    (["--seed", "-3"], "--seed"), (["--save-every", "0"], "--save-every"), (["--save-seconds", "0"], "--save-seconds"),
    (["--max-steps", "two"], "--max-steps"), (["--stages", "nope"], "--stages")])
def test_training_arguments_are_checked_before_any_work(tmp_path, capsys, argv, word):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["--preset", "tiny", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and word in err[0], err
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["--preset", "tiny", "--out", str(tmp_path / "file"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0]


def test_stop_signal_saves_the_step_in_progress_and_resume_says_where(tmp_path, tokenizer, caplog):
    """SIGTERM mid-stage: the step in progress is finished and saved, KeyboardInterrupt rises
    (armor-train exits 143); the next run logs 'resuming stage base at step N' and completes."""
    import signal

    from training_ref.checkpoint import tiny_config
    from training_ref.model import ArmorModel

    stage, out = train.STAGES["base"], tmp_path / "base"
    calls = {"n": 0}
    real = train._armor_step

    def step_then_signal(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    train._armor_step = step_then_signal
    try:
        with pytest.raises(KeyboardInterrupt):
            train.train_stage(ArmorModel(tiny_config(tokenizer)), tokenizer, stage, out, 50, 2, seed=0,
                              save_every=1000, save_seconds=1000, progress=False)
    finally:
        train._armor_step = real
    assert json.loads((out / TRAIN_STATE_FILE).read_text()) == {"stage": "base", "step": 3, "done": False}
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back
    with caplog.at_level("INFO", logger="training_ref.train"):
        train.train_stage(ArmorModel(tiny_config(tokenizer)), tokenizer, stage, out, 5, 2, seed=0, progress=False)
    assert "resuming stage base at step 3" in caplog.text
    assert json.loads((out / TRAIN_STATE_FILE).read_text())["done"] is True


def test_time_based_saves(tmp_path, tokenizer):
    from training_ref.checkpoint import tiny_config
    from training_ref.model import ArmorModel

    out = tmp_path / "base"
    saves = []
    real = train._save
    train._save = lambda *a: (saves.append(a[6]), real(*a))
    try:
        train.train_stage(ArmorModel(tiny_config(tokenizer)), tokenizer, train.STAGES["base"], out, 3, 2, seed=0,
                          save_every=1000, save_seconds=1e-6, progress=False)
    finally:
        train._save = real
    assert saves == [1, 2, 3]  # every step, as the interval is shorter than a step


@pytest.mark.slow
def test_ddp_two_cpu_processes_stay_in_sync(tmp_path):
    """Under torchrun; 130 vq steps include a dead-code re-seed (step 100), which must leave the
    replicas' codebooks equal."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "training_ref.cli", "--preset", "tiny", "--out", str(out), "--stages", "vq",
           "--max-steps", "130", "--batch-size", "2", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = json.loads((out / "ddp_check.json").read_text())
    assert check["world_size"] == 2 and check["max_param_sum_diff"] <= 1e-9 and check["n_params"] > 0


@pytest.mark.slow
def test_workers_stop_on_sigterm_and_save(tmp_path):
    """armor-train --workers 2 starts DDP workers itself; SIGTERM to it reaches them once: they
    save the step in progress, it exits 143 with one line, and no worker is left running."""
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "training_ref.cli", "--preset", "tiny", "--out", str(out), "--stages", "base",
           "--workers", "2", "--max-steps", "100000", "--batch-size", "2", "--save-every", "5", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    state = out / "base" / TRAIN_STATE_FILE
    deadline = time.time() + 300
    while not state.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert state.is_file(), "no save within 300 s"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "armor-train: error: terminated"
    saved = json.loads(state.read_text())
    assert saved["done"] is False and 5 <= saved["step"] < 100000
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not left, f"workers still running: {left}"


def test_workers_must_divide_the_batch(tmp_path, capsys):
    assert main(["--preset", "tiny", "--out", str(tmp_path / "o"), "--workers", "3", "--batch-size", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers 3 must divide" in err[0]
    assert not (tmp_path / "o").exists()


def test_curriculum_draws_single_objects_first():
    how = train.STAGES["how"]
    caps = [how.max_objects(s, 1000) for s in range(1000)]
    assert caps[0] == 1 and caps[-1] == 3 and caps == sorted(caps)  # 1, then <= 2, then 1-3
    assert sum(c == 1 for c in caps) == round(train.CURRICULUM[0][0] * 1000)
    assert train.STAGES["onestage"].curriculum == how.curriculum  # the ablation sees the same data
    assert train.STAGES["onestage"].p_text_leads == how.p_text_leads
    assert all(train.STAGES[s].max_objects(0, 10) == 3 for s in ("what", "better"))


def test_adapter_reads_from_the_command_or_set_before_how_trains_the_same(tmp_path, capsys):
    """`--adapter-reads 1` leaves `vq`, `base`, `what` as a run without it trains them, and
    set on a run continued into `how` it trains the `how` one command with it trains; once the
    adapter has trained, changing what it reads is refused in one line."""
    from safetensors.torch import load_file

    common = ["--preset", "tiny", "--max-steps", "2", "--batch-size", "2", "--quiet", "--workers", "1"]
    one, split = tmp_path / "one", tmp_path / "split"
    assert main([*common, "--out", str(one), "--stages", "vq", "base", "what", "how", "--adapter-reads", "1"]) == 0
    assert main([*common, "--out", str(split), "--stages", "vq", "base", "what"]) == 0
    a, b = load_file(one / "what" / MODEL_FILE), load_file(split / "what" / MODEL_FILE)
    assert a.keys() - b.keys() == {"adapter.mix"} and all(a[k].equal(b[k]) for k in b)
    assert main([*common, "--out", str(split), "--stages", "how", "--adapter-reads", "1"]) == 0
    assert (one / "how" / MODEL_FILE).read_bytes() == (split / "how" / MODEL_FILE).read_bytes()
    assert load_checkpoint(split / "how")[0].config.adapter_reads == 1
    capsys.readouterr()
    assert main([*common, "--out", str(split), "--stages", "better", "--adapter-reads", "2"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already trained reading layer 1 too" in err
