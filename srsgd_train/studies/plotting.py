"""CSV and PNG writers shared by the studies and `compare`."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence


def write_csv(path: Path, header: Sequence[str], columns: Sequence[Sequence[float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in zip(*columns):
            w.writerow([f"{v:.10g}" if isinstance(v, float) else v for v in row])


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_plot(path: Path, x: Sequence[float], curves: dict[str, Sequence[float]], title: str,
              xlabel: str, ylabel: str, logy: bool = True) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, ys in curves.items():
        (ax.semilogy if logy else ax.plot)(x, ys, label=name, linewidth=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
