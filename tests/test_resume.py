"""Kill a run at any moment, re-run the same command, get exactly the run it would have had."""

import json
import random
import signal
import subprocess
import sys

import pytest
import torch

from helpers import ENV, cli
from srsgd_train.checkpoint import open_checkpoint
from srsgd_train.metrics import read_metrics

# 3 epochs of 44 steps; LR stage boundary at step 88 (F 20 -> 40, LR 0.1 -> 0.01)
RECIPE = ["quickstart", "--set", "schedule.epochs=3", "--set", "schedule.milestones=[2]",
          "--set", "run.log_every=1", "--set", "checkpoint.every_steps=7", "--set", "checkpoint.keep=3"]


def trained(run_dir, fault=None, expect=0):
    env = {"SRSGD_TRAIN_FAULT": fault} if fault else None
    proc = cli("run", *RECIPE, "--run-dir", run_dir, env=env)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def losses(run_dir):
    return [(r["step"], r.get("split"), r["loss"], r.get("iter_count"), r.get("restart_period"), r.get("lr"))
            for r in read_metrics(str(run_dir))]


def final_params(run_dir):
    return open_checkpoint(str(run_dir)).load("model.pt")


def assert_same_run(a, b):
    assert losses(a) == losses(b)
    pa, pb = final_params(a), final_params(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    trained(run)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("kill_step", [random.Random(7).randrange(50, 85), 103])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, reference, kill_step):
    # 50..84: mid-epoch, mid-cycle, resumed before the stage boundary at 88 that changes F and LR
    # 103: after the boundary, mid-cycle of F = 40
    run = tmp_path / "run"
    trained(run, fault=f"kill_at_step={kill_step}", expect=-signal.SIGKILL)
    ck = open_checkpoint(str(run))
    assert ck.step == (kill_step - 1) // 7 * 7  # the kill comes before that step's own save
    state = ck.load_json("train_state.json")
    assert state["step_in_epoch"] not in (0,) and state["restart_phase"]["iter_count"] not in (1,)
    out = trained(run)
    assert "resumed from" in out.stdout and f"at step {ck.step}" in out.stdout
    assert_same_run(reference, run)


@pytest.mark.slow
def test_kill_during_save_leaves_previous_checkpoint_and_resume_is_exact(tmp_path, reference):
    run = tmp_path / "run"
    trained(run, fault="kill_in_save=70", expect=-signal.SIGKILL)
    assert (run / "checkpoints" / "step_00000070" / "model.pt").exists()  # half-written
    assert not (run / "checkpoints" / "step_00000070" / "MANIFEST.json").exists()
    info = json.loads(cli("inspect", run, "--json", check=0).stdout)
    assert info["step"] == 63
    trained(run)
    assert_same_run(reference, run)


def test_sigterm_writes_a_checkpoint_and_exits_0(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "srsgd_train.cli", "run", *RECIPE, "--run-dir", str(run),
                             "--set", "checkpoint.every_steps=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for line in proc.stdout:
        if "step 20/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped by signal" in out
    ck = open_checkpoint(str(run))
    assert ck.manifest["reason"] == "signal" and 20 <= ck.step < 44


def test_corrupted_and_truncated_files_are_detected_and_auto_resume_falls_back(tmp_path):
    run = tmp_path / "run"
    cli("run", *RECIPE, "--run-dir", run, "--set", "train.max_steps=21", check=0)
    newest = run / "checkpoints" / "step_00000021"
    model = newest / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    proc = cli("inspect", newest, check=2)
    assert "step_00000021/model.pt does not match its manifest" in proc.stderr
    assert "Traceback" not in proc.stderr
    # truncate another file of the previous checkpoint's sibling: rng of step 14
    rng = run / "checkpoints" / "step_00000014" / "rng" / "rank_00000.pt"
    rng.write_bytes(rng.read_bytes()[:10])
    proc = cli("run", *RECIPE, "--run-dir", run, "--set", "train.max_steps=30", check=0)
    assert "skipping checkpoint" in proc.stdout and "step_00000021" in proc.stdout
    assert "resumed from" in proc.stdout and "step_00000007 at step 7" in proc.stdout


def test_resume_refuses_a_changed_recipe_but_allows_safe_changes(tmp_path):
    run = tmp_path / "run"
    cli("run", *RECIPE, "--run-dir", run, "--set", "train.max_steps=10", check=0)
    proc = cli("run", *RECIPE, "--run-dir", run, "--set", "optimizer.lr=0.5", check=2)
    assert "optimizer.lr: 0.1 -> 0.5" in proc.stderr
    cli("run", *RECIPE, "--run-dir", run, "--set", "train.max_steps=12", "--set", "run.log_every=3", check=0)
    assert open_checkpoint(str(run)).step == 12


def test_resume_none_refuses_to_overwrite_without_force(tmp_path):
    run = tmp_path / "run"
    cli("run", *RECIPE, "--run-dir", run, "--set", "train.max_steps=5", check=0)
    proc = cli("run", *RECIPE, "--run-dir", run, "--resume", "none", check=2)
    assert "--force" in proc.stderr
    assert open_checkpoint(str(run)).step == 5
    cli("run", *RECIPE, "--run-dir", run, "--resume", "none", "--force", "--set", "train.max_steps=3", check=0)
    assert open_checkpoint(str(run)).step == 3


def test_inspect_shows_the_restart_phase(tmp_path):
    run = tmp_path / "run"
    cli("run", *RECIPE, "--run-dir", run, "--set", "train.max_steps=26", check=0)
    info = json.loads(cli("inspect", run, "--json", check=0).stdout)
    ph = info["train_state"]["restart_phase"]
    # 26 steps with F = 20: c ran 1..20, then 1..6, and the next step uses c = 7
    assert (ph["iter_count"], ph["restart_period"], ph["stage"], ph["steps_to_next_restart"]) == (7, 20, 0, 14)
    text = cli("inspect", run, check=0).stdout
    assert "c=7 F=20" in text and "next restart in 14 steps" in text


def test_memory_run_dir_end_to_end():
    from srsgd_train.inspect import describe
    from srsgd_train.recipe import load_recipe
    from srsgd_train.train import run_training

    overrides = RECIPE[2::2] + ["run.tensorboard=false"]
    first = run_training(load_recipe("quickstart", overrides + ["train.max_steps=10"]), "memory://runs/mem", show_progress=False)
    assert first["step"] == 10
    second = run_training(load_recipe("quickstart", overrides + ["train.max_steps=20"]), "memory://runs/mem", show_progress=False)
    assert second["step"] == 20
    assert describe("memory://runs/mem")["train_state"]["step"] == 20
    steps = [r["step"] for r in read_metrics("memory://runs/mem") if "split" not in r]
    assert steps == list(range(1, 21))


def test_phase_mismatch_after_load_is_refused(tmp_path):
    from srsgd_train.checkpoint import CheckpointError
    from srsgd_train.recipe import load_recipe
    from srsgd_train.train import Trainer

    run = tmp_path / "run"
    cli("run", *RECIPE, "--run-dir", run, "--set", "train.max_steps=9", check=0)
    t = Trainer(load_recipe("quickstart", RECIPE[2::2]), str(run), show_progress=False).build()
    t.maybe_resume()
    t._verify_phase()  # consistent as loaded
    for g in t.optimizer.param_groups:
        g["iter_count"] = 3
    with pytest.raises(CheckpointError, match="disagrees with the schedule"):
        t._verify_phase()
