"""Render an sbatch script that trains, checkpoints on SLURM's warning signal and requeues.

Preemption protocol (no signal has to travel through srun/torchrun to the ranks):
  1. ``#SBATCH --signal=B:USR1@W`` makes SLURM signal the batch shell W seconds before
     the time limit (``scancel --signal=USR1 --batch JOB`` does the same by hand).
  2. The shell's trap writes ``<run_dir>/STOP``. Every rank polls for it, agrees at the
     next step boundary, writes a checkpoint and exits 0 (SIGTERM/SIGUSR1 sent straight
     to the ranks work too).
  3. The shell runs ``scontrol requeue``; the requeued job resumes from the checkpoint
     (`srsgd-train run` resumes by default) with its restart phase intact.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

from srsgd_train.errors import UserError
from srsgd_train.launch.commands import ClusterShape, RunArgs, deepspeed_command, torchrun_command


@dataclass(frozen=True)
class SlurmJob:
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int | None = None
    procs_per_node: int | None = None  # CPU runs: ranks per node without GPUs
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    job_name: str = "srsgd-train"
    warning_seconds: int = 180
    backend: str = "ddp"

    @property
    def ranks_per_node(self) -> int:
        return self.procs_per_node or self.gpus_per_node


def render_sbatch(job: SlurmJob, run: RunArgs, run_dir: str, python: str = sys.executable) -> str:
    if job.backend not in ("ddp", "deepspeed"):
        raise UserError(f"--backend must be ddp or deepspeed, got {job.backend!r}.")
    if job.ranks_per_node < 1 or job.nodes < 1:
        raise UserError("--nodes and --gpus-per-node (or --nproc-per-node) must be at least 1.")
    run = RunArgs(run.recipe, run.overrides, run_dir, run.resume)
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job.job_name}", f"#SBATCH --nodes={job.nodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --time={job.time}",
             f"#SBATCH --signal=B:USR1@{job.warning_seconds}", "#SBATCH --requeue", "#SBATCH --open-mode=append",
             f"#SBATCH --output={run_dir}/slurm-%j.out"]
    if job.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={job.cpus_per_task}")
    if not job.procs_per_node:
        lines.append(f"#SBATCH --gpus-per-node={job.gpus_per_node}")
    if job.partition:
        lines.append(f"#SBATCH --partition={job.partition}")
    if job.account:
        lines.append(f"#SBATCH --account={job.account}")
    shape = ClusterShape(job.nodes, job.ranks_per_node, master_addr="$MASTER_ADDR", master_port=0,
                         rdzv_id="$SLURM_JOB_ID")
    if job.backend == "ddp":
        cmd = torchrun_command(run, shape, python)
        cmd = [c.replace(":0", ":$MASTER_PORT") if c.startswith("--rdzv-endpoint") else c for c in cmd]
        launch = f"srun --kill-on-bad-exit=1 {_shell(cmd)}"
        hostfile = ""
    else:
        ds_shape = ClusterShape(job.nodes, job.ranks_per_node, master_addr="$MASTER_ADDR",
                                master_port=0, hostfile="$RUN_DIR/hostfile")
        cmd = deepspeed_command(run, ds_shape, python)
        cmd = [c.replace("--master_port=0", "--master_port=$MASTER_PORT") for c in cmd]
        cmd.insert(3, "--launcher=slurm")
        launch = _shell(cmd)
        hostfile = (f'scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/$/ slots={job.ranks_per_node}/" '
                    '> "$RUN_DIR/hostfile"\n')
    return "\n".join(lines) + f"""

# Rendered by `srsgd-train slurm`. Preemption: on SLURM's warning signal (USR1, sent
# {job.warning_seconds}s before the time limit) the ranks checkpoint at the next step and exit;
# this script then requeues the job, which resumes from that checkpoint.
set -uo pipefail
RUN_DIR={shlex.quote(run_dir)}
mkdir -p "$RUN_DIR"
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=$((29500 + SLURM_JOB_ID % 1000))
echo "[srsgd-train] job $SLURM_JOB_ID start (restart ${{SLURM_RESTART_COUNT:-0}}) on $SLURM_JOB_NODELIST"
{hostfile}
PREEMPTED=0
on_warning() {{
  echo "[srsgd-train] warning signal: asking the ranks to checkpoint and stop"
  PREEMPTED=1
  touch "$RUN_DIR/STOP"
}}
trap on_warning USR1 TERM

{launch} &
PID=$!
while true; do
  wait "$PID"; rc=$?
  kill -0 "$PID" 2>/dev/null || break   # a trapped signal interrupts wait: keep waiting
done
if [ "$PREEMPTED" = 1 ]; then
  echo "[srsgd-train] ranks exited with $rc after checkpointing; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
echo "[srsgd-train] job $SLURM_JOB_ID finished with $rc"
exit "$rc"
"""


def _shell(cmd: list[str]) -> str:
    """Quote for bash but keep $VARS expandable."""
    out = []
    for c in cmd:
        out.append(f'"{c}"' if "$" in c else shlex.quote(c))
    return " ".join(out)
