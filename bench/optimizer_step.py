"""Time per optimizer step: every SRSGD path against torch.optim.SGD(momentum=0.9)
(foreach and fused) and the paper's reference code, on the parameter sets of torchvision
ResNet-50 (161 tensors) and Pre-ResNet-1001 (3,005 small tensors).

Measured side by side: each round times every contender once, in a shuffled order, with
the caches flushed in between; medians over rounds. Also: achieved GB/s against the
20 bytes/parameter/step lower bound (read p, g, v; write p, v in fp32), next to this
machine's in-place axpy bandwidth, and bytes allocated per step (torch profiler).

    python bench/optimizer_step.py [--rounds 15] [--device cpu|cuda] [--models resnet50,preresnet1001]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from srsgd_train import SRSGD
from srsgd_train.models import build_model
from srsgd_train.optim.reference import ReferenceSRSGD


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_params(model_name: str, device: torch.device) -> list[torch.nn.Parameter]:
    model = build_model(model_name, num_classes=1000 if model_name.startswith("resnet") else 10)
    params = [torch.nn.Parameter(p.detach().to(device)) for p in model.parameters()]
    g = torch.Generator(device="cpu").manual_seed(0)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 1e-3).to(device)
    return params


CONTENDERS = {
    "sgd foreach": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True),
    "sgd fused": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True),
    "reference (App. F)": lambda ps: ReferenceSRSGD(ps, lr=0.1, weight_decay=1e-4, restarting_iter=40, paper_decay_sign=True),
    "srsgd single": lambda ps: SRSGD(ps, lr=0.1, weight_decay=1e-4, restart_period=40, impl="single"),
    "srsgd auto (default)": lambda ps: SRSGD(ps, lr=0.1, weight_decay=1e-4, restart_period=40),
    "srsgd foreach": lambda ps: SRSGD(ps, lr=0.1, weight_decay=1e-4, restart_period=40, impl="foreach"),
    "srsgd fused (single pass)": lambda ps: SRSGD(ps, lr=0.1, weight_decay=1e-4, restart_period=40, impl="fused"),
    "srsgd flat": lambda ps: SRSGD(ps, lr=0.1, weight_decay=1e-4, restart_period=40, flat=True),
    "srsgd flat + fused": lambda ps: SRSGD(ps, lr=0.1, weight_decay=1e-4, restart_period=40, flat=True, impl="fused"),
}


def axpy_bandwidth(n: int, device: torch.device, rounds: int) -> float:
    a, b = torch.randn(n, device=device), torch.randn(n, device=device)
    times = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        a.add_(b, alpha=1e-3)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 12 * n / statistics.median(times) / 1e9  # read a, read b, write a


def allocated_per_step(opt: torch.optim.Optimizer) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())


def bench_model(model_name: str, device: torch.device, rounds: int) -> None:
    flush = torch.empty(64 * 2**20 // 4, device=device)
    setups = {}
    for name, make in CONTENDERS.items():
        params = make_params(model_name, device)
        try:
            opt = make(params)
            for _ in range(3):  # warm-up (compilation, buffer creation)
                opt.step()
        except (RuntimeError, TypeError) as e:
            print(f"  {name}: unavailable here ({str(e).splitlines()[0][:80]})")
            continue
        setups[name] = opt
    n = sum(p.numel() for p in make_params(model_name, device))
    tensors = len(make_params(model_name, device))
    times: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(rounds):
        order = list(setups)
        random.shuffle(order)
        for name in order:
            flush.fill_(1.0)  # evict the previous contender's tensors from cache
            sync(device)
            t0 = time.perf_counter()
            setups[name].step()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    bw = axpy_bandwidth(n, device, rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{model_name}: {n / 1e6:.1f}M parameters in {tensors} tensors, {device}, {rounds} rounds")
    print(f"in-place axpy bandwidth: {bw:.1f} GB/s")
    print(f"{'contender':28s} {'median ms':>10s} {'vs sgd foreach':>15s} {'vs sgd fused':>13s} "
          f"{'GB/s (20 B/param)':>18s} {'% axpy bw':>10s} {'alloc MB/step':>14s}")
    for name, t in med.items():
        ach = 20 * n / t / 1e9
        vs_fused = f"{t / med['sgd fused']:.2f}x" if "sgd fused" in med else "-"
        alloc = allocated_per_step(setups[name]) / 2**20 if device.type == "cpu" else float("nan")
        print(f"{name:28s} {t * 1e3:10.2f} {t / med['sgd foreach']:14.2f}x {vs_fused:>13s} {ach:18.1f} "
              f"{100 * ach / bw:9.0f}% {alloc:14.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="resnet50,preresnet1001")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for m in args.models.split(","):
        bench_model(m, torch.device(args.device), args.rounds)


if __name__ == "__main__":
    main()
