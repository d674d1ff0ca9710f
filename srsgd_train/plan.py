"""The whole LR / restart plan of a recipe, computed without data or a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srsgd_train.lr_schedule import LRSchedule
from srsgd_train.optim import RestartPlan
from srsgd_train.recipe import Recipe

TRAIN_SIZES = {"digits": 1437, "cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167}


def steps_per_epoch(recipe: Recipe) -> int:
    n = TRAIN_SIZES.get(recipe.data.name, recipe.data.train_samples)
    return max(1, n // recipe.data.batch_size)


def build_plan(recipe: Recipe, spe: int | None = None) -> RestartPlan:
    from srsgd_train.train import restart_plan

    spe = spe or steps_per_epoch(recipe)
    if recipe.optimizer.name != "srsgd":  # no restarts: one "period" the length of the run
        s = recipe.schedule
        return RestartPlan(periods=(s.epochs * spe,) * (len(s.milestones) + 1), milestones=tuple(s.milestones),
                           epochs=s.epochs, steps_per_epoch=spe)
    return restart_plan(recipe, spe)


def stage_rows(recipe: Recipe, plan: RestartPlan) -> list[tuple[Any, ...]]:
    s = recipe.schedule
    lr = LRSchedule(recipe.optimizer.lr, s.milestones, s.gamma, plan.steps_per_epoch, s.warmup_epochs)
    bounds = [0, *s.milestones, s.epochs]
    table = plan.table() if recipe.optimizer.name == "srsgd" else None
    rows = []
    for i in range(len(bounds) - 1):
        a, b = bounds[i], bounds[i + 1]
        first, last = a * plan.steps_per_epoch, b * plan.steps_per_epoch - 1
        if table is None:
            f, restarts = "-", "-"
        else:
            f0, f1 = plan.period_at(first), plan.period_at(last)
            f = str(f0) if f0 == f1 else f"{f0} -> {f1} (linear, per epoch)"
            restarts = sum(1 for c in table.iter_count[first:last + 1] if c == 1)
        rows.append((i + 1, f"{a}-{b}", f"{first}-{last}", f"{lr.lr_at(first):.4g}", f, restarts))
    return rows


def plot_plan(recipe: Recipe, plan: RestartPlan, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = recipe.schedule
    lr = LRSchedule(recipe.optimizer.lr, s.milestones, s.gamma, plan.steps_per_epoch, s.warmup_epochs)
    stride = max(1, plan.total_steps // 20000)  # a plot needs no more points than pixels
    steps = list(range(0, plan.total_steps, stride))
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8))
    ax1.semilogy(steps, [lr.lr_at(k) for k in steps])
    ax1.set_ylabel("learning rate")
    ax1.set_title(f"{recipe.name}: LR, restart period and momentum per step")
    ax1.set_xlabel("optimizer step")
    if recipe.optimizer.name == "srsgd":
        t = plan.table()
        ax2.plot(steps, [plan.period_at(k) for k in steps])
        ax2.set_ylabel("restart period F")
        ax2.set_xlabel("optimizer step")
        # the saw-tooth is unreadable over a whole run: show the start of every stage
        window = min(plan.steps_per_epoch * 2, 3 * max(plan.periods))
        starts = [m * plan.steps_per_epoch for m in (0, *plan.milestones)]
        for s0 in starts:
            ks = range(s0, min(s0 + window, plan.total_steps))
            ax3.plot([k - s0 for k in ks], [t.momentum[k] for k in ks], label=f"from step {s0}")
        ax3.legend(fontsize=8)
        ax3.set_xlabel("steps into the LR stage")
        ax3.set_ylabel("momentum (c-1)/(c+2)")
    else:
        for ax in (ax2, ax3):
            ax.plot(steps, [recipe.optimizer.momentum] * len(steps))
            ax.set_ylabel("momentum")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
