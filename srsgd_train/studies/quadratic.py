"""Section 2.6 / Figure 2: GD, momentum, NAG, adaptive- and scheduled-restart NAG on
f(x) = 1/2 x^T L x - x^T b, d = 1000, step 1/4, in float64.

L is the tridiagonal matrix (2 on the diagonal, -1 beside it). Eq. (9) as printed also has
-1 in the two corners; that matrix is singular (L 1 = 0) and b = e_1 is not orthogonal to
its kernel, so f would be unbounded below. Figure 2 comes from the tridiagonal one, whose
minimiser is known in closed form: x*_i = (d + 1 - i) / (d + 1), f* = -d / (2 (d + 1)).

Every method is a library optimizer, stepped like any training loop:
    gd        torch.optim.SGD (no momentum)
    momentum  srsgd_update with a constant mu = 0.9 (the look-ahead form, eq. 4)
    nag       NASGD (eq. 6, t from 1)
    arnag     ARSGD, restarting when f rises (eq. 7)
    srnag     SRSGD with a RestartSchedule (eq. 8)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from srsgd_train.optim import ARSGD, NASGD, SRSGD, RestartPlan, RestartSchedule, srsgd_update

METHODS = ("gd", "momentum", "nag", "arnag", "srnag")
NOTE = ("Uses the tridiagonal L (no corner entries): eq. (9) as printed has corners, which "
        "make L singular and f unbounded below; Figure 2 comes from the tridiagonal matrix.")


@dataclass(frozen=True)
class Oracle:
    name: str
    restart: Callable[[int], RestartPlan]
    noise_std: Callable[[int], float]


def _plan(iters: int, periods: tuple[int, ...], milestones: tuple[int, ...] = ()) -> RestartPlan:
    return RestartPlan(periods=periods, milestones=milestones, epochs=iters, steps_per_epoch=1,
                       restart_at_stage_start=False)


ORACLES = {
    "exact": Oracle("exact", lambda n: _plan(n, (1000,)), lambda t: 0.0),
    "constant-noise": Oracle("constant-noise", lambda n: _plan(n, (200,)), lambda t: 0.001),
    # restart every 200 iterations for the first 10k, every 400 after
    "decaying-noise": Oracle("decaying-noise",
                             lambda n: _plan(n, (200, 400), (10_000,)) if n > 10_000 else _plan(n, (200,)),
                             lambda t: 0.1 / (t // 100 + 1)),
}


class Quadratic:
    def __init__(self, d: int = 1000) -> None:
        self.d = d
        self.b = torch.zeros(d, dtype=torch.float64)
        self.b[0] = 1.0
        self.f_star = -d / (2.0 * (d + 1))

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        y = 2.0 * x
        y[1:] -= x[:-1]
        y[:-1] -= x[1:]
        return y

    def value(self, x: torch.Tensor) -> float:
        return float(0.5 * x.dot(self.matvec(x)) - x.dot(self.b))

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x) - self.b


class ConstantMomentum:
    """GD + constant look-ahead momentum (eq. 4), using the library's functional update."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float) -> None:
        self.params, self.lr, self.momentum = params, lr, momentum
        self.bufs = [p.detach().clone() for p in params]

    @torch.no_grad()
    def step(self) -> None:
        srsgd_update(self.params, [p.grad for p in self.params], self.bufs, lr=self.lr,
                     weight_decay=0.0, momentum=self.momentum)


def run_quadratic(oracle: str = "exact", iters: int = 50_000, d: int = 1000, seed: int = 0,
                  step_size: float = 0.25) -> dict[str, list[float]]:
    """Optimality gap f(x_k) - f* for k = 1..iters, per method."""
    spec = ORACLES[oracle]
    problem = Quadratic(d)
    gaps: dict[str, list[float]] = {}
    for name in METHODS:
        x = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
        schedule = None
        if name == "gd":
            opt = torch.optim.SGD([x], lr=step_size)
        elif name == "momentum":
            opt = ConstantMomentum([x], lr=step_size, momentum=0.9)
        elif name == "nag":
            opt = NASGD([x], lr=step_size)
        elif name == "arnag":
            opt = ARSGD([x], lr=step_size)
        else:
            opt = SRSGD([x], lr=step_size)
            schedule = RestartSchedule(opt, spec.restart(iters))
        noise = torch.Generator().manual_seed(seed)  # the same noise sequence for every method
        out = []
        with torch.no_grad():
            for t in range(iters):
                g = problem.grad(x)
                std = spec.noise_std(t)
                if std:
                    g += std * torch.randn(d, generator=noise, dtype=torch.float64)
                x.grad = g
                if name == "arnag":
                    opt.step(loss=problem.value(x))
                else:
                    opt.step()
                if schedule is not None:
                    schedule.step()
                out.append(problem.value(x) - problem.f_star)
        gaps[name] = out
    return gaps
