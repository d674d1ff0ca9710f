"""Section 3.1 / Figure 3: logistic regression trained with SGD, SGD + momentum, NASGD,
ARSGD and SRSGD (restart every 10 iterations); lr 0.01, batch 128, weight decay 1e-4,
20 epochs. On MNIST when pointed at its idx files, else on the 8x8 digits that ship with
scikit-learn. Every method sees the same mini-batches in the same order."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from srsgd_train.errors import UserError
from srsgd_train.optim import ARSGD, NASGD, SRSGD

METHODS = ("sgd", "momentum", "nasgd", "arsgd", "srsgd")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(root: str) -> tuple[torch.Tensor, torch.Tensor]:
    base = Path(root)
    for stem in ("train-images-idx3-ubyte", "train-images.idx3-ubyte"):
        for suffix in ("", ".gz"):
            images = base / f"{stem}{suffix}"
            labels = base / f"{stem.replace('images', 'labels').replace('idx3', 'idx1')}{suffix}"
            if images.is_file() and labels.is_file():
                x = torch.tensor(_read_idx(images), dtype=torch.float32).flatten(1) / 255.0
                return x, torch.tensor(_read_idx(labels), dtype=torch.long)
    raise UserError(
        f"MNIST training files not found in {base}: expected train-images-idx3-ubyte and "
        "train-labels-idx1-ubyte (optionally .gz). srsgd-train never downloads data; "
        "leave out --mnist to use the digits that ship with scikit-learn."
    )


def load_digits_flat() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target, dtype=torch.long)


def make_optimizer(name: str, params, lr: float, wd: float, restart_every: int):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if name == "nasgd":
        return NASGD(params, lr=lr, weight_decay=wd)
    if name == "arsgd":
        return ARSGD(params, lr=lr, weight_decay=wd)
    return SRSGD(params, lr=lr, weight_decay=wd, restart_period=restart_every)


def run_logreg(mnist: str | None = None, epochs: int = 20, lr: float = 0.01, batch: int = 128,
               weight_decay: float = 1e-4, restart_every: int = 10, seed: int = 0,
               eval_every: int | None = None) -> tuple[list[int], dict[str, list[float]], str]:
    """Full training loss every ``eval_every`` iterations, per method."""
    x, y = load_mnist(mnist) if mnist else load_digits_flat()
    dataset = "MNIST" if mnist else "sklearn digits"
    n, classes = len(y), int(y.max()) + 1
    eval_every = eval_every or (1 if n < 10_000 else 20)
    g = torch.Generator().manual_seed(seed)
    order = [torch.randperm(n, generator=g) for _ in range(epochs)]
    curves: dict[str, list[float]] = {}
    iterations: list[int] = []
    for name in METHODS:
        torch.manual_seed(seed)
        model = torch.nn.Linear(x.shape[1], classes)
        opt = make_optimizer(name, model.parameters(), lr, weight_decay, restart_every)
        losses, its, it = [], [], 0
        for perm in order:
            for start in range(0, n - batch + 1, batch):
                idx = perm[start:start + batch]
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step(loss=loss.item()) if name == "arsgd" else opt.step()
                it += 1
                if it % eval_every == 0:
                    with torch.no_grad():
                        losses.append(float(torch.nn.functional.cross_entropy(model(x), y)))
                    its.append(it)
        curves[name] = losses
        iterations = its
    return iterations, curves, dataset
