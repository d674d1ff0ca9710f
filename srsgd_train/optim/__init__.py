"""SRSGD and its restart schedules. Depends on torch only."""

from srsgd_train.optim.baselines import ARSGD, NASGD
from srsgd_train.optim.restart import (
    RestartPlan,
    RestartSchedule,
    exponential_periods,
    linear_periods,
    round_half_up,
)
from srsgd_train.optim.srsgd import SRSGD, momentum_of, next_iter_count, srsgd_update

__all__ = [
    "SRSGD", "NASGD", "ARSGD", "RestartPlan", "RestartSchedule", "linear_periods",
    "exponential_periods", "round_half_up", "momentum_of", "next_iter_count", "srsgd_update",
]
