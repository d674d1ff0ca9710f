"""DeepSpeed ZeRO stage 1/2 with SRSGD as the client optimizer.

DeepSpeed keeps each rank's shard of the fp32 master weights and of the SRSGD buffer in
one flat partition per param group, and steps our optimizer on it (in place, which SRSGD
guarantees). Checkpoints use DeepSpeed's native ``save_checkpoint`` inside our checkpoint
folder (the manifest covers its files; they are verified against it before DeepSpeed reads
them). DeepSpeed refuses to load ZeRO-1/2 optimizer shards on another data-parallel world
size; ``load_resharded`` does it for SRSGD: it concatenates the saved (unpadded) partitions
of the buffer and of the fp32 weights and cuts them anew for the current world size.
"""

from __future__ import annotations

import contextlib
import glob
import os
from typing import Any, Callable

import torch
from torch import nn

from srsgd_train.backends import Collectives, LocalBackend, require_launcher, state_bytes
from srsgd_train.errors import UserError

TAG = "deepspeed"


def _import_deepspeed():
    try:
        import deepspeed
    except ImportError:
        raise UserError("distributed.backend is 'deepspeed' but DeepSpeed is not installed: "
                        "pip install 'srsgd-train[deepspeed]'.") from None
    return deepspeed


class DeepSpeedBackend(Collectives, LocalBackend):
    native_checkpoint = True

    def __init__(self, recipe: Any) -> None:
        require_launcher("deepspeed", "`srsgd-train launch RECIPE --backend deepspeed --nproc N` (or deepspeed)")
        super().__init__(recipe)
        self.ds = _import_deepspeed()
        import torch.distributed as dist

        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.ds.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        self.dist = dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)  # DeepSpeed scales fp16 itself

    def setup(self, model: nn.Module, make_optimizer: Callable[[Any], Any]) -> tuple[nn.Module, Any]:
        r = self.recipe
        if r.optimizer.name == "arsgd":
            raise UserError("ARSGD needs the loss inside step(), which DeepSpeed does not pass; use ddp.")
        if r.optimizer.flat:
            raise UserError("optimizer.flat is not supported with DeepSpeed (ZeRO already keeps flat partitions).")
        self.raw_model = self.place_model(model)
        base = make_optimizer(self.raw_model.parameters())
        for g in base.param_groups:
            g.setdefault("step", 0)  # DeepSpeed's elastic restore expects a shared 'step' key
        world = self.world_size
        config = {
            "train_batch_size": r.data.batch_size,
            "train_micro_batch_size_per_gpu": r.data.batch_size // world,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": r.distributed.zero_stage, "elastic_checkpoint": True},
            "zero_allow_untested_optimizer": True,
            "gradient_clipping": r.train.grad_clip or 0.0,
            "bf16": {"enabled": r.train.precision == "bf16"},
            "fp16": {"enabled": r.train.precision == "fp16"},
            "steps_per_print": 10**9,
        }
        engine, zero_opt, _, _ = self.ds.initialize(model=self.raw_model, optimizer=base, config=config)
        self.engine, self.base_optimizer = engine, base
        self.model, self.optimizer = engine, zero_opt
        return self.model, self.optimizer

    # -- the step -------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DeepSpeed runs the module in bf16/fp16 itself

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return x.to(dtype) if dtype else x

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self, loss_value: float) -> bool:
        skipped = self.engine.skipped_steps
        self.engine.step()  # clips, steps SRSGD on this rank's partition, zeroes the grads
        return self.engine.skipped_steps == skipped  # fp16 overflow skips a step

    # -- state ----------------------------------------------------------------------------
    def model_state(self) -> dict[str, torch.Tensor]:
        return self.engine.module.state_dict()

    def optimizer_state(self) -> None:
        return None  # native shards instead

    def local_optimizer_state_bytes(self) -> int:
        return state_bytes(self.base_optimizer)

    def save_native(self, folder: str) -> None:
        self.engine.save_checkpoint(folder, tag=TAG, client_state={}, save_latest=False)

    def load_native(self, folder: str, saved_world_size: int) -> None:
        with _deepspeed_safe_globals():
            if saved_world_size == self.world_size:
                self.engine.load_checkpoint(folder, tag=TAG, load_optimizer_states=True,
                                            load_lr_scheduler_states=False)
            else:
                self.load_resharded(folder)

    def load_resharded(self, folder: str) -> None:
        """Load a checkpoint written on another data-parallel world size."""
        self.engine.load_checkpoint(folder, tag=TAG, load_module_only=True, load_optimizer_states=False,
                                    load_lr_scheduler_states=False)
        files = sorted(glob.glob(os.path.join(folder, TAG, "zero_pp_rank_*_mp_rank_00_optim_states.pt")),
                       key=lambda p: int(os.path.basename(p).split("_")[3]))
        shards = [torch.load(f, map_location="cpu", weights_only=True)["optimizer_state_dict"] for f in files]
        if any(any(any(p) for p in s.get("param_alignment_paddings", [])) for s in shards):
            raise UserError("This DeepSpeed checkpoint uses per-parameter alignment padding; resume it on its "
                            f"original world size ({len(shards)} ranks).")
        zero = self.optimizer
        rank = self.dist.get_rank()
        for g, part in enumerate(zero.single_partition_of_fp32_groups):
            size = part.numel()

            def cut(key: str | None) -> torch.Tensor:
                pieces = [s["single_partition_of_fp32_groups"][g] if key is None else s["base_optimizer_state"][g][key]
                          for s in shards]
                full = torch.cat([p.reshape(-1).float() for p in pieces])
                padded = torch.zeros(size * self.world_size, dtype=full.dtype)
                padded[: full.numel()] = full[: padded.numel()]
                return padded[rank * size:(rank + 1) * size].to(part.device)

            part.data.copy_(cut(None))
            self.base_optimizer.state[part]["momentum_buffer"] = cut("momentum_buffer")
        if hasattr(zero, "_link_all_hp_params"):  # what DeepSpeed's own optimizer-state load does last
            zero._link_all_hp_params()


@contextlib.contextmanager
def _deepspeed_safe_globals():
    """DeepSpeed's shard files hold its loss-scaler objects: allow exactly those classes
    (DeepSpeed itself reads them with weights_only=False; our manifest verified them first)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
        yield
