"""Learning rate as a function of the global step: multiply by ``gamma`` at each epoch
milestone (the paper's stages), with an optional linear warmup. Stateless: the step count
in the trainer state is all a checkpoint needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from srsgd_train.optim.restart import stage_of_epoch


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    milestones: Sequence[int]
    gamma: float
    steps_per_epoch: int
    warmup_epochs: float = 0.0

    def lr_at(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        lr = self.base_lr * self.gamma ** stage_of_epoch(epoch, self.milestones)
        warmup_steps = int(self.warmup_epochs * self.steps_per_epoch)
        if step < warmup_steps:
            lr *= (step + 1) / warmup_steps
        return lr
