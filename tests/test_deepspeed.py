"""DeepSpeed ZeRO-1/2 with SRSGD as the client optimizer: real ranks on CPU (gloo)."""

import pytest
import torch

from helpers import cli
from srsgd_train.checkpoint import open_checkpoint
from test_distributed import BASE, local, max_rel, params, train_losses

pytest.importorskip("deepspeed", reason="install the [deepspeed] extra; CI installs it")
pytestmark = pytest.mark.slow


def ds(run_dir, nproc, stage, *extra, fault=None, expect=0):
    env = {"SRSGD_TRAIN_FAULT": fault} if fault else None
    proc = cli("launch", *BASE, "--backend", "deepspeed", "--nproc", nproc, "--run-dir", run_dir,
               "--set", f"distributed.zero_stage={stage}", *extra, env=env, timeout=900)
    assert (proc.returncode == 0) == (expect == 0), proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    local(run, "--set", "train.max_steps=20")
    return run


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_matches_one_process_and_resumes_bitwise_after_sigkill(tmp_path, one_process, stage):
    full = tmp_path / "full"
    ds(full, 2, stage, "--set", "train.max_steps=20")
    a, b = train_losses(full), train_losses(one_process)
    assert len(a) == 20 and max(abs(x - y) / abs(y) for x, y in zip(a, b)) <= 1e-6
    assert max_rel(params(full), params(one_process)) <= 1e-6
    state = open_checkpoint(str(full)).load_json("train_state.json")
    per_rank = state["optimizer_state_bytes_per_rank"]
    assert len(per_rank) == 2 and abs(per_rank[0] - per_rank[1]) <= 64  # flat partitions: even halves

    killed = tmp_path / "killed"
    ds(killed, 2, stage, "--set", "train.max_steps=20", fault="kill_at_step=12", expect=1)
    ck = open_checkpoint(str(killed))
    assert ck.step == 10 and any(f["path"].startswith("deepspeed/zero_pp_rank_1") for f in ck.manifest["files"])
    out = ds(killed, 2, stage, "--set", "train.max_steps=20")
    assert "resumed from" in out.stdout
    assert train_losses(killed) == train_losses(full)
    pa, pb = params(killed), params(full)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_resumes_on_another_world_size(tmp_path, one_process, stage):
    for before, after in ((2, 1), (1, 2)):
        run = tmp_path / f"{before}to{after}"
        ds(run, before, stage, "--set", "train.max_steps=10")
        ds(run, after, stage, "--set", "train.max_steps=20")
        ck = open_checkpoint(str(run))
        assert ck.manifest["world_size"] == after
        assert max_rel(params(run), params(one_process)) <= 1e-6
        ph = ck.load_json("train_state.json")["restart_phase"]
        ref = open_checkpoint(str(one_process)).load_json("train_state.json")["restart_phase"]
        assert (ph["iter_count"], ph["restart_period"]) == (ref["iter_count"], ref["restart_period"])
