"""Checkpoint save/load throughput: srsgd-train's verified checkpoint (files + sha256
manifest + atomic latest pointer) against a plain torch.save / torch.load of the same state
to the same disk, side by side in interleaved rounds; prints medians and ratios.

    python bench/checkpoint_io.py [--model resnet50] [--rounds 5] [--dir /tmp/ckpt-bench]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from srsgd_train import SRSGD
from srsgd_train.checkpoint import CheckpointStore
from srsgd_train.models import build_model


def make_state(model_name: str) -> tuple[dict, dict]:
    model = build_model(model_name, num_classes=1000)
    opt = SRSGD(model.parameters(), lr=0.1, restart_period=40)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # creates the momentum buffers
    return model.state_dict(), opt.state_dict()


def ours_save(store: CheckpointStore, step: int, model_state: dict, optim_state: dict) -> None:
    folder = store.begin(step)
    entries = [store.write_object(folder, "model.pt", model_state),
               store.write_object(folder, "optim.pt", optim_state)]
    store.commit(folder, step, entries, {"world_size": 1})


def ours_load(store: CheckpointStore) -> tuple[dict, dict]:
    ckpt = store.open(store.candidates()[0], verify=False)  # each load verifies its file
    return ckpt.load("model.pt"), ckpt.load("optim.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="ckpt-bench-"))
    model_state, optim_state = make_state(args.model)
    nbytes = sum(t.numel() * t.element_size() for t in model_state.values())
    nbytes += sum(t.numel() * t.element_size() for s in optim_state["state"].values() for t in s.values())
    store = CheckpointStore(str(root / "run"), keep=2)
    plain = root / "plain.pt"
    t = {"ours save": [], "plain save": [], "ours load": [], "plain load": []}
    for r in range(args.rounds):
        for kind in (["ours", "plain"] if r % 2 == 0 else ["plain", "ours"]):
            t0 = time.perf_counter()
            if kind == "ours":
                ours_save(store, r, model_state, optim_state)
            else:
                torch.save({"model": model_state, "optim": optim_state}, plain)
            t[f"{kind} save"].append(time.perf_counter() - t0)
        for kind in (["ours", "plain"] if r % 2 == 0 else ["plain", "ours"]):
            t0 = time.perf_counter()
            if kind == "ours":
                ours_load(store)
            else:
                torch.load(plain, weights_only=True)
            t[f"{kind} load"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f"{args.model} + SRSGD state: {nbytes / 2**20:.0f} MiB, {args.rounds} rounds, {root}")
    for op in ("save", "load"):
        ours, base = med[f"ours {op}"], med[f"plain {op}"]
        print(f"{op}: ours {nbytes / ours / 2**30:.2f} GiB/s ({ours * 1e3:.0f} ms), plain torch "
              f"{nbytes / base / 2**30:.2f} GiB/s ({base * 1e3:.0f} ms); throughput ratio ours/plain = {base / ours:.2f}x")
    if args.dir is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
