"""Backends hide what differs between one process and many: device placement, gradient
all-reduce, optimizer sharding and how state is gathered for a checkpoint.

    local   one process, CPU or one GPU
    ddp     DistributedDataParallel; SRSGD sharded with ZeroRedundancyOptimizer
            (checkpoints hold the consolidated optimizer state: any world size can load it)
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Callable

import torch
from torch import nn

from srsgd_train.errors import UserError


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'.")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class LocalBackend:
    rank = 0
    world_size = 1
    native_checkpoint = False  # True: the engine writes its own (sharded) files

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe
        self.device = pick_device(recipe.train.device, int(os.environ.get("LOCAL_RANK", 0)))
        self.precision = recipe.train.precision
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.model: nn.Module | None = None
        self.optimizer: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- setup --------------------------------------------------------------------------
    def place_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.recipe.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def setup(self, model: nn.Module, make_optimizer: Callable[[Any], Any]) -> tuple[nn.Module, Any]:
        self.raw_model = self.place_model(model)
        self.model = self.wrap(self.raw_model)
        self.optimizer = self.build_optimizer(make_optimizer)
        if self.recipe.train.compile:
            self.model = torch.compile(self.model)
        return self.model, self.optimizer

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def build_optimizer(self, make_optimizer: Callable[[Any], Any]) -> Any:
        return make_optimizer(self.raw_model.parameters())

    # -- the step -----------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def backward(self, loss: torch.Tensor) -> None:
        # drop the previous step's gradients only now, after the forward pass: backward then
        # reuses their memory block for block (freeing them before the forward lets the
        # activations take those blocks, and large new gradients come from fresh pages)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()

    def step(self, loss_value: float) -> bool:
        """Clip, step, update the scaler. Returns False when fp16 overflow skipped the step."""
        clip = self.recipe.train.grad_clip
        if clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        kwargs = {"loss": loss_value} if _wants_loss(self.optimizer) else {}
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer, **kwargs)
            self.scaler.update()
            applied = self.scaler.get_scale() >= scale  # the scale drops only on a skip
        else:
            self.optimizer.step(**kwargs)
            applied = True
        return applied

    # -- collectives (trivial here) -----------------------------------------------------
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass

    # -- state --------------------------------------------------------------------------
    def model_state(self) -> dict[str, torch.Tensor]:
        return self.raw_model.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.raw_model.load_state_dict(state)

    def local_optimizer_state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds (its shard, when sharded)."""
        return state_bytes(getattr(self.optimizer, "optim", self.optimizer))  # ZeRO wraps one

    def optimizer_state(self) -> dict[str, Any] | None:
        """Full optimizer state on the main rank (None elsewhere)."""
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

    def close(self) -> None:
        pass


def require_launcher(backend: str, how: str) -> None:
    """Multi-process backends need the RANK/WORLD_SIZE environment a launcher sets."""
    if "RANK" not in os.environ:
        raise UserError(f"distributed.backend is '{backend}' but this process was not started by a "
                        f"launcher. Use {how} to start the ranks.")


def state_bytes(optimizer: Any) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if isinstance(t, torch.Tensor))


class Collectives:
    """torch.distributed collectives for the multi-process backends (``self.dist``)."""

    dist: Any
    world_size: int

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        self.dist.all_reduce(t)
        return t

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
        # every rank must be done with every collective before the process group goes:
        # tearing down gloo while a peer still talks to it aborts the process
        if self.dist.is_initialized():
            self.dist.barrier()
            self.dist.destroy_process_group()


def _wants_loss(optimizer: Any) -> bool:
    from srsgd_train.optim import ARSGD

    inner = getattr(optimizer, "optim", optimizer)
    return isinstance(inner, ARSGD)


class DDPBackend(Collectives, LocalBackend):
    """torchrun-launched DistributedDataParallel; gloo on CPU, NCCL on GPU."""

    def __init__(self, recipe: Any) -> None:
        import torch.distributed as dist

        require_launcher("ddp", "`srsgd-train launch RECIPE --nproc N` (or torchrun)")
        super().__init__(recipe)
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        self.dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def build_optimizer(self, make_optimizer: Callable[[Any], Any]) -> Any:
        if not self.recipe.distributed.shard_optimizer:
            return make_optimizer(self.raw_model.parameters())
        from torch.distributed.optim import ZeroRedundancyOptimizer

        probe = make_optimizer([torch.nn.Parameter(torch.zeros(1))])  # to learn class and settings
        if getattr(probe, "flat", None) is not None:
            raise UserError("optimizer.flat is not supported with sharded DDP; set distributed.shard_optimizer=false.")
        return ZeroRedundancyOptimizer(
            list(self.raw_model.parameters()), optimizer_class=type(probe), **_ctor_kwargs(probe)
        )

    def optimizer_state(self) -> dict[str, Any] | None:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        if isinstance(self.optimizer, ZeroRedundancyOptimizer):
            self.optimizer.consolidate_state_dict(to=0)  # collective: every rank takes part
        return self.optimizer.state_dict() if self.rank == 0 else None




def _ctor_kwargs(probe: Any) -> dict[str, Any]:
    """Constructor arguments to rebuild ``probe``'s optimizer class with the same settings."""
    d = dict(probe.defaults)
    if isinstance(probe, torch.optim.SGD):
        keys = ("lr", "momentum", "weight_decay", "nesterov")
    else:
        keys = ("lr", "weight_decay", "restart_period", "iter_count", "counting", "impl")
        if type(probe).__name__ in ("NASGD", "ARSGD"):
            keys = ("lr", "weight_decay", "iter_count", "counting", "impl")
    return {k: d[k] for k in keys if k in d}


def build_backend(recipe: Any) -> LocalBackend:
    kind = recipe.distributed.backend
    if kind == "local":
        return LocalBackend(recipe)
    if kind == "ddp":
        return DDPBackend(recipe)
    from srsgd_train.deepspeed_backend import DeepSpeedBackend

    return DeepSpeedBackend(recipe)
