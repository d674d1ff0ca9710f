"""Per-rank SRSGD optimizer-state bytes and step time for 1 and 2 ranks: local, DDP with
the buffer sharded by ZeroRedundancyOptimizer, and DeepSpeed ZeRO-1/2, run as real
launches of `srsgd-train` side by side, printed as ratios against one process.

    python bench/scaling.py [--steps 40] [--model preresnet20] [--ranks 2]    # CPU (gloo)
    python bench/scaling.py --model resnet50 --image-size 224 --batch 256 --ranks 8   # one 8-GPU node
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(kind: str, ranks: int, args: argparse.Namespace, root: Path) -> dict:
    run_dir = root / f"{kind}-{ranks}"
    overrides = [
        "data.name=synthetic", f"data.image_size={args.image_size}", f"data.batch_size={args.batch}",
        f"data.train_samples={args.batch * args.steps}", "data.val_samples=64", "data.workers=0",
        f"model.name={args.model}", "schedule.epochs=1", "schedule.milestones=[]", "run.log_every=5",
        "run.tensorboard=false", "optimizer.restart.kind=constant", "optimizer.restart.period=40",
    ]
    sets = [x for o in overrides for x in ("--set", o)]
    cmd = [sys.executable, "-m", "srsgd_train.cli"]
    if kind == "local":
        cmd += ["run", "quickstart", *sets, "--run-dir", str(run_dir), "--no-progress"]
    else:
        backend, stage = ("ddp", None) if kind == "ddp-zero" else ("deepspeed", kind[-1])
        cmd += ["launch", "quickstart", "--backend", backend, "--nproc", str(ranks), *sets, "--run-dir", str(run_dir)]
        if stage:
            cmd += ["--set", f"distributed.zero_stage={stage}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_sec"] for r in records if "split" not in r][1:]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    state = json.loads((run_dir / "checkpoints" / latest / "train_state.json").read_text())
    return {"kind": kind, "ranks": ranks, "images_per_sec": statistics.median(rates),
            "state_bytes": max(state["optimizer_state_bytes_per_rank"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--model", default="preresnet20")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--skip-deepspeed", action="store_true")
    args = ap.parse_args()
    kinds = [("local", 1), ("ddp-zero", 1), ("ddp-zero", args.ranks)]
    if not args.skip_deepspeed:
        kinds += [("deepspeed-zero1", args.ranks), ("deepspeed-zero2", args.ranks)]
    with tempfile.TemporaryDirectory() as d:
        results = [run(k, n, args, Path(d)) for k, n in kinds]
    base = results[0]
    print(f"{args.model}, global batch {args.batch}, {args.steps} steps, synthetic {args.image_size}px data")
    print(f"{'backend':18s} {'ranks':>5s} {'state MiB/rank':>15s} {'vs 1 process':>13s} {'img/s':>8s} {'vs 1 process':>13s}")
    for r in results:
        print(f"{r['kind']:18s} {r['ranks']:5d} {r['state_bytes'] / 2**20:15.2f} {r['state_bytes'] / base['state_bytes']:12.2f}x "
              f"{r['images_per_sec']:8.1f} {r['images_per_sec'] / base['images_per_sec']:12.2f}x")


if __name__ == "__main__":
    main()
