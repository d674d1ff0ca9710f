"""The training loop. One Trainer for every backend:

    build -> (resume) -> for each step: batch, forward, backward, backend.step(),
    restart.step(), log, maybe checkpoint -> evaluate

Everything a resumed run needs lives in named stateful parts (model, optimizer, restart
schedule, grad scaler, trainer counters, per-rank RNG); the data position is the
(epoch, step-in-epoch) pair, since the sampler's order is a function of (seed, epoch).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import fsspec
import torch

from srsgd_train import rng
from srsgd_train.backends import build_backend
from srsgd_train.checkpoint import Checkpoint, CheckpointError, CheckpointStore, open_checkpoint
from srsgd_train.data import GlobalBatchSampler, build_datasets, build_loader, shard_range
from srsgd_train.errors import UserError
from srsgd_train.lr_schedule import LRSchedule
from srsgd_train.metrics import MetricsLog, Progress, TensorBoard, Throughput
from srsgd_train.models import build_model
from srsgd_train.optim import ARSGD, NASGD, SRSGD, RestartPlan, RestartSchedule, momentum_of
from srsgd_train.optim.restart import exponential_periods, linear_periods
from srsgd_train.optim.srsgd import set_phase, shared_iter_count
from srsgd_train.recipe import Recipe, recipe_from_dict

STOP_POLL_SECONDS = 2.0  # how often rank 0 looks for <run_dir>/STOP

# Keys that may differ between the saved recipe and the one a run resumes with.
RESUMABLE_CHANGES = (
    "run.log_every", "run.tensorboard", "run.dir", "data.workers", "data.pin_memory", "data.root",
    "data.eval_batch_size", "checkpoint.keep", "checkpoint.every_steps", "checkpoint.at_epoch_end",
    "train.max_steps", "distributed.backend", "distributed.shard_optimizer", "description",
)


@dataclass
class TrainState:
    step: int = 0            # data iterations taken (one global batch each)
    applied_steps: int = 0   # optimizer steps applied (fp16 overflow skips one)
    epoch: int = 0
    step_in_epoch: int = 0


def restart_plan(recipe: Recipe, steps_per_epoch: int) -> RestartPlan:
    r, s = recipe.optimizer.restart, recipe.schedule
    stages = len(s.milestones) + 1
    periods = {
        "constant": lambda: [r.period] * stages,
        "stages": lambda: list(r.periods),
        "linear": lambda: linear_periods(r.first, r.rate, stages),
        "exponential": lambda: exponential_periods(r.first, r.rate, stages),
    }[r.kind]()
    return RestartPlan(periods=tuple(periods), milestones=tuple(s.milestones), epochs=s.epochs,
                       steps_per_epoch=steps_per_epoch, decay_last_to=r.decay_last_to,
                       restart_at_stage_start=r.restart_at_stage_start, counting=recipe.optimizer.counting)


def optimizer_factory(recipe: Recipe) -> Callable[[Any], torch.optim.Optimizer]:
    o = recipe.optimizer

    def make(params: Any) -> torch.optim.Optimizer:
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
        common = dict(lr=o.lr, weight_decay=o.weight_decay, counting=o.counting, impl=o.impl)
        if o.name == "nasgd":
            return NASGD(params, **common)
        if o.name == "arsgd":
            return ARSGD(params, **common)
        return SRSGD(params, restart_period=40, flat=o.flat, **common)  # F is set by the schedule

    return make


def _fault(kind: str, step: int) -> None:
    """Fault injection for the resume tests: SRSGD_TRAIN_FAULT="kill_at_step=N" or
    "kill_in_save=N" sends this process a real SIGKILL at that point."""
    spec = os.environ.get("SRSGD_TRAIN_FAULT", "")
    if spec and spec == f"{kind}={step}":
        os.kill(os.getpid(), signal.SIGKILL)


class StopFlag:
    """SIGTERM / SIGUSR1 only set a flag; the loop checkpoints at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.from_file = False
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. embedded in a notebook thread)
                pass

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, recipe: Recipe, run_dir: str | None = None, resume: str = "auto",
                 force: bool = False, log: Callable[[str], None] | None = None, show_progress: bool = True) -> None:
        self.recipe = recipe
        self.run_dir = (run_dir or recipe.run.dir or f"runs/{recipe.name}").rstrip("/")
        self.resume_mode = resume
        self.force = force
        self.show_progress = show_progress
        self._log = log or (lambda s: print(s, flush=True))
        self.state = TrainState()
        self.stop = StopFlag()
        self.last_saved_step = -1
        self._next_stop_poll = 0.0

    def log(self, text: str) -> None:
        if self.backend.is_main:
            self._log(text)

    # -- build --------------------------------------------------------------------------
    def build(self) -> "Trainer":
        r = self.recipe
        self.backend = build_backend(r)
        self.fs, self.root = fsspec.core.url_to_fs(self.run_dir)
        rng.seed_everything(r.run.seed)  # identical initial weights on every rank
        self.train_set, self.val_set, info = build_datasets(r.data)
        model = build_model(r.model.name, r.model.num_classes or info["num_classes"], info["channels"],
                            info["image_size"], r.model.zero_init_residual)
        self.model, self.optimizer = self.backend.setup(model, optimizer_factory(r))
        self.sampler = GlobalBatchSampler(len(self.train_set), r.data.batch_size, r.run.seed,
                                          self.backend.rank, self.backend.world_size)
        spe = self.sampler.steps_per_epoch
        self.total_steps = r.schedule.epochs * spe
        self.lr_schedule = LRSchedule(r.optimizer.lr, r.schedule.milestones, r.schedule.gamma, spe,
                                      r.schedule.warmup_epochs)
        self.restart = None
        if r.optimizer.name == "srsgd":
            self.plan = restart_plan(r, spe)
            self.restart = RestartSchedule(self.optimizer, self.plan)
        self.store = CheckpointStore(self.run_dir, keep=r.checkpoint.keep)
        if self.backend.native_checkpoint and not self.store.is_local:
            raise UserError(f"The DeepSpeed backend writes its checkpoint shards itself and needs a local or "
                            f"shared filesystem run dir, not {self.run_dir}.")
        self.metrics = MetricsLog(self.run_dir, enabled=self.backend.is_main)
        self.stop_file = posixpath.join(self.root, "STOP")
        rng.seed_everything(r.run.seed + 1 + self.backend.rank)  # per-rank streams from here on
        return self

    # -- state --------------------------------------------------------------------------
    def phase(self) -> dict[str, Any]:
        groups = self.optimizer.param_groups
        if self.restart is None:
            c = groups[0].get("iter_count")
            return {"iter_count": c, "restart_period": None, "stage": None,
                    "momentum": momentum_of(c) if c else None, "steps_to_next_restart": None}
        return {"iter_count": shared_iter_count(groups), "restart_period": self.restart.period,
                "stage": self.restart.stage, "momentum": momentum_of(shared_iter_count(groups)),
                "steps_to_next_restart": self.restart.steps_to_next_restart()}

    def train_state_record(self) -> dict[str, Any]:
        return {**asdict(self.state), "lr": self.lr_schedule.lr_at(min(self.state.step, self.total_steps - 1)),
                "restart_phase": self.phase(), "seed": self.recipe.run.seed,
                "world_size": self.backend.world_size, "total_steps": self.total_steps,
                "optimizer": self.recipe.optimizer.name}

    def save(self, reason: str) -> str:
        b = self.backend
        step = self.state.step
        folder = self.store.folder(step)
        if b.is_main:
            self.store.begin(step)
        b.barrier()
        entries = [self.store.write_object(folder, f"rng/rank_{b.rank:05d}.pt", rng.capture())]
        state_bytes = b.all_gather_object(b.local_optimizer_state_bytes())
        model_state = b.model_state()
        optim_state = b.optimizer_state()
        if b.native_checkpoint:
            b.save_native(folder)  # the engine's own sharded files, inside our folder
        if b.is_main:
            groups = self.optimizer.param_groups
            trainer = {"restart": self.restart.state_dict() if self.restart else None,
                       "scaler": b.scaler.state_dict(), "train_state": asdict(self.state),
                       "phase": {"iter_count": groups[0].get("iter_count"),
                                 "restart_period": groups[0].get("restart_period")}}
            entries += [
                self.store.write_object(folder, "model.pt", model_state),
            ]
            _fault("kill_in_save", step)
            if optim_state is not None:
                entries.append(self.store.write_object(folder, "optim.pt", optim_state))
            entries += [
                self.store.write_object(folder, "trainer.pt", trainer),
                self.store.write_file(folder, "train_state.json", json.dumps(
                    {**self.train_state_record(), "optimizer_state_bytes_per_rank": state_bytes}, indent=1).encode()),
                self.store.write_file(folder, "recipe.json", json.dumps(self.recipe.to_dict()).encode()),
            ]
        gathered = b.all_gather_object(entries)
        b.barrier()
        if b.is_main:
            if b.native_checkpoint:  # hash the engine's files too (shared filesystem)
                known = {e["path"] for es in gathered for e in es}
                gathered.append([self.store.entry_for(folder, p) for p in self.store.files_under(folder)
                                 if p not in known])
            self.metrics.flush()
            self.store.commit(folder, step, [e for es in gathered for e in es],
                              {"world_size": b.world_size, "recipe_hash": self.recipe.digest(), "reason": reason})
        b.barrier()
        self.last_saved_step = step
        return folder

    def _candidates(self) -> list[str]:
        """Checkpoints to try, newest first (``--resume auto``), or the one asked for."""
        mode = self.resume_mode
        if mode == "none":
            has_run = self.store.steps() or self.fs.exists(posixpath.join(self.root, "metrics.jsonl"))
            if has_run and not self.force:
                raise UserError(
                    f"Run dir {self.run_dir} already holds a run. --resume none would overwrite it: "
                    "pass --force to start over (its checkpoints and metrics are deleted), use "
                    "--resume auto to continue it, or choose another --run-dir."
                )
            if has_run and self.backend.is_main:
                for p in self.store.steps() + [posixpath.join(self.root, "metrics.jsonl")]:
                    if self.fs.exists(p):
                        self.fs.rm(p, recursive=True)
            return []
        if mode == "auto":
            return self.store.candidates()
        return [open_checkpoint(mode, verify=False).path]

    def maybe_resume(self) -> None:
        """Load the newest checkpoint that verifies. Every file is checked against the
        manifest while it is read (hashing beside deserialization); a checkpoint with a
        bad file is skipped, with a message, for the one before it."""
        b = self.backend
        candidates = self._candidates()
        b.barrier()
        for path in candidates:
            try:
                ckpt = self.store.open(path, verify=False)
                parts = self._read_checkpoint(ckpt)
                ok = True
            except CheckpointError as e:
                if self.resume_mode != "auto":
                    raise
                self.log(f"skipping checkpoint {path}: {e} Falling back to the previous one.")
                ok = False
            if all(b.all_gather_object(ok)):
                self._apply_checkpoint(ckpt, parts)
                return
        if candidates or self.store.steps():
            raise CheckpointError(
                f"Run dir {self.run_dir} has checkpoints but none verifies. Inspect them with "
                "`srsgd-train inspect`, or start over with --resume none --force."
            )

    def _read_checkpoint(self, ckpt: Checkpoint) -> dict[str, Any]:
        b = self.backend
        self._check_recipe(ckpt)
        parts = {"model": ckpt.load("model.pt", map_location=b.device),
                 "optim": None if b.native_checkpoint else ckpt.load("optim.pt", map_location=b.device)}
        parts["trainer"] = ckpt.load("trainer.pt")
        rng_name = f"rng/rank_{b.rank:05d}.pt"
        same_world = ckpt.manifest.get("world_size") == b.world_size and ckpt.has(rng_name)
        parts["rng"] = ckpt.load(rng_name) if same_world else None
        if b.is_main:  # every file of a checkpoint must verify, not only the ones we need
            for entry in ckpt.manifest["files"]:
                ckpt.verify(entry["path"])
        return parts

    def _apply_checkpoint(self, ckpt: Checkpoint, parts: dict[str, Any]) -> None:
        b = self.backend
        if b.native_checkpoint:
            b.load_native(ckpt.path, ckpt.manifest["world_size"])
        else:
            b.load_model_state(parts["model"])
            b.load_optimizer_state(parts["optim"])
        trainer = parts["trainer"]
        if b.native_checkpoint and trainer["phase"]["iter_count"] is not None:
            # DeepSpeed's elastic restore does not bring param-group keys back: restore the
            # saved phase, which _verify_phase then checks against the schedule
            set_phase(self.optimizer.param_groups, trainer["phase"]["iter_count"], trainer["phase"]["restart_period"])
        self.state = TrainState(**trainer["train_state"])
        if self.restart is not None:
            self.restart.load_state_dict(trainer["restart"])
        b.scaler.load_state_dict(trainer["scaler"])
        if parts["rng"] is not None:
            rng.restore(parts["rng"])
        else:
            self.log(f"world size changed ({ckpt.manifest.get('world_size')} -> {b.world_size}): "
                     "per-rank RNG streams are re-seeded; data order and restart phase are unchanged")
        self._verify_phase()
        self.store.protected.add(ckpt.path)
        if b.is_main:
            self.metrics.truncate_after(self.state.step)
        self.last_saved_step = self.state.step
        ph = self.phase()
        self.log(f"resumed from {ckpt.path} at step {self.state.step} (epoch {self.state.epoch}, "
                 f"step {self.state.step_in_epoch} of the epoch); restart phase c={ph['iter_count']} "
                 f"F={ph['restart_period']}")

    def _check_recipe(self, ckpt: Checkpoint) -> None:
        saved = recipe_from_dict(ckpt.load_json("recipe.json"), f"{ckpt.path}/recipe.json").to_dict()
        diff = [k for k in _flat_diff(saved, self.recipe.to_dict()) if not k.startswith(RESUMABLE_CHANGES)]
        if diff:
            flat_old, flat_new = _flatten(saved), _flatten(self.recipe.to_dict())
            changes = "; ".join(f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in diff)
            raise UserError(
                f"The recipe differs from the one checkpoint {ckpt.path} was trained with ({changes}). "
                f"Only these may change on resume: {', '.join(RESUMABLE_CHANGES)}. Resume with the "
                "original recipe, or start a new run with another --run-dir."
            )

    def _verify_phase(self) -> None:
        """Re-derive c and F from the applied-step count and the schedule; refuse on mismatch."""
        if self.restart is None:
            return
        expected = self.plan.phase_at(self.state.applied_steps)
        got = (shared_iter_count(self.optimizer.param_groups), self.optimizer.param_groups[0]["restart_period"])
        if tuple(expected) != tuple(got) or self.restart.applied_steps != self.state.applied_steps:
            raise CheckpointError(
                f"Checkpoint restart phase disagrees with the schedule: after {self.state.applied_steps} "
                f"applied steps the schedule says (c, F) = {expected}, the checkpoint holds {got} "
                f"(restart schedule at {self.restart.applied_steps} steps). Refusing to continue."
            )

    # -- loop ---------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        r, b = self.recipe, self.backend
        if b.is_main:
            self.fs.makedirs(self.root, exist_ok=True)
        self.maybe_resume()
        if b.is_main:
            with self.fs.open(posixpath.join(self.root, "recipe.resolved.yaml"), "w") as f:
                f.write(r.to_yaml())
        self.stop.install()
        tb = TensorBoard(self.run_dir, r.run.tensorboard and b.is_main)
        end_step = min(self.total_steps, r.train.max_steps or self.total_steps)
        progress = Progress(end_step, self.state.step, enabled=self.show_progress and b.is_main)
        result: dict[str, Any] = {"status": "finished"}
        try:
            result = self._loop(end_step, progress, tb)
        finally:
            progress.close()
            tb.close()
            self.stop.restore()
            if b.is_main:
                self.metrics.flush()
        return result

    def _loop(self, end_step: int, progress: Progress, tb: TensorBoard) -> dict[str, Any]:
        r, b, st = self.recipe, self.backend, self.state
        ckpt_cfg = r.checkpoint
        loss_fn = torch.nn.CrossEntropyLoss()
        meter = Throughput()
        last_eval: dict[str, Any] | None = None
        while st.step < end_step:
            self.sampler.set_epoch(st.epoch, st.step_in_epoch)
            loader = build_loader(self.train_set, batch_sampler=self.sampler, workers=r.data.workers,
                                  pin_memory=r.data.pin_memory and b.device.type == "cuda")
            self.model.train()
            for x, y in loader:
                x = b.prepare_input(x.to(b.device, non_blocking=True))
                y = y.to(b.device, non_blocking=True)
                if r.train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = self.lr_schedule.lr_at(st.step)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                phase = (self.optimizer.param_groups[0].get("iter_count"),
                         self.optimizer.param_groups[0].get("restart_period"))
                with b.autocast():
                    loss = loss_fn(self.model(x), y)
                b.backward(loss)
                loss_value = float(b.all_reduce_sum(loss.detach().float().clone()) / b.world_size)
                if not math.isfinite(loss_value):
                    raise UserError(
                        f"The loss became {loss_value} at step {st.step} (epoch {st.epoch}); training stopped "
                        f"without saving. The last good checkpoint is kept"
                        f"{' (step ' + str(self.last_saved_step) + ')' if self.last_saved_step >= 0 else ' (none yet)'}. "
                        "Lower optimizer.lr, add train.grad_clip, or use train.precision=fp32/bf16."
                    )
                applied = b.step(loss_value)
                if applied:
                    st.applied_steps += 1
                    if self.restart is not None:
                        self.restart.step()
                st.step += 1
                st.step_in_epoch += 1
                _fault("kill_at_step", st.step)
                meter.add(x.shape[0] * b.world_size)
                if st.step % r.run.log_every == 0 or st.step == end_step:
                    c = phase[0]
                    rec = {"step": st.step, "epoch": st.epoch, "loss": loss_value, "lr": lr,
                           "momentum": momentum_of(c) if c is not None else None,
                           "restart_period": phase[1], "iter_count": c, "images_per_sec": meter.rate()}
                    self.metrics.write(rec)
                    tb.scalars("train", rec, st.step)
                    progress.update(rec)
                epoch_done = st.step_in_epoch == self.sampler.steps_per_epoch
                if epoch_done:
                    st.epoch += 1
                    st.step_in_epoch = 0
                    if st.epoch % r.run.eval_every_epochs == 0 or st.step == self.total_steps:
                        last_eval = self.evaluate()
                        tb.scalars("test", last_eval, st.step)
                        progress.message(f"epoch {st.epoch}: test loss {last_eval['loss']:.4f} "
                                         f"top-1 err {last_eval['top1_err']:.2f}% top-5 err {last_eval['top5_err']:.2f}%")
                        self.model.train()
                stop = self._stop_requested()
                due = (ckpt_cfg.every_steps and st.step % ckpt_cfg.every_steps == 0) or \
                      (epoch_done and ckpt_cfg.at_epoch_end) or stop or st.step == end_step
                if due and st.step != self.last_saved_step:
                    self.save("signal" if stop else "schedule")
                if stop:
                    path = self.store.folder(self.last_saved_step)
                    if self.stop.from_file and b.is_main:
                        self.fs.rm(self.stop_file)  # consumed: the requeued job must run on
                    why = "STOP file" if self.stop.from_file else f"signal {self.stop.signum}"
                    progress.message(f"stop requested ({why}): checkpoint {path} written; exiting")
                    return {"status": "preempted", "step": st.step, "checkpoint": path}
                if st.step >= end_step or epoch_done:
                    break
        if last_eval is None or last_eval["step"] != st.step:
            last_eval = self.evaluate()
        return {"status": "finished", "step": st.step, "eval": last_eval}

    def _stop_requested(self) -> bool:
        """A signal, or a STOP file in the run dir (written by the sbatch script's trap),
        asks for a checkpoint and a clean exit; all ranks agree at the same step."""
        if self.backend.is_main and self.stop.signum is None and time.monotonic() >= self._next_stop_poll:
            self._next_stop_poll = time.monotonic() + STOP_POLL_SECONDS
            if self.fs.exists(self.stop_file):
                self.stop.signum = signal.SIGUSR1
                self.stop.from_file = True
        flag = torch.tensor([1.0 if self.stop.signum is not None else 0.0])
        if self.backend.world_size > 1:
            flag = self.backend.all_reduce_sum(flag.to(self.backend.device)).cpu()
            if flag.item() > 0 and self.stop.signum is None:
                self.stop.signum = signal.SIGTERM
        return flag.item() > 0

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        b, r = self.backend, self.recipe
        self.model.eval()
        idx = shard_range(len(self.val_set), b.rank, b.world_size)
        loader = build_loader(self.val_set, batch_size=r.data.eval_batch_size, indices=idx,
                              workers=r.data.workers, pin_memory=r.data.pin_memory and b.device.type == "cuda")
        sums = torch.zeros(4, dtype=torch.float64, device=b.device)  # loss, top1, top5, count
        for x, y in loader:
            x, y = b.prepare_input(x.to(b.device)), y.to(b.device)
            with b.autocast():
                out = self.model(x)
            out = out.float()
            k = min(5, out.shape[1])
            top = out.topk(k, dim=1).indices
            hit = top == y[:, None]
            sums += torch.tensor([torch.nn.functional.cross_entropy(out, y, reduction="sum").item(),
                                  hit[:, 0].sum().item(), hit.any(dim=1).sum().item(), len(y)],
                                 dtype=torch.float64, device=b.device)
        sums = b.all_reduce_sum(sums)
        n = max(sums[3].item(), 1.0)
        rec = {"split": "test", "epoch": self.state.epoch, "step": self.state.step, "loss": sums[0].item() / n,
               "top1_err": 100.0 * (1 - sums[1].item() / n), "top5_err": 100.0 * (1 - sums[2].item() / n)}
        self.metrics.write(rec)
        self.metrics.flush()
        return rec


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _flat_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    fa, fb = _flatten(a), _flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def run_training(recipe: Recipe, run_dir: str | None = None, resume: str = "auto", force: bool = False,
                 show_progress: bool = True) -> dict[str, Any]:
    trainer = Trainer(recipe, run_dir, resume, force, show_progress=show_progress).build()
    try:
        return {**trainer.fit(), "rank": trainer.backend.rank}
    finally:
        trainer.backend.close()
