"""Sub-commands ``workbench run | sweep | runs | lab | quickstart`` (added to the main CLI's parser).

``add_subcommands(subparsers)`` adds them; each sets ``func`` (``args.func(args) -> int`` exit code).
``python -m workbench.experiments.cli_commands ...`` runs them without the main CLI.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from ..config import ConfigError


def _parse_grid(items: Sequence[str]) -> dict[str, list]:
    """``["a=1,2", "method=simclr,byol"]`` -> {"a": ["1", "2"], ...} (strings; the runner coerces types)."""
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} must look like name=v1,v2 (e.g. --grid method=simclr,byol)")
        name, values = item.split("=", 1)
        grid[name.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def _progress(args: argparse.Namespace):
    """Where ``run``/``quickstart`` report progress: a line per cell and per training epoch on stderr, unless
    --quiet."""
    if args.quiet:
        return None
    return lambda line: print(line, file=sys.stderr, flush=True)


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import NotebookError, describe_run, run_notebook
    params = {name: value for name, value in (args.parameter or [])}  # the notebook: a path or a shipped name
    try:
        run = run_notebook(args.notebook, params, runs_dir=args.dir, name=args.name, coerce_strings=True,
                           timeout=args.timeout, progress=_progress(args))
    except NotebookError as e:
        print(f"error: {e}", file=sys.stderr)
        print(describe_run(e.run))
        return 1
    print(describe_run(run))
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .runner import NotebookError, describe_run, headline_table, quickstart
    params = {name: value for name, value in (args.parameter or [])}
    try:
        run = quickstart(args.dir, params, timeout=args.timeout, coerce_strings=True, progress=_progress(args))
    except NotebookError as e:
        print(f"error: {e}", file=sys.stderr)
        print(describe_run(e.run))
        return 1
    print(describe_run(run, table=False))
    print(f"open it in JupyterLab: workbench lab   (or: jupyter lab {run.path / 'notebook.ipynb'})")
    comparison = headline_table(run.summary)
    if comparison:  # the headline comparison last, where a newcomer's eye lands
        print(f"\n{comparison}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    import pandas as pd
    from .sweep import sweep
    from ..executors import from_args
    fixed = {name: value for name, value in (args.parameter or [])}
    executor = from_args(args, args.dir, jobs=args.jobs, single_task=True)  # a notebook job is one process
    table = sweep(args.notebook, _parse_grid(args.grid or []), runs_dir=args.dir, jobs=args.jobs, name=args.name,
                  parameters=fixed, coerce_strings=True, timeout=args.timeout, executor=executor,
                  progress=_progress(args))
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
        print(table.to_string(index=False))
    return 0 if (table["status"] == "completed").all() else 1


def _cmd_runs(args: argparse.Namespace) -> int:
    import json

    import pandas as pd
    from .table import compare_summaries, runs_table
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.max_colwidth", 48):
        if args.compare:
            root = Path(args.dir)
            paths = [p if Path(p).exists() else root / p for p in args.compare]
            print(compare_summaries(paths).to_string())
            return 0
        try:
            table = runs_table(args.dir, sort_by=args.sort, where=args.where, status=args.status, limit=args.limit,
                               ascending=args.ascending)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if args.json:
            for rec in json.loads(table.to_json(orient="records")):
                print(json.dumps(rec))
            return 0
        if table.empty:
            print(f"no runs under {args.dir}" + (" match" if args.where or args.status else ""))
            return 0
        if not args.all_metrics:  # key metrics: the pretrained model's (baselines' carry a "model/" prefix)
            table = table[[c for c in table.columns if "/" not in c]]
        print(table.drop(columns=["path"]).to_string(index=False))
    return 0


def lab_command(notebook_dir: str | Path, extra: Sequence[str] = ()) -> list[str]:
    """The JupyterLab command line ``workbench lab`` starts (this interpreter's jupyter, on ``notebook_dir``; new
    notebooks get the ``ssl-workbench`` kernel, this Python)."""
    from .runner import KERNEL_NAME
    return [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={Path(notebook_dir).resolve()}",
            f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}", *extra]


def copy_notebooks(target: Path) -> list[str]:
    """Copy the shipped notebooks into ``target`` (those not there yet: a user's edits are never overwritten);
    returns the names copied."""
    import shutil

    from .runner import notebooks_dir
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for nb in sorted(notebooks_dir().glob("*.ipynb")):
        if not (target / nb.name).exists():
            shutil.copyfile(nb, target / nb.name)
            copied.append(nb.name)
    return copied


def _cmd_lab(args: argparse.Namespace) -> int:
    import os

    from .runner import ensure_kernel, in_checkout, jupyter_env, notebooks_dir
    if args.notebook_dir:
        notebook_dir = Path(args.notebook_dir)
    elif in_checkout():  # a source checkout: its notebooks/ in place
        notebook_dir = notebooks_dir()
    else:  # an installed package: a copy to work in, beside the user's runs
        notebook_dir = Path("ssl-workbench-notebooks")
        copied = copy_notebooks(notebook_dir)
        if copied and not args.dry_run:
            print(f"copied {len(copied)} notebook(s) to {notebook_dir.resolve()}", file=sys.stderr)
    if not notebook_dir.is_dir():
        print(f"error: notebook folder {notebook_dir} does not exist", file=sys.stderr)
        return 2
    extra = ([f"--port={args.port}"] if args.port else []) + (["--no-browser"] if args.no_browser else [])
    cmd = lab_command(notebook_dir, extra)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    ensure_kernel()
    return subprocess.call(cmd, env={**os.environ, **jupyter_env()})


def add_subcommands(subparsers: "argparse._SubParsersAction") -> None:
    """Add run / quickstart / sweep / runs / lab to the main CLI; each sets ``func(args) -> exit code``."""
    def common(p: argparse.ArgumentParser, params: bool = True) -> None:
        p.add_argument("--dir", default="runs", help="runs folder (default: runs)")
        p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per notebook cell")
        if params:
            p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                           help="set a notebook parameter (repeatable); values are parsed to the default's type")

    p = subparsers.add_parser("run", help="execute a notebook with papermill into a new run folder")
    p.add_argument("notebook", help="a .ipynb with a cell tagged `parameters`, or a shipped notebook's name "
                   "(quickstart, pretrain, tutorial_03_collapse, ...)")
    p.add_argument("--name", default=None, help="run folder name (default: <time>-<method>-<data>-<id>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines (cells, training epochs) on stderr")
    common(p)
    p.set_defaults(func=_cmd_run)

    p = subparsers.add_parser("quickstart", help="the main job: execute notebooks/00_quickstart.ipynb into runs/")
    p.add_argument("--quiet", action="store_true", help="no progress lines (cells, training epochs) on stderr")
    common(p)
    p.set_defaults(func=_cmd_quickstart)

    p = subparsers.add_parser("sweep", help="run a notebook over a parameter grid (resumable)")
    p.add_argument("notebook")
    p.add_argument("--grid", action="append", metavar="NAME=V1,V2", help="one grid axis (repeatable)")
    p.add_argument("--jobs", type=int, default=None, help="notebooks executed at once (local: processes, default "
                   "one per GPU; slurm: array jobs at once); without --executor, N > 1 means --executor local")
    p.add_argument("--name", default=None, help="sweep name recorded in each run's parameters.json")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    common(p)
    from ..executors import add_arguments
    add_arguments(p)
    p.set_defaults(func=_cmd_sweep)

    p = subparsers.add_parser("runs", help="list recorded runs (leaderboard) or compare runs side by side")
    p.add_argument("--dir", default="runs", help="runs folder (default: runs)")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="run folders (or names under --dir) to compare")
    p.add_argument("--sort", default=None, help="sort by this column, highest first (--ascending: lowest first)")
    p.add_argument("--ascending", action="store_true", help="with --sort: lowest first")
    p.add_argument("--where", action="append", metavar="KEY=VALUE", help="keep runs where KEY (a column, a metric or "
                   "a notebook parameter) matches: method=simclr, knn_acc>0.5, status!=failed (repeatable: all hold)")
    p.add_argument("--status", action="append", choices=("created", "running", "completed", "stopped", "failed",
                                                         "interrupted", "unreadable"), help="keep runs with this status (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="at most N rows (after --sort; without it the newest N)")
    p.add_argument("--json", action="store_true", help="one JSON object per run (all columns and the path)")
    p.add_argument("--all-metrics", action="store_true", help="also show the baselines' metrics (random_init/...)")
    p.set_defaults(func=_cmd_runs)

    p = subparsers.add_parser("lab", help="start JupyterLab on notebooks/")
    p.add_argument("--notebook-dir", default=None, help="folder to open (default: the repository's notebooks/)")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of starting JupyterLab")
    p.add_argument("--port", type=int, default=None, help="port for JupyterLab (default: its own choice)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.set_defaults(func=_cmd_lab)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbench", description="notebook experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
