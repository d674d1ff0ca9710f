import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import cli
from srsgd_train.data import GlobalBatchSampler, cifar_datasets
from srsgd_train.errors import UserError
from srsgd_train.metrics import read_metrics


def write_fake_cifar(root, name="cifar10", n=64):
    rng = np.random.default_rng(0)
    if name == "cifar10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
            (d / f).write_bytes(pickle.dumps(batch))
    else:
        d = root / "cifar-100-python"
        d.mkdir(parents=True)
        for f in ("train", "test"):
            batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": rng.integers(0, 100, n).tolist()}
            (d / f).write_bytes(pickle.dumps(batch))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_batch_files_load_with_augmentation(tmp_path, name):
    write_fake_cifar(tmp_path, name)
    train, test, info = cifar_datasets(name, str(tmp_path), augment=True)
    assert len(train) == (320 if name == "cifar10" else 64) and len(test) == 64
    x, y = train[(3, 12345)]
    assert x.shape == (3, 32, 32) and 0 <= y < info["num_classes"]
    assert torch.equal(train[(3, 12345)][0], x)  # augmentation is a function of the sample seed
    assert any(not torch.equal(train[(3, seed)][0], x) for seed in range(10))  # and it varies


def test_cifar_loader_refuses_code_in_pickles(tmp_path):
    write_fake_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(UserError, match="not a CIFAR python batch file"):
        cifar_datasets("cifar10", str(tmp_path), augment=False)


def test_cifar_run_end_to_end(tmp_path):
    write_fake_cifar(tmp_path)
    run = tmp_path / "run"
    cli("run", "cifar10_preresnet110_srsgd_linear", "--run-dir", run, "--set", f"data.root={tmp_path}",
        "--set", "model.name=preresnet11", "--set", "data.batch_size=32", "--set", "data.workers=2",
        "--set", "schedule.epochs=2", "--set", "schedule.milestones=[1]", "--set", "train.device=cpu", check=0)
    evals = [r for r in read_metrics(str(run)) if r.get("split")]
    assert len(evals) == 2 and 0 <= evals[-1]["top5_err"] <= 100


def test_imagenet_folder_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("n01", "n02"):
            d = tmp_path / "imnet" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")
    run = tmp_path / "run"
    cli("run", "resnet50_imagenet", "--run-dir", run, "--set", f"data.root={tmp_path / 'imnet'}",
        "--set", "model.name=small_cnn", "--set", "data.batch_size=4", "--set", "data.workers=1",
        "--set", "schedule.epochs=2", "--set", "schedule.milestones=[1]", "--set", "train.device=cpu",
        "--set", "model.num_classes=2", "--set", "optimizer.restart.periods=[2,3,3]",
        "--set", "schedule.milestones=[1]", check=2)  # 3 periods for 2 stages: rejected
    cli("run", "resnet50_imagenet", "--run-dir", run, "--set", f"data.root={tmp_path / 'imnet'}",
        "--set", "model.name=small_cnn", "--set", "data.batch_size=4", "--set", "data.workers=1",
        "--set", "schedule.epochs=2", "--set", "schedule.milestones=[1]", "--set", "train.device=cpu",
        "--set", "model.num_classes=2", "--set", "optimizer.restart.periods=[2,3]", check=0)
    evals = [r for r in read_metrics(str(run)) if r.get("split")]
    assert evals[-1]["top5_err"] == 0.0  # 2 classes: top-5 always hits


def test_sampler_order_is_independent_of_world_size_and_resume_point():
    one = GlobalBatchSampler(100, 8, seed=3)
    two = [GlobalBatchSampler(100, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in [one, *two]:
        s.set_epoch(1)
    full = list(one)
    halves = [list(s) for s in two]
    assert [a + b for a, b in zip(*halves)] == full
    one.set_epoch(1, start_step=5)
    assert list(one) == full[5:]
    one.set_epoch(2)
    assert list(one) != full
