"""`srsgd-train compare`: several runs side by side. Overlays training loss and test error,
marks restart points, and tabulates final/best test error and how soon each run reaches
the baseline's final error (the baseline is the first run that used SGD, else the first)."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

import fsspec
import yaml

from srsgd_train.errors import UserError
from srsgd_train.metrics import read_metrics
from srsgd_train.recipe import recipe_from_dict


def load_run(run_dir: str) -> dict[str, Any]:
    fs, root = fsspec.core.url_to_fs(run_dir)
    recipe_path = posixpath.join(root, "recipe.resolved.yaml")
    records = read_metrics(run_dir)
    if not records or not fs.exists(recipe_path):
        raise UserError(f"{run_dir} is not a run directory (it needs metrics.jsonl and recipe.resolved.yaml).")
    recipe = recipe_from_dict(yaml.safe_load(fs.cat_file(recipe_path)), recipe_path)
    train = [r for r in records if "split" not in r]
    evals = [r for r in records if r.get("split") == "test"]
    # restart points: from the logged counter when every step is logged, else the plan
    if recipe.optimizer.name == "srsgd" and train and evals and recipe.run.log_every > 1:
        from srsgd_train.train import restart_plan

        spe = evals[0]["step"] // max(evals[0]["epoch"], 1)
        plan = restart_plan(recipe, spe)
        last = train[-1]["step"]
        restarts = [s + 1 for s in plan.table().restarts() if s < last]
    else:
        restarts = [r["step"] for r in train if r.get("iter_count") == 1]
    return {"dir": run_dir, "name": Path(root).name, "recipe": recipe, "train": train, "evals": evals,
            "restarts": restarts}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    baseline = next((r for r in runs if r["recipe"].optimizer.name == "sgd"), runs[0])
    target = baseline["evals"][-1]["top1_err"] if baseline["evals"] else None
    rows = []
    for r in runs:
        errs = [(e["epoch"], e["top1_err"]) for e in r["evals"]]
        reach = next((ep for ep, err in errs if target is not None and err <= target), None)
        rows.append({
            "run": r["name"], "optimizer": r["recipe"].optimizer.name,
            "final_top1_err": errs[-1][1] if errs else None,
            "best_top1_err": min(e for _, e in errs) if errs else None,
            "epochs_to_baseline": reach, "baseline": baseline["name"],
            "final_train_loss": r["train"][-1]["loss"] if r["train"] else None,
        })
    return rows


def plot_runs(runs: list[dict[str, Any]], out: Path) -> None:
    from srsgd_train.studies.plotting import pyplot

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8))
    for i, r in enumerate(runs):
        color = f"C{i}"
        steps = [t["step"] for t in r["train"]]
        ax1.semilogy(steps, [t["loss"] for t in r["train"]], color=color, linewidth=0.8,
                     label=f"{r['name']} ({r['recipe'].optimizer.name})")
        marks = r["restarts"][:: max(1, len(r["restarts"]) // 200)]  # a readable number of ticks
        if marks:
            ax1.plot(marks, [ax1.get_ylim()[0]] * len(marks), "|", color=color, markersize=8, alpha=0.6)
        ax2.plot([e["epoch"] for e in r["evals"]], [e["top1_err"] for e in r["evals"]], "o-", color=color,
                 label=r["name"])
    ax1.set_xlabel("step (ticks at the bottom: momentum restarts)")
    ax1.set_ylabel("training loss")
    ax1.legend()
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test top-1 error (%)")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
