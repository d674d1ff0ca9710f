import pytest

from helpers import cli
from srsgd_train.recipe import bundled_recipes, load_recipe
from srsgd_train.train import restart_plan

ALL = [p.stem for p in bundled_recipes()]


def test_every_paper_configuration_has_a_recipe():
    for ds in ("cifar10", "cifar100"):
        for depth in (110, 290, 470, 650, 1001):
            for kind in ("sgd", "srsgd_linear", "srsgd_exp", "srsgd_short"):
                assert f"{ds}_preresnet{depth}_{kind}" in ALL
    for depth in (50, 101, 152, 200):
        for kind in ("_sgd", "", "_short"):
            assert f"resnet{depth}_imagenet{kind}" in ALL
    assert "resnet200_imagenet" in ALL and "quickstart" in ALL


@pytest.mark.parametrize("name", ALL)
def test_every_recipe_validates(name):
    r = load_recipe(name)
    assert r.name == name and r.description
    if r.optimizer.name == "srsgd":
        plan = restart_plan(r, steps_per_epoch=10)
        assert all(f >= 1 for f in plan.periods)


def periods(name):
    return list(restart_plan(load_recipe(name), steps_per_epoch=1).periods)


def test_table_6_values_in_cifar_recipes():
    assert periods("cifar10_preresnet110_srsgd_linear") == [30, 60, 90, 120]
    assert periods("cifar10_preresnet1001_srsgd_exp") == [40, 50, 63, 78]
    assert periods("cifar100_preresnet470_srsgd_linear") == [50, 100, 150, 200]
    assert periods("cifar100_preresnet1001_srsgd_exp") == [45, 68, 101, 152]
    r = load_recipe("cifar100_preresnet290_sgd")
    assert (r.optimizer.name, r.optimizer.momentum, r.data.name, r.data.batch_size) == ("sgd", 0.9, "cifar100", 128)
    assert (r.schedule.epochs, r.schedule.milestones, r.optimizer.lr) == (200, [80, 120, 160], 0.1)
    assert r.optimizer.weight_decay == 5e-4 and "5e-5" in r.notes  # the documented choice
    short = load_recipe("cifar10_preresnet650_srsgd_short")
    assert (short.schedule.epochs, short.schedule.milestones) == (100, [80, 90, 95])
    assert load_recipe("cifar10_preresnet110_srsgd_short110").schedule.milestones == [80, 90, 100]
    assert load_recipe("cifar100_preresnet110_srsgd_short140").schedule.epochs == 140


def test_table_7_and_8_values_in_imagenet_recipes():
    full = load_recipe("resnet200_imagenet")
    plan = restart_plan(full, steps_per_epoch=1)
    assert (full.schedule.epochs, full.schedule.milestones) == (90, [30, 60])
    assert [plan.period_at(e) for e in (0, 29, 30, 59, 60, 89)] == [40, 40, 80, 80, 80, 1]
    assert full.optimizer.weight_decay == 1e-4 and full.model.name == "resnet200"
    expected = {50: (80, [30, 56], 60, 105, 24), 101: (80, [30, 56], 40, 80, 24),
                152: (75, [30, 51], 40, 80, 24), 200: (60, [30, 46], 40, 80, 14)}
    for depth, (epochs, ms, f1, f2, last) in expected.items():
        r = load_recipe(f"resnet{depth}_imagenet_short")
        p = restart_plan(r, steps_per_epoch=1)
        assert (r.schedule.epochs, r.schedule.milestones) == (epochs, ms)
        assert (p.period_at(0), p.period_at(ms[0]), p.period_at(ms[1]), p.period_at(epochs - 1)) == (f1, f2, f2, 1)
        assert epochs - ms[1] == last
    sgd = load_recipe("resnet50_imagenet_sgd")
    assert (sgd.optimizer.name, sgd.optimizer.momentum, sgd.schedule.epochs) == ("sgd", 0.9, 90)


def test_set_overrides_are_typed_by_the_schema():
    r = load_recipe("quickstart", ["optimizer.lr=0.05", "schedule.milestones=[3, 5]", "optimizer.name=sgd"])
    assert r.optimizer.lr == 0.05 and r.schedule.milestones == [3, 5] and r.optimizer.name == "sgd"


def test_extends_merges_relative_files(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {name: mlp}\ndata: {name: digits}\nschedule: {epochs: 2}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ndata: {batch_size: 64}\n")
    r = load_recipe(tmp_path / "child.yaml")
    assert (r.name, r.model.name, r.data.name, r.data.batch_size) == ("child", "mlp", "digits", 64)


@pytest.mark.parametrize(
    "body,expect",
    [
        ("model: {name: mlp}\ndata: {name: digits, batchsize: 3}\nschedule: {epochs: 2}\n",
         "Did you mean 'data.batch_size'"),
        ("model: {name: mlp}\ndata: {name: digits}\nschedule: {epochs: 10, milestones: [12]}\n",
         "milestones [12] must lie strictly between 0 and epochs=10"),
        ("model: {name: mlp}\ndata: {name: digits}\nschedule: {epochs: 2}\noptimizer: {lr: 0}\n",
         "optimizer.lr"),
        ("model: {name: mlp}\ndata: {name: digits}\nschedule: {epochs: 2}\n"
         "optimizer: {restart: {kind: constant, period: 0}}\n", "optimizer.restart.period"),
        ("model: {name: mlp}\ndata: {name: digits}\nschedule: {epochs: 2}\noptimiser: {lr: 1}\n",
         "Did you mean 'optimizer'"),
        ("model: [oops\n", "not valid YAML"),
    ],
)
def test_bad_recipes_exit_2_with_a_clear_message(tmp_path, body, expect):
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    proc = cli("run", bad, "--run-dir", tmp_path / "run", check=2)
    assert expect in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run").exists()  # rejected before any work


def test_unknown_recipe_name_suggests_a_bundled_one(tmp_path):
    proc = cli("schedule", "resnet200_imagenett", check=2)
    assert "Did you mean 'resnet200_imagenet'" in proc.stderr
