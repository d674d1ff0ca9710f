"""A real one-node SLURM cluster (.ci/slurm-up starts it): submit the rendered sbatch script,
send the warning signal mid-run, and check the job checkpointed, requeued itself, resumed and
finished with exactly the metrics of an uninterrupted run."""

import os
import shutil
import subprocess
import time

import pytest
import torch

from helpers import cli
from srsgd_train.checkpoint import open_checkpoint
from srsgd_train.metrics import read_metrics

pytestmark = pytest.mark.slow

if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
    if os.environ.get("SRSGD_REQUIRE_SLURM"):
        pytest.fail("SRSGD_REQUIRE_SLURM is set but no SLURM cluster answers (run .ci/slurm-up)", pytrace=False)
    pytest.skip("no SLURM cluster here: run .ci/slurm-up (CI does, and requires it)", allow_module_level=True)

RECIPE = ["quickstart", "--set", "model.name=preresnet20", "--set", "schedule.epochs=5",
          "--set", "schedule.milestones=[3]", "--set", "run.log_every=1", "--set", "checkpoint.every_steps=10",
          "--set", "run.tensorboard=false", "--set", "data.workers=0"]


def job_field(job_id, field):
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    for tok in out.split():
        if tok.startswith(field + "="):
            return tok.split("=", 1)[1]
    return None


def test_rendered_script_shape():
    script = cli("slurm", "resnet200_imagenet", "--nodes", "4", "--gpus-per-node", "8", "--time", "48:00:00",
                 "--partition", "gpu", "--run-dir", "/shared/runs/r200", check=0).stdout
    for needle in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --signal=B:USR1@180",
                   "#SBATCH --requeue", "--rdzv-backend=c10d", "--nnodes=4", "--nproc-per-node=8",
                   "scontrol requeue", 'touch "$RUN_DIR/STOP"', "srun --kill-on-bad-exit=1"):
        assert needle in script, needle
    ds = cli("slurm", "resnet50_imagenet", "--backend", "deepspeed", "--nodes", "2", check=0).stdout
    assert "--launcher=slurm" in ds and "slots=8" in ds and "--hostfile=$RUN_DIR/hostfile" in ds


def test_preempted_job_checkpoints_requeues_and_resumes_exactly(tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "job.sbatch"
    script.write_text(cli("slurm", *RECIPE, "--nodes", "1", "--nproc-per-node", "2", "--cpus-per-task", "2",
                          "--time", "00:20:00", "--warning-seconds", "60", "--run-dir", run, check=0).stdout)
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        deadline = time.time() + 300
        while not (run / "checkpoints" / "latest").exists():  # running, first checkpoint written
            assert time.time() < deadline, "the job never wrote a checkpoint"
            assert job_field(job, "JobState") in ("PENDING", "RUNNING", "CONFIGURING"), job_field(job, "JobState")
            time.sleep(0.5)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)  # SLURM's warning
        deadline = time.time() + 600
        while not (job_field(job, "JobState") == "COMPLETED" and int(job_field(job, "Restarts") or 0) >= 1):
            state = job_field(job, "JobState")
            if state == "PENDING" and int(job_field(job, "Restarts") or 0) >= 1:
                # SLURM holds a requeued job for a while before it is eligible; skip the wait
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
            assert state not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), state
            assert time.time() < deadline, f"job {job} did not finish after requeue (state {state})"
            time.sleep(1)
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    log = (run / f"slurm-{job}.out").read_text()
    assert "warning signal" in log and f"requeueing job {job}" in log
    assert "checkpoint" in log and "resumed from" in log and "finished with 0" in log
    assert not (run / "STOP").exists()
    preempt = [c for c in (run / "checkpoints").iterdir()]
    assert preempt  # checkpoints kept

    reference = tmp_path / "reference"
    cli("launch", *RECIPE, "--nproc", "2", "--run-dir", reference, check=0, timeout=900)
    losses = lambda d: [(r["step"], r["loss"], r.get("iter_count")) for r in read_metrics(str(d)) if "split" not in r]
    assert losses(run) == losses(reference)
    a, b = open_checkpoint(str(run)).load("model.pt"), open_checkpoint(str(reference)).load("model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
