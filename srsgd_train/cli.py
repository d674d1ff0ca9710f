"""`srsgd-train`: parse, call one library function per command, render with rich.
No training logic lives here. Heavy imports (torch) happen inside commands so that
``srsgd-train --help`` answers at once."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
    help="Train image classifiers with SRSGD (Scheduled Restart SGD): the paper's recipes, "
         "exact resume, multi-node launch.",
)

SetOpt = typer.Option(None, "--set", help="Override a recipe key, e.g. --set optimizer.lr=0.05 (repeatable).")


def _console():
    from rich.console import Console

    return Console()


@app.command()
def run(
    recipe: str = typer.Argument("quickstart", help="Recipe file or bundled name (default: the CPU quickstart)."),
    set_: Optional[List[str]] = SetOpt,
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Run directory or fsspec URL (default runs/<recipe name>)."),
    resume: str = typer.Option("auto", "--resume", help="auto (latest valid checkpoint) | none | PATH of a checkpoint."),
    force: bool = typer.Option(False, "--force", help="With --resume none: delete an existing run in the run dir."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar / log lines."),
) -> None:
    """Train (resuming automatically from the run dir's latest valid checkpoint)."""
    from srsgd_train.recipe import load_recipe
    from srsgd_train.train import run_training

    r = load_recipe(recipe, set_ or [])
    result = run_training(r, run_dir, resume=resume, force=force, show_progress=progress)
    if result.get("status") == "preempted":
        print(f"stopped by signal at step {result['step']}; checkpoint {result['checkpoint']}. "
              "Run the same command to resume.")
        return
    ev = result.get("eval") or {}
    if ev and result.get("rank", 0) == 0:
        print(f"finished at step {result['step']}: test top-1 error {ev['top1_err']:.2f}%, "
              f"top-5 error {ev['top5_err']:.2f}%, loss {ev['loss']:.4f}")


@app.command()
def schedule(
    recipe: str = typer.Argument(..., help="Recipe file or bundled name."),
    set_: Optional[List[str]] = SetOpt,
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of LR and momentum against step."),
    steps_per_epoch: Optional[int] = typer.Option(None, help="Override the steps per epoch (default: dataset size / batch)."),
) -> None:
    """Print the LR / restart-period plan of a recipe, before any GPU time is spent."""
    from srsgd_train.plan import build_plan, plot_plan, stage_rows
    from srsgd_train.recipe import load_recipe

    r = load_recipe(recipe, set_ or [])
    plan = build_plan(r, steps_per_epoch)
    from rich.table import Table

    t = Table(title=f"{r.name}: {plan.epochs} epochs x {plan.steps_per_epoch} steps "
                    f"(batch {r.data.batch_size}, {r.optimizer.name})")
    for col in ("stage", "epochs", "steps", "LR", "restart period F", "restarts"):
        t.add_column(col)
    for row in stage_rows(r, plan):
        t.add_row(*[str(v) for v in row])
    _console().print(t)
    if plot:
        plot_plan(r, plan, plot)
        print(f"plot written to {plot}")


@app.command()
def recipes(name: Optional[str] = typer.Argument(None, help="Show this recipe fully resolved (extends + defaults)."),
            set_: Optional[List[str]] = SetOpt) -> None:
    """List the bundled recipes, or show one resolved."""
    from srsgd_train.recipe import bundled_recipes, load_recipe

    if name:
        print(load_recipe(name, set_ or []).to_yaml(), end="")
        return
    from rich.table import Table

    t = Table(title="bundled recipes (srsgd-train run NAME)")
    t.add_column("name")
    t.add_column("description")
    for p in bundled_recipes():
        t.add_row(p.stem, load_recipe(p).description)
    _console().print(t)


@app.command()
def inspect(path: str = typer.Argument(..., help="Checkpoint folder, run dir, or fsspec URL."),
            as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """What a checkpoint holds, verified against its manifest: step, LR, restart phase."""
    from srsgd_train.inspect import describe

    info = describe(path)
    if as_json:
        print(json.dumps(info, indent=1))
        return
    ts, ph = info["train_state"], info["train_state"]["restart_phase"]
    lines = [
        f"checkpoint   {info['path']}  (verified: {info['verified_files']} files, {info['bytes']} bytes)",
        f"step         {ts['step']} of {ts['total_steps']}  (applied optimizer steps {ts['applied_steps']})",
        f"epoch        {ts['epoch']}, step {ts['step_in_epoch']} of the epoch",
        f"lr           {ts['lr']:.6g}   optimizer {ts['optimizer']}",
        f"restart      c={ph['iter_count']} F={ph['restart_period']} stage={ph['stage']} "
        f"momentum={ph['momentum']}  next restart in {ph['steps_to_next_restart']} steps",
        f"world size   {info['world_size']}   recipe hash {info['recipe_hash']}   saved on {info['reason']}",
    ]
    print("\n".join(lines))


@app.command()
def launch(
    recipe: str = typer.Argument(..., help="Recipe file or bundled name."),
    backend: str = typer.Option("ddp", help="ddp (torchrun) | deepspeed"),
    nodes: int = typer.Option(1, help="Number of nodes."),
    gpus_per_node: int = typer.Option(1, "--gpus-per-node", help="Processes (GPUs) per node."),
    nproc: Optional[int] = typer.Option(None, "--nproc", help="N local processes (CPU: gloo); sets --nodes 1."),
    node_rank: int = typer.Option(0, "--node-rank"),
    master_addr: Optional[str] = typer.Option(None, "--master-addr"),
    master_port: int = typer.Option(29500, "--master-port"),
    hostfile: Optional[str] = typer.Option(None, "--hostfile", help="DeepSpeed hostfile."),
    set_: Optional[List[str]] = SetOpt,
    run_dir: Optional[str] = typer.Option(None, "--run-dir"),
    resume: str = typer.Option("auto", "--resume"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command instead of running it."),
) -> None:
    """Start a multi-process run with torchrun (ddp) or the DeepSpeed launcher."""
    import os

    from srsgd_train.launch.commands import ClusterShape, RunArgs, build_command, render
    from srsgd_train.recipe import load_recipe

    load_recipe(recipe, (set_ or []) + [f"distributed.backend={backend}"])  # fail fast, before any process starts
    shape = ClusterShape(1 if nproc else nodes, nproc or gpus_per_node, node_rank, master_addr, master_port, hostfile)
    cmd = build_command(backend, RunArgs(recipe, set_ or [], run_dir, resume), shape)
    if dry_run:
        print(render(cmd))
        return
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)  # the launcher takes over this process: signals reach it directly


@app.command()
def slurm(
    recipe: str = typer.Argument(..., help="Recipe file or bundled name."),
    nodes: int = typer.Option(1, help="Nodes to allocate."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node"),
    nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node", help="CPU ranks per node (no GPUs)."),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task"),
    time: str = typer.Option("24:00:00", "--time", help="SLURM time limit."),
    partition: Optional[str] = typer.Option(None, "--partition"),
    account: Optional[str] = typer.Option(None, "--account"),
    backend: str = typer.Option("ddp", help="ddp (srun + torchrun, c10d rendezvous) | deepspeed"),
    warning_seconds: int = typer.Option(180, "--warning-seconds", help="Checkpoint this long before the time limit."),
    set_: Optional[List[str]] = SetOpt,
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Default: runs/<recipe name>, made absolute."),
    python: str = typer.Option(sys.executable, "--python", help="Python on the compute nodes (default: this one)."),
) -> None:
    """Print an sbatch script that checkpoints on SLURM's warning signal and requeues itself."""
    import os

    from srsgd_train.launch.commands import RunArgs
    from srsgd_train.launch.slurm import SlurmJob, render_sbatch
    from srsgd_train.recipe import load_recipe

    r = load_recipe(recipe, (set_ or []) + [f"distributed.backend={backend}"])
    target = os.path.abspath(run_dir or r.run.dir or f"runs/{r.name}") if "://" not in (run_dir or "") else run_dir
    job = SlurmJob(nodes, gpus_per_node, cpus_per_task, nproc_per_node, time, partition, account,
                   f"srsgd-{r.name}"[:64], warning_seconds, backend)
    script = render_sbatch(job, RunArgs(recipe, set_ or []), target, python)
    if "://" not in target:
        os.makedirs(target, exist_ok=True)  # sbatch opens --output there before the script runs
    print(script, end="")


@app.command()
def study(
    problem: str = typer.Argument(..., help="quadratic | logreg"),
    oracle: str = typer.Option("exact", help="quadratic: exact | constant-noise | decaying-noise"),
    iters: int = typer.Option(50_000, help="quadratic: iterations"),
    mnist: Optional[str] = typer.Option(None, help="logreg: folder with MNIST idx files (default: sklearn digits)"),
    epochs: int = typer.Option(20, help="logreg: epochs"),
    out: Path = typer.Option(Path("study"), "--out", help="Folder for the PNG and CSV."),
) -> None:
    """The paper's case studies on CPU: the quadratic (Fig. 2) and logistic regression (Fig. 3)."""
    from srsgd_train.errors import UserError
    from srsgd_train.studies.plotting import line_plot, write_csv

    if problem == "quadratic":
        from srsgd_train.studies.quadratic import METHODS, NOTE, ORACLES, run_quadratic

        if oracle not in ORACLES:
            raise UserError(f"--oracle must be one of {', '.join(ORACLES)}, got {oracle!r}.")
        print(NOTE)
        gaps = run_quadratic(oracle, iters)
        x = list(range(1, iters + 1))
        write_csv(out / f"quadratic_{oracle}.csv", ["iteration", *METHODS], [x, *[gaps[m] for m in METHODS]])
        line_plot(out / f"quadratic_{oracle}.png", x, {m: [max(g, 1e-300) for g in gaps[m]] for m in METHODS},
                  f"quadratic, {oracle} oracle (d=1000, step 1/4)", "iteration", "f(x_k) - f*")
        rows = [(m, f"{gaps[m][-1]:.3e}") for m in METHODS]
        title, cols = f"optimality gap after {iters} iterations ({oracle})", ("method", "f(x) - f*")
    elif problem == "logreg":
        from srsgd_train.studies.logreg import METHODS, run_logreg

        its, curves, dataset = run_logreg(mnist, epochs=epochs)
        write_csv(out / "logreg.csv", ["iteration", *METHODS], [its, *[curves[m] for m in METHODS]])
        line_plot(out / "logreg.png", its, curves, f"logistic regression on {dataset}", "iteration", "training loss")
        rows = [(m, f"{curves[m][-1]:.4f}") for m in METHODS]
        title, cols = f"training loss after {epochs} epochs on {dataset}", ("method", "loss")
    else:
        raise UserError(f"Unknown study {problem!r}: choose quadratic or logreg.")
    from rich.table import Table

    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    _console().print(t)
    print(f"wrote {out}/")


@app.command()
def compare(
    runs: List[str] = typer.Argument(..., help="Run directories (e.g. runs/quickstart runs/quickstart-sgd)."),
    out: Path = typer.Option(Path("compare.png"), "--out", help="PNG to write."),
) -> None:
    """Several runs side by side: loss and test error curves, restart points, a table."""
    from srsgd_train.compare import load_run, plot_runs, summarize

    loaded = [load_run(r) for r in runs]
    rows = summarize(loaded)
    from rich.table import Table

    t = Table(title=f"baseline: {rows[0]['baseline']}")
    for c in ("run", "optimizer", "final top-1 err", "best top-1 err", "epochs to baseline", "final train loss"):
        t.add_column(c)
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        t.add_row(r["run"], r["optimizer"], fmt(r["final_top1_err"], ".2f"), fmt(r["best_top1_err"], ".2f"),
                  fmt(r["epochs_to_baseline"], "d"), fmt(r["final_train_loss"], ".4f"))
    _console().print(t)
    plot_runs(loaded, out)
    print(f"plot written to {out}")


@app.command()
def version() -> None:
    """Print versions."""
    from importlib.metadata import version as v

    from srsgd_train import __version__

    print(f"srsgd-train {__version__}")
    for pkg in ("torch", "torchvision"):
        try:
            print(f"{pkg} {v(pkg)}")
        except Exception:
            print(f"{pkg} (not installed)")


def main() -> None:
    from srsgd_train.errors import UserError

    try:
        app()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
