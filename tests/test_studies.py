import csv
import math

import pytest

from helpers import cli
from srsgd_train.studies.quadratic import Quadratic, run_quadratic


def test_closed_form_minimum_of_the_tridiagonal_quadratic():
    import torch

    q = Quadratic(50)
    x_star = torch.tensor([(51 - i) / 51 for i in range(1, 51)], dtype=torch.float64)
    assert torch.allclose(q.grad(x_star), torch.zeros(50, dtype=torch.float64), atol=1e-12)
    assert math.isclose(q.value(x_star), q.f_star, rel_tol=1e-12)


@pytest.mark.slow
def test_exact_oracle_gaps_order_as_in_figure_2a():
    gaps = run_quadratic("exact", 50_000)
    final = {k: v[-1] for k, v in gaps.items()}
    assert final["srnag"] < final["nag"] < final["momentum"] < final["gd"]
    # values recorded in the README (float64, deterministic)
    assert final["gd"] == pytest.approx(1.2846e-3, rel=1e-3)
    assert final["momentum"] == pytest.approx(8.518e-5, rel=1e-3)
    assert final["nag"] == pytest.approx(2.977e-9, rel=1e-2)
    assert final["srnag"] < 1e-15


@pytest.mark.parametrize("oracle", ["constant-noise", "decaying-noise"])
def test_noisy_oracles_via_cli_write_csv_and_png(tmp_path, oracle):
    proc = cli("study", "quadratic", "--oracle", oracle, "--iters", "12000", "--out", tmp_path, check=0)
    assert "tridiagonal" in proc.stdout
    with open(tmp_path / f"quadratic_{oracle}.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["iteration", "gd", "momentum", "nag", "arnag", "srnag"]
    assert len(rows) == 12001 and all(math.isfinite(float(v)) for v in rows[-1])
    assert (tmp_path / f"quadratic_{oracle}.png").stat().st_size > 10_000


def test_logreg_produces_all_five_curves(tmp_path):
    proc = cli("study", "logreg", "--out", tmp_path, check=0)
    with open(tmp_path / "logreg.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["iteration", "sgd", "momentum", "nasgd", "arsgd", "srsgd"]
    first, last = [float(v) for v in rows[1][1:]], [float(v) for v in rows[-1][1:]]
    assert all(b < a for a, b in zip(first, last))  # every method lowers the training loss
    assert "srsgd" in proc.stdout and (tmp_path / "logreg.png").exists()


def test_logreg_missing_mnist_is_a_clear_error(tmp_path):
    proc = cli("study", "logreg", "--mnist", tmp_path, check=2)
    assert "train-images-idx3-ubyte" in proc.stderr


def test_compare_two_real_quickstart_runs(tmp_path):
    short = ["--set", "schedule.epochs=3", "--set", "schedule.milestones=[2]"]
    cli("run", "quickstart", "--run-dir", tmp_path / "srsgd", *short, check=0)
    cli("run", "quickstart", "--run-dir", tmp_path / "sgd", *short, "--set", "optimizer.name=sgd", check=0)
    out = tmp_path / "cmp.png"
    proc = cli("compare", tmp_path / "srsgd", tmp_path / "sgd", "--out", out, check=0)
    assert "baseline: sgd" in proc.stdout and "srsgd" in proc.stdout
    assert out.stat().st_size > 10_000
    proc = cli("compare", tmp_path / "nothing", check=2)
    assert "not a run directory" in proc.stderr
