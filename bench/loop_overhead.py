"""Images/s of the srsgd-train training loop (the Trainer behind `srsgd-train run`)
against a bare hand-written torch loop on the same model, data, optimizer and restart
schedule, measured side by side in alternating rounds; prints medians and the ratio.

    python bench/loop_overhead.py [--steps 60] [--rounds 4] [--model preresnet20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from srsgd_train.data import build_datasets
from srsgd_train.metrics import read_metrics
from srsgd_train.models import build_model
from srsgd_train.optim import SRSGD, RestartSchedule
from srsgd_train.recipe import load_recipe
from srsgd_train.train import Trainer, restart_plan
from srsgd_train import rng


def recipe(args: argparse.Namespace, steps: int):
    return load_recipe("quickstart", [
        "data.name=synthetic", f"data.batch_size={args.batch}", f"data.train_samples={args.batch * steps}",
        "data.val_samples=64", "data.workers=0", f"model.name={args.model}", "schedule.epochs=1",
        "schedule.milestones=[]", "optimizer.restart.kind=constant", "optimizer.restart.period=40",
        f"run.log_every={args.log_every}", "run.tensorboard=false", "checkpoint.at_epoch_end=false",
    ])


def trainer_rate(args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as d:
        Trainer(recipe(args, args.steps), d, resume="none", show_progress=False).build().fit()
        rates = [r["images_per_sec"] for r in read_metrics(d) if "split" not in r]
    return statistics.median(rates[1:])  # the first interval includes warm-up


def bare_rate(args: argparse.Namespace) -> float:
    r = recipe(args, args.steps)
    rng.seed_everything(0)
    train, _, info = build_datasets(r.data)
    model = build_model(args.model, info["num_classes"], info["channels"], info["image_size"])
    opt = SRSGD(model.parameters(), lr=0.1, weight_decay=5e-4, restart_period=40)
    sched = RestartSchedule(opt, restart_plan(r, args.steps))
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch, shuffle=True, drop_last=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    rates, t0, seen = [], time.perf_counter(), 0
    for i, (x, y) in enumerate(loader, 1):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss.item()
        seen += x.shape[0]
        if i % args.log_every == 0:
            now = time.perf_counter()
            rates.append(seen / (now - t0))
            t0, seen = now, 0
    return statistics.median(rates[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--model", default="preresnet20")
    args = ap.parse_args()
    ours, bare = [], []
    for r in range(args.rounds):
        for kind in (("ours", "bare") if r % 2 == 0 else ("bare", "ours")):
            (ours if kind == "ours" else bare).append(trainer_rate(args) if kind == "ours" else bare_rate(args))
    o, b = statistics.median(ours), statistics.median(bare)
    print(f"{args.model}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"srsgd-train loop: {o:.1f} img/s; bare torch loop: {b:.1f} img/s; "
          f"ratio {o / b:.3f} (overhead {100 * (1 - o / b):+.1f}%)")


if __name__ == "__main__":
    main()
