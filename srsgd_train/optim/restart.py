"""Restart-period schedules: which F SRSGD uses at every optimizer step.

The training run is split into LR stages by epoch milestones (the paper's I_i). Each stage
has a restart period F_i, given explicitly or by the paper's rules (section 4.1):

    linear:       F_{k+1} = F_1 * (1 + (r - 1) * k)
    exponential:  F_{k+1} = F_1 * r ** k

Rounding: round half up (``floor(x + 0.5)``), which reproduces Table 6 exactly
(CIFAR-10 exponential 40, 50, 62.5 -> 63, 78.125 -> 78; CIFAR-100 45, 67.5 -> 68, 101, 152).
Python's ``round`` (half to even) would give 62 and disagree with the paper.

ImageNet (Tables 7 and 8): ``decay_last_to=1`` makes F fall linearly, once per epoch, from
the last stage's F to 1 across that stage's epochs (80 at its first epoch, 1 at its last).

Every stage starts with a restart (c = 1) unless ``restart_at_stage_start=False``; when F
shrinks below the current c, the next step restarts too. A schedule is stepped once per
*applied* optimizer step (a step skipped by a grad scaler is not counted).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from srsgd_train.optim.srsgd import momentum_of, next_iter_count, set_phase, shared_iter_count


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def linear_periods(first: int, rate: float, num_stages: int) -> list[int]:
    return [round_half_up(first * (1 + (rate - 1) * k)) for k in range(num_stages)]


def exponential_periods(first: int, rate: float, num_stages: int) -> list[int]:
    return [round_half_up(first * rate**k) for k in range(num_stages)]


def stage_of_epoch(epoch: int, milestones: Sequence[int]) -> int:
    """LR stage index of a 0-based epoch: milestone m starts the next stage at epoch m."""
    return bisect.bisect_right(list(milestones), epoch)


@dataclass(frozen=True)
class RestartPlan:
    """Everything needed to know F at any step, without running anything."""

    periods: tuple[int, ...]          # F at the start of each LR stage
    milestones: tuple[int, ...]       # epochs where a new LR stage starts
    epochs: int
    steps_per_epoch: int
    decay_last_to: int | None = None  # ImageNet rule: F decays to this in the last stage
    restart_at_stage_start: bool = True
    counting: str = "paper"

    def __post_init__(self) -> None:
        if len(self.periods) != len(self.milestones) + 1:
            raise ValueError(
                f"need one restart period per LR stage: {len(self.milestones) + 1} stages, "
                f"got {len(self.periods)} periods"
            )
        if any((not isinstance(f, int)) or f < 1 for f in self.periods):
            raise ValueError(f"restart periods must be integers >= 1, got {list(self.periods)}")
        if self.steps_per_epoch < 1 or self.epochs < 1:
            raise ValueError("epochs and steps_per_epoch must be >= 1")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def stage_at(self, step: int) -> int:
        return stage_of_epoch(step // self.steps_per_epoch, self.milestones)

    def period_at(self, step: int) -> int:
        """F used by the optimizer step with 0-based index ``step``."""
        epoch = step // self.steps_per_epoch
        stage = stage_of_epoch(epoch, self.milestones)
        start_f = self.periods[stage]
        if self.decay_last_to is None or stage != len(self.milestones):
            return start_f
        first = self.milestones[-1] if self.milestones else 0
        n = self.epochs - first
        j = min(epoch - first, n - 1)
        if n <= 1:
            return self.decay_last_to
        return round_half_up(start_f + (self.decay_last_to - start_f) * j / (n - 1))

    def restarts_before(self, step: int, iter_count: int) -> int:
        """c to use for ``step`` given the counter the previous step left behind."""
        if step > 0 and self.restart_at_stage_start and self.stage_at(step) != self.stage_at(step - 1):
            return 1
        return 1 if iter_count > self.period_at(step) else iter_count

    def phase_at(self, step: int, start_iter_count: int = 1) -> tuple[int, int]:
        """(c, F) the optimizer must hold before taking step ``step`` (simulated)."""
        c = start_iter_count
        for k in range(step):
            c = next_iter_count(self.restarts_before(k, c), self.period_at(k), self.counting)
        return self.restarts_before(step, c), self.period_at(step)

    def table(self, start_iter_count: int = 1) -> "PlanTable":
        """Per-step LR stage, epoch, F, c and momentum for the whole run."""
        t = PlanTable()
        c = start_iter_count
        for k in range(self.total_steps):
            f = self.period_at(k)
            c = self.restarts_before(k, c)
            t.step.append(k)
            t.epoch.append(k // self.steps_per_epoch)
            t.stage.append(self.stage_at(k))
            t.period.append(f)
            t.iter_count.append(c)
            t.momentum.append(momentum_of(c))
            c = next_iter_count(c, f, self.counting)
        return t


@dataclass
class PlanTable:
    step: list[int] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    stage: list[int] = field(default_factory=list)
    period: list[int] = field(default_factory=list)
    iter_count: list[int] = field(default_factory=list)
    momentum: list[float] = field(default_factory=list)

    def restarts(self) -> list[int]:
        """Steps at which c returns to 1 (the first step included)."""
        return [s for s, c in zip(self.step, self.iter_count) if c == 1]


class RestartSchedule:
    """Stateful restart schedule, stepped once per applied optimizer step (like a torch LR
    scheduler). Sets F (and c on restarts) on every param group of an SRSGD optimizer, or
    of a wrapper around one (ZeroRedundancyOptimizer, DeepSpeed): only ``param_groups``
    is used."""

    def __init__(self, optimizer: Any, plan: RestartPlan) -> None:
        self.optimizer = optimizer
        self.plan = plan
        self.applied_steps = 0
        self._apply()

    def _apply(self) -> None:
        c = self.plan.restarts_before(self.applied_steps, self.iter_count)
        set_phase(self.optimizer.param_groups, iter_count=c, restart_period=self.plan.period_at(self.applied_steps))

    def step(self) -> None:
        self.applied_steps += 1
        self._apply()

    @property
    def iter_count(self) -> int:
        return shared_iter_count(self.optimizer.param_groups)

    @property
    def period(self) -> int:
        return self.plan.period_at(self.applied_steps)

    @property
    def stage(self) -> int:
        return self.plan.stage_at(self.applied_steps)

    def steps_to_next_restart(self) -> int:
        c = self.iter_count
        for k in range(self.applied_steps, self.plan.total_steps):
            if k > self.applied_steps and self.plan.restarts_before(k, c) == 1:
                return k - self.applied_steps
            c = next_iter_count(self.plan.restarts_before(k, c), self.plan.period_at(k), self.plan.counting)
        return self.plan.total_steps - self.applied_steps

    def state_dict(self) -> dict[str, Any]:
        return {"applied_steps": self.applied_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.applied_steps = int(state["applied_steps"])
        # F follows from the step; c was restored with the optimizer. Re-apply F only.
        set_phase(self.optimizer.param_groups, restart_period=self.plan.period_at(self.applied_steps))
