"""Build the torchrun / deepspeed command that starts `srsgd-train run` on every rank.

The global batch, LR schedule and restart schedule are defined in global optimizer steps,
so the same recipe gives the same run on any number of ranks; the launcher only sets
``distributed.backend``.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field

from srsgd_train.errors import UserError


@dataclass(frozen=True)
class ClusterShape:
    nodes: int = 1
    procs_per_node: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500
    hostfile: str | None = None
    rdzv_id: str | None = None  # c10d rendezvous (SLURM): every node runs the same command

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.procs_per_node < 1:
            raise UserError("--nodes and --gpus-per-node / --nproc must be at least 1.")
        if not 0 <= self.node_rank < self.nodes:
            raise UserError(f"--node-rank must lie in [0, {self.nodes}), got {self.node_rank}.")
        if self.nodes > 1 and not (self.master_addr or self.hostfile or self.rdzv_id):
            raise UserError("A multi-node launch needs --master-addr (or --hostfile for DeepSpeed).")


@dataclass(frozen=True)
class RunArgs:
    recipe: str
    overrides: list[str] = field(default_factory=list)
    run_dir: str | None = None
    resume: str = "auto"

    def cli_args(self, backend: str) -> list[str]:
        args = ["run", self.recipe, "--set", f"distributed.backend={backend}"]
        for o in self.overrides:
            args += ["--set", o]
        if self.run_dir:
            args += ["--run-dir", self.run_dir]
        if self.resume != "auto":
            args += ["--resume", self.resume]
        return args


def torchrun_command(run: RunArgs, shape: ClusterShape, python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "torch.distributed.run", f"--nnodes={shape.nodes}",
           f"--nproc-per-node={shape.procs_per_node}"]
    if shape.rdzv_id:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={shape.master_addr}:{shape.master_port}",
                f"--rdzv-id={shape.rdzv_id}"]
    elif shape.nodes == 1 and not shape.master_addr:
        cmd += ["--standalone"]  # picks a free port: several local jobs can run side by side
    else:
        cmd += [f"--node-rank={shape.node_rank}", f"--master-addr={shape.master_addr}",
                f"--master-port={shape.master_port}"]
    return cmd + ["-m", "srsgd_train.cli", *run.cli_args("ddp")]


def deepspeed_command(run: RunArgs, shape: ClusterShape, python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "deepspeed.launcher.runner"]
    if shape.hostfile:
        cmd += [f"--hostfile={shape.hostfile}"]
    else:
        cmd += [f"--num_nodes={shape.nodes}"]
    cmd += [f"--num_gpus={shape.procs_per_node}"]
    if shape.master_addr:
        cmd += [f"--master_addr={shape.master_addr}"]
    cmd += [f"--master_port={shape.master_port}", "--no_local_rank", "--module", "srsgd_train.cli",
            *run.cli_args("deepspeed")]
    return cmd


def build_command(backend: str, run: RunArgs, shape: ClusterShape) -> list[str]:
    if backend == "ddp":
        return torchrun_command(run, shape)
    if backend == "deepspeed":
        return deepspeed_command(run, shape)
    raise UserError(f"--backend must be ddp or deepspeed, got {backend!r}.")


def render(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)
