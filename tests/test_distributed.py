"""Real multi-process runs on CPU (gloo), started the way users start them: srsgd-train launch."""


import pytest
import torch

from helpers import cli
from srsgd_train.checkpoint import open_checkpoint
from srsgd_train.metrics import read_metrics

pytestmark = pytest.mark.slow

# an MLP (no BatchNorm, whose per-rank statistics would differ from one process) on digits;
# global batch 32 = 2 ranks x 16
BASE = ["quickstart", "--set", "model.name=mlp", "--set", "schedule.epochs=2", "--set", "schedule.milestones=[1]",
        "--set", "run.log_every=1", "--set", "checkpoint.every_steps=5", "--set", "run.tensorboard=false"]


def launch(run_dir, nproc, *extra, fault=None, expect=0):
    env = {"SRSGD_TRAIN_FAULT": fault} if fault else None
    proc = cli("launch", *BASE, "--nproc", nproc, "--run-dir", run_dir, *extra, env=env, timeout=900)
    assert (proc.returncode == 0) == (expect == 0), proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def local(run_dir, *extra):
    return cli("run", *BASE, "--run-dir", run_dir, *extra, check=0, timeout=900)


def train_losses(run_dir):
    return [r["loss"] for r in read_metrics(str(run_dir)) if "split" not in r]


def params(run_dir):
    return open_checkpoint(str(run_dir)).load("model.pt")


def max_rel(a, b):
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)).item() for k in a)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    local(run, "--set", "train.max_steps=20")
    return run


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    run = tmp_path_factory.mktemp("two") / "run"
    launch(run, 2, "--set", "train.max_steps=20")
    return run


def test_two_rank_sharded_ddp_equals_one_process(one_process, two_ranks):
    a, b = train_losses(one_process), train_losses(two_ranks)
    assert len(a) == len(b) == 20
    assert max(abs(x - y) / abs(y) for x, y in zip(a, b)) <= 1e-6
    assert max_rel(params(two_ranks), params(one_process)) <= 1e-6
    state = open_checkpoint(str(two_ranks)).load_json("train_state.json")
    assert state["world_size"] == 2 and state["restart_phase"]["iter_count"] >= 1


def test_each_rank_holds_about_half_of_the_optimizer_state(tmp_path):
    # ZeRO shards whole parameters: use a net with many of them (the MLP has one big matrix)
    cnn = ["--set", "model.name=preresnet20", "--set", "train.max_steps=2"]
    local(tmp_path / "one", *cnn)
    launch(tmp_path / "two", 2, *cnn)
    total = open_checkpoint(str(tmp_path / "one")).load_json("train_state.json")["optimizer_state_bytes_per_rank"]
    per_rank = open_checkpoint(str(tmp_path / "two")).load_json("train_state.json")["optimizer_state_bytes_per_rank"]
    assert len(per_rank) == 2 and sum(per_rank) == total[0]
    assert all(0.4 < r / total[0] < 0.6 for r in per_rank), per_rank


def test_sigkill_of_all_ranks_then_resume_is_bitwise(tmp_path, two_ranks):
    run = tmp_path / "run"
    launch(run, 2, "--set", "train.max_steps=20", fault="kill_at_step=13", expect=1)
    assert open_checkpoint(str(run)).step == 10
    out = launch(run, 2, "--set", "train.max_steps=20")
    assert "resumed from" in out.stdout
    assert train_losses(run) == train_losses(two_ranks)
    a, b = params(run), params(two_ranks)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_two_ranks_to_one_and_one_to_two(tmp_path, one_process):
    two_to_one = tmp_path / "2to1"
    launch(two_to_one, 2, "--set", "train.max_steps=10")
    out = local(two_to_one, "--set", "train.max_steps=20")
    assert "world size changed (2 -> 1)" in out.stdout
    assert max_rel(params(two_to_one), params(one_process)) <= 1e-6

    one_to_two = tmp_path / "1to2"
    local(one_to_two, "--set", "train.max_steps=10")
    launch(one_to_two, 2, "--set", "train.max_steps=20")
    ck = open_checkpoint(str(one_to_two))
    assert ck.manifest["world_size"] == 2
    assert max_rel(params(one_to_two), params(one_process)) <= 1e-6
    # restart phase intact across the change: same c and F as the uninterrupted run
    ph = ck.load_json("train_state.json")["restart_phase"]
    ref = open_checkpoint(str(one_process)).load_json("train_state.json")["restart_phase"]
    assert (ph["iter_count"], ph["restart_period"]) == (ref["iter_count"], ref["restart_period"])
