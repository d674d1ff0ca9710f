"""The paper's comparison optimizers, in SRSGD's API style.

NASGD: NAG momentum (k - 1) / (k + 2) with stochastic gradients, never restarted (eq. 6).
ARSGD: adaptive restart (eq. 7, section 3.1): the counter returns to 1 whenever the
mini-batch loss rises above the previous one. Pass the loss to ``step(loss=...)`` or use a
closure. SGD and SGD + momentum are ``torch.optim.SGD``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from srsgd_train.optim.srsgd import SRSGD


class NASGD(SRSGD):
    def __init__(self, params: Iterable[Any], lr: float = 0.1, weight_decay: float = 0.0, **kwargs: Any):
        super().__init__(params, lr=lr, weight_decay=weight_decay, restart_period=None, **kwargs)


class ARSGD(SRSGD):
    """Adaptive-restart SGD. ``m(k) = m(k-1) + 1`` if ``f(w_k) <= f(w_{k-1})`` else 1."""

    def __init__(self, params: Iterable[Any], lr: float = 0.1, weight_decay: float = 0.0, **kwargs: Any):
        super().__init__(params, lr=lr, weight_decay=weight_decay, restart_period=None, **kwargs)
        for group in self.param_groups:
            group.setdefault("last_loss", None)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, loss: Any = None) -> Any:
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if loss is None:
            raise ValueError("ARSGD needs the mini-batch loss: call step(loss=loss) or pass a closure")
        value = float(loss)
        for group in self.param_groups:
            last = group.get("last_loss")
            if last is not None and value > last:
                group["iter_count"] = 1  # the loss rose: restart before this step
            group["last_loss"] = value
        super().step()
        return loss
