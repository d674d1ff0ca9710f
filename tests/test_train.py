import pytest

from helpers import cli
from srsgd_train.metrics import read_metrics

TINY = ["--set", "schedule.epochs=2", "--set", "schedule.milestones=[1]", "--set", "run.log_every=5"]


def test_quickstart_trains_to_low_test_error(tmp_path):
    run = tmp_path / "qs"
    proc = cli("run", "quickstart", "--run-dir", run, check=0)
    assert "finished at step" in proc.stdout
    recs = read_metrics(str(run))
    train = [r for r in recs if "split" not in r]
    evals = [r for r in recs if r.get("split") == "test"]
    assert set(train[0]) == {"step", "epoch", "loss", "lr", "momentum", "restart_period", "iter_count", "images_per_sec"}
    assert set(evals[0]) == {"split", "epoch", "step", "loss", "top1_err", "top5_err"}
    assert evals[-1]["top1_err"] < 3.0  # README states the figure
    assert train[-1]["loss"] < train[0]["loss"] / 5
    assert (run / "recipe.resolved.yaml").exists() and (run / "checkpoints" / "latest").exists()
    assert list((run / "events").iterdir())  # tensorboard events


def test_plain_progress_lines_when_not_a_terminal(tmp_path):
    proc = cli("run", "quickstart", "--run-dir", tmp_path / "r", *TINY, check=0)
    assert "epoch 0 step 5/" in proc.stdout and " mu " in proc.stdout and " F 20" in proc.stdout


@pytest.mark.parametrize("opt", ["sgd", "nasgd", "arsgd"])
def test_baseline_optimizers_run(tmp_path, opt):
    cli("run", "quickstart", "--run-dir", tmp_path / opt, *TINY, "--set", f"optimizer.name={opt}", check=0)
    evals = [r for r in read_metrics(str(tmp_path / opt)) if r.get("split")]
    assert evals[-1]["top1_err"] < 50


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(tmp_path, precision):
    cli("run", "quickstart", "--run-dir", tmp_path / precision, *TINY, "--set", f"train.precision={precision}",
        "--set", "train.grad_clip=5.0", "--set", "train.channels_last=true", check=0)


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_last_checkpoint(tmp_path):
    run = tmp_path / "nan"
    proc = cli("run", "quickstart", "--run-dir", run, *TINY, "--set", "optimizer.lr=1.0e+6",
               "--set", "checkpoint.every_steps=1", check=2)
    assert "The loss became" in proc.stderr and "Traceback" not in proc.stderr
    assert "last good checkpoint is kept" in proc.stderr


def test_missing_cifar_root_says_where_to_put_files(tmp_path):
    proc = cli("run", "cifar10_preresnet110_srsgd_linear", "--run-dir", tmp_path / "c",
               "--set", f"data.root={tmp_path}/nowhere", check=2)
    assert "cifar-10-batches-py" in proc.stderr and "never downloads" in proc.stderr
