import subprocess
import sys

from helpers import cli


def test_help_does_not_import_torch():
    code = "import sys; import srsgd_train.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    proc = cli("--help", check=0)
    for cmd in ("run", "schedule", "recipes", "inspect", "version"):
        assert cmd in proc.stdout


def test_schedule_prints_the_paper_plan_and_plots(tmp_path):
    png = tmp_path / "plan.png"
    proc = cli("schedule", "resnet200_imagenet", "--plot", png, check=0)
    out = proc.stdout
    assert "80 -> 1" in out and "0.001" in out and "40" in out
    assert png.stat().st_size > 10_000


def test_recipes_lists_and_shows_resolved():
    assert "resnet200_imagenet" in cli("recipes", check=0).stdout
    shown = cli("recipes", "cifar100_preresnet110_srsgd_exp", check=0).stdout
    assert "kind: exponential" in shown and "cifar100" in shown and "extends" not in shown


def test_version():
    assert "srsgd-train" in cli("version", check=0).stdout
