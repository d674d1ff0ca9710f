"""SRSGD: Scheduled Restart SGD (Wang et al., eq. 10), depending on torch only.

    v_{k+1} = w_k - lr * (g_k + wd * w_k)
    w_{k+1} = v_{k+1} + mu_k * (v_{k+1} - v_k),     mu_k = (c - 1) / (c + 2)

``c`` (``iter_count``) counts steps since the last restart. It lives in every param group
and advances inside ``step()``'s group loop, so that all groups share one phase even when a
wrapper (DeepSpeed ZeRO) calls ``step()`` once per group with only that group visible.

Counting. ``counting="paper"`` (default) restarts every ``F`` steps as eq. (8)/(10) say:
``c`` runs 1..F. ``counting="reference"`` reproduces the Appendix F code, where
``update_iter`` resets once ``c >= F``, so ``c`` runs 1..F-1 (period F-1).

Implementations (same maths, same results to fp32 rounding): ``impl="auto"`` (default)
picks foreach for CUDA tensors and single on CPU, as torch's own optimizers do;
``impl="foreach"`` (grouped by device and dtype like ``torch.optim.SGD``, the same
number of memory passes and one parameter-sized temporary per step, as SGD with weight
decay), ``impl="single"`` (a loop over tensors) and ``impl="fused"`` (a ``torch.compile``-d
program that reads p, g, v once and writes p, v once; lr, wd and mu are 0-d tensors, so a
new value does not recompile). ``flat=True`` keeps each group's parameters, gradients and
buffers in one contiguous tensor per device/dtype and updates it in cache-sized chunks
without temporaries, which removes the per-tensor overhead that dominates for models with
thousands of small tensors (Pre-ResNet-1001). See ``bench/optimizer_step.py``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer

from srsgd_train.optim.flat import FlatStorage

IMPLS = ("auto", "foreach", "single", "fused")
COUNTINGS = ("paper", "reference")


def momentum_of(iter_count: int) -> float:
    """NAG momentum for restart counter ``c``: (c - 1) / (c + 2); 0 right after a restart."""
    return (iter_count - 1.0) / (iter_count + 2.0)


def next_iter_count(iter_count: int, period: int | None, counting: str = "paper") -> int:
    """The counter after one applied step with restart period ``period`` (None: never)."""
    nxt = iter_count + 1
    if period is None:
        return nxt
    if counting == "reference":
        return 1 if nxt >= period else nxt
    return 1 if nxt > period else nxt


def shared_iter_count(param_groups: list[dict[str, Any]]) -> int:
    """The restart counter c that every param group holds (raises if they disagree)."""
    counts = {g["iter_count"] for g in param_groups}
    if len(counts) != 1:
        raise RuntimeError(f"param groups disagree on iter_count: {sorted(counts)}")
    return counts.pop()


def set_phase(param_groups: list[dict[str, Any]], iter_count: int | None = None,
              restart_period: int | None | str = "keep") -> None:
    """Set c and/or F on every group. Works on any optimizer-like object's ``param_groups``
    (SRSGD itself, or a wrapper such as ZeroRedundancyOptimizer or DeepSpeed's)."""
    if iter_count is not None:
        _check_positive_int("iter_count", iter_count)
    if restart_period != "keep":
        _check_positive_int("restart_period", restart_period, allow_none=True)
    for group in param_groups:
        if iter_count is not None:
            group["iter_count"] = iter_count
        if restart_period != "keep":
            group["restart_period"] = restart_period


def _check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class SRSGD(Optimizer):
    """Scheduled Restart SGD.

    Args:
        params: parameters or param-group dicts.
        lr: learning rate (> 0).
        weight_decay: L2 penalty added to the gradient (>= 0); ``.grad`` is never modified.
        restart_period: F, steps between restarts (>= 1); ``None`` never restarts (NAG).
        iter_count: starting value of the restart counter c (>= 1).
        counting: ``"paper"`` (period F) or ``"reference"`` (Appendix F code, period F-1).
        impl: ``"auto"`` (default: foreach for CUDA tensors, single on CPU, as torch's
            optimizers choose) | ``"foreach"`` | ``"single"`` | ``"fused"``; ``foreach=True/False``
            are aliases of ``impl="foreach"/"single"`` for torch-style call sites.
        flat: keep parameters/gradients/buffers in flat per-group storage.

    Example::

        opt = SRSGD(model.parameters(), lr=0.1, weight_decay=5e-4, restart_period=40)
        loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        weight_decay: float = 0.0,
        restart_period: int | None = 40,
        iter_count: int = 1,
        counting: str = "paper",
        foreach: bool | None = None,
        impl: str | None = None,
        flat: bool = False,
    ) -> None:
        if not isinstance(lr, (int, float)) or not lr > 0.0 or not math.isfinite(lr):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        _check_positive_int("restart_period", restart_period, allow_none=True)
        _check_positive_int("iter_count", iter_count)
        if counting not in COUNTINGS:
            raise ValueError(f"counting must be one of {COUNTINGS}, got {counting!r}")
        if impl is None:
            impl = {None: "auto", False: "single", True: "foreach"}[foreach]
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        defaults = dict(
            lr=lr, weight_decay=weight_decay, restart_period=restart_period,
            iter_count=iter_count, counting=counting, impl=impl,
        )
        super().__init__(params, defaults)
        self.flat: FlatStorage | None = FlatStorage(self.param_groups) if flat else None

    # -- phase helpers --------------------------------------------------------------
    @property
    def iter_count(self) -> int:
        """The shared restart counter c (asserts that every group agrees)."""
        return shared_iter_count(self.param_groups)

    def set_phase(self, iter_count: int | None = None, restart_period: int | None | str = "keep") -> None:
        """Set c and/or F on every group (used by restart schedules and on resume)."""
        set_phase(self.param_groups, iter_count, restart_period)

    def _advance(self, group: dict[str, Any]) -> None:
        group["iter_count"] = next_iter_count(
            group["iter_count"], group["restart_period"], group["counting"]
        )

    # -- the step -------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.flat is not None:
            self.flat.zero_grad()  # keep grads as views into the flat buffer
            return
        super().zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            mu = momentum_of(group["iter_count"])
            lr, wd = group["lr"], group["weight_decay"]
            if self.flat is not None and self.flat.owns(group):
                self.flat.step(group, self.state, lr, wd, mu)
            else:
                params, grads, bufs = self._init_group(group)
                if params:
                    srsgd_update(params, grads, bufs, lr=lr, weight_decay=wd, momentum=mu, impl=group["impl"])
                    for p, v in zip(params, bufs):  # foreach/single put v_{k+1} in a new tensor
                        self.state[p]["momentum_buffer"] = v
            self._advance(group)
        return loss

    def _init_group(self, group: dict[str, Any]) -> tuple[list, list, list]:
        params, grads, bufs = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("SRSGD does not support sparse gradients; use dense gradients")
            state = self.state[p]
            if "momentum_buffer" not in state:  # v_0 = w_0
                state["momentum_buffer"] = p.detach().clone(memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            bufs.append(state["momentum_buffer"])
        return params, grads, bufs

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.flat is not None:
            self.flat.adopt_loaded_buffers(self.param_groups, self.state)


def srsgd_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    impl: str = "auto",
) -> None:
    """Functional SRSGD step. Updates ``params`` in place. ``impl="fused"`` writes v_{k+1}
    into ``bufs`` in place; the other impls form v_{k+1} in one new tensor (as SGD's
    weight-decay temporary) and put it into the list ``bufs``, replacing v_k."""
    if impl == "auto":
        impl = _unfused_default(params)
    if impl == "fused":
        from srsgd_train.optim.fused import fused_srsgd_

        if fused_srsgd_(params, grads, bufs, lr=lr, weight_decay=weight_decay, momentum=momentum):
            return
        impl = _unfused_default(params)
    if impl == "foreach":
        _foreach_srsgd(params, grads, bufs, lr, weight_decay, momentum)
        return
    _single_tensor_srsgd(params, grads, bufs, lr, weight_decay, momentum)


# Both paths below make 11 passes over memory with weight decay (8 without) and allocate
# one parameter-sized tensor per step, like torch.optim.SGD's foreach path:
#   d = g + wd * p            (new tensor; later becomes the buffer v_{k+1})
#   p = p - lr * d            (p now holds v_{k+1})
#   d <- p                    (d holds v_{k+1})
#   p = p + mu * (p - v_k)    (lerp towards v_k with weight -mu: p = w_{k+1})
# and v_k's tensor is released. Without weight decay, d starts as p - lr * g.


def _unfused_default(params: list[torch.Tensor]) -> str:
    """CPU: one tensor at a time stays in cache across its ops; GPU: foreach, fewer launches."""
    return "foreach" if all(p.is_cuda for p in params) else "single"


def _single_tensor_srsgd(params, grads, bufs, lr, wd, mu) -> None:
    for i, (p, g, v_old) in enumerate(zip(params, grads, bufs)):
        if wd != 0.0:
            d = torch.add(g, p, alpha=wd)
            p.add_(d, alpha=-lr)
            d.copy_(p)
        else:
            d = torch.add(p, g, alpha=-lr)
            p.copy_(d)
        p.lerp_(v_old, -mu)
        bufs[i] = d


def _foreach_srsgd(params, grads, bufs, lr, wd, mu) -> None:
    from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

    grouped = _group_tensors_by_device_and_dtype([params, grads, bufs], with_indices=True)
    for (_device, _dtype), ((ps, gs, vs), idx) in grouped.items():
        if wd != 0.0:
            ds = torch._foreach_add(gs, ps, alpha=wd)
            torch._foreach_add_(ps, ds, alpha=-lr)
            torch._foreach_copy_(ds, ps)
        else:
            ds = torch._foreach_add(ps, gs, alpha=-lr)
            torch._foreach_copy_(ps, ds)
        torch._foreach_lerp_(ps, vs, -mu)
        for i, d in zip(idx, ds):
            bufs[i] = d
