"""Progress display and metric records: rich bar on a terminal, plain lines otherwise;
``metrics.jsonl`` in the run dir; TensorBoard events when tensorboard is installed."""

from __future__ import annotations

import json
import posixpath
import sys
import time
from typing import Any

import fsspec


class MetricsLog:
    """Append-only JSONL on any fsspec URL. On resume, records after the resumed step are
    dropped, so the file reads as if the run had never stopped."""

    def __init__(self, run_dir: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.fs, root = fsspec.core.url_to_fs(run_dir)
        self.path = posixpath.join(root, "metrics.jsonl")
        self._buffer: list[str] = []

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.fs.exists(self.path):
            return
        keep = [line for line in self.fs.cat_file(self.path).decode().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        with self.fs.open(self.path, "wb") as f:
            f.write("".join(k + "\n" for k in keep).encode())

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self._buffer.append(json.dumps(record))

    def flush(self) -> None:
        if not self._buffer:
            return
        new = "".join(r + "\n" for r in self._buffer).encode()
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        if "file" in protocols:
            with open(self.path, "ab") as f:  # local disk: a real append
                f.write(new)
        else:  # object stores cannot append: rewrite the (small) file
            old = self.fs.cat_file(self.path) if self.fs.exists(self.path) else b""
            with self.fs.open(self.path, "wb") as f:
                f.write(old + new)
        self._buffer.clear()


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    fs, root = fsspec.core.url_to_fs(run_dir)
    path = posixpath.join(root, "metrics.jsonl")
    if not fs.exists(path):
        return []
    return [json.loads(line) for line in fs.cat_file(path).decode().splitlines() if line.strip()]


class TensorBoard:
    def __init__(self, run_dir: str, enabled: bool) -> None:
        self.writer = None
        if not enabled or "://" in run_dir and not run_dir.startswith("file://"):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.writer = SummaryWriter(log_dir=posixpath.join(run_dir.removeprefix("file://"), "events"))

    def scalars(self, prefix: str, record: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A rich progress bar when stdout is a terminal; plain log lines otherwise."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.live = enabled and sys.stdout.isatty()
        self.total = total_steps
        self._bar = None
        if self.live:
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self._bar = RichProgress(
                TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                TextColumn("step {task.completed}/{task.total}"),
                TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.4g} "
                           "mu {task.fields[mu]:.3f} F {task.fields[F]} {task.fields[ips]:.0f} img/s"),
                TimeRemainingColumn(),
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step,
                                            epoch=0, loss=float("nan"), lr=0.0, mu=0.0, F="-", ips=0.0)
            self._bar.start()

    def update(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=rec["step"], epoch=rec["epoch"], loss=rec["loss"],
                             lr=rec["lr"], mu=rec["momentum"] or 0.0, F=rec["restart_period"] or "-",
                             ips=rec["images_per_sec"])
        else:
            print(f"epoch {rec['epoch']} step {rec['step']}/{self.total} loss {rec['loss']:.4f} "
                  f"lr {rec['lr']:.4g} mu {_fmt(rec['momentum'])} "
                  f"F {rec['restart_period'] or '-'} c {rec['iter_count'] or '-'} "
                  f"{rec['images_per_sec']:.0f} img/s", flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class Throughput:
    def __init__(self) -> None:
        self.t0, self.images = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.images += n

    def rate(self) -> float:
        now = time.perf_counter()
        r = self.images / max(now - self.t0, 1e-9)
        self.t0, self.images = now, 0
        return r


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
