"""The ``workbench`` command line: ``pretrain`` and ``methods`` here, ``evaluate`` from workbench.evaluation, and
``quickstart | run | sweep | runs | lab`` from workbench.experiments, ``export`` from workbench.trained.export.

    workbench pretrain --method simclr --data shapes --backbone small_cnn --epochs 5 --batch-size 256 \\
        --out runs [--resume RUN_DIR] [train.lr=0.5 method_options.temperature=0.2 data.options.n=10000 ...]

``key=value`` overrides may stand anywhere among the flags. Bad input (unknown method or data set, malformed
override, invalid value or JSON, unreadable data or checkpoint, a run another process writes) prints one line
naming the problem, plus a ``hint:`` line where there is a fix, and exits with status 2 without a traceback or a
half-made run folder. A run stopped by SIGTERM/SIGINT checkpoints, is marked interrupted and exits with
128 + the signal (143, 130); a diverged run exits 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from workbench.config import ConfigError
from workbench.data.base import DataError
from workbench.evaluation import cli_commands as evaluation_commands
from workbench.experiments import cli_commands as experiment_commands
from workbench.trained import export as export_commands
from workbench.runs import CheckpointError, RunLockedError

# the positional key=value list of each sub-command that takes one: pairs found later among the flags join it
KEY_VALUE_LISTS = {"pretrain": "overrides", "evaluate": "options"}


class _UsageError(Exception):
    """Raised by the parser instead of exiting, so main() decides the message and the exit code."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain a backbone with a self-supervised method; writes a run folder",
                       description="Pretrain with one of the methods (see `workbench methods`). Any PretrainConfig "
                                   "field can be set with dotted key=value overrides, e.g. train.lr=0.5 "
                                   "method_options.temperature=0.2 data.options.n=10000 augment.preset=byol.")
    p.add_argument("--method", default=None, help="simclr, byol, dino, mae, ... (default: simclr)")
    p.add_argument("--data", default=None, help="data set name (default: shapes)")
    p.add_argument("--backbone", default=None, help="small_cnn, resnet18, resnet50, vit_tiny, vit_small")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (lr scales with it / 256)")
    p.add_argument("--image-size", type=int, default=None, help="resize the data to this size (px)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", default=None, help="folder that holds run folders (default: runs)")
    p.add_argument("--name", default=None, help="run folder name (default: <time>-<method>-<data>-<id>)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("--config", default=None, metavar="JSON", help="start from this config.json (e.g. a run's)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted PretrainConfig overrides")
    p.add_argument("--wait", action="store_true", help="with --executor: wait for the job, printing its epochs")
    from workbench.executors import add_arguments
    add_arguments(p, local=False)
    p.set_defaults(func=_cmd_pretrain)


def build_config(args: argparse.Namespace):
    """PretrainConfig from the CLI flags (flags first, then key=value overrides)."""
    from workbench.config import apply_overrides, from_dict
    from workbench.runs import Run
    from workbench.train.config import PretrainConfig

    if args.resume:
        recorded = Run(args.resume).config
        if not recorded:
            raise FileNotFoundError(f"--resume {args.resume}: no config.json there (is it a run folder?)")
        base = from_dict(PretrainConfig, recorded)
    elif args.config:
        try:
            with open(args.config) as f:
                loaded = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {args.config} is not valid JSON ({e.msg} at line {e.lineno}, column "
                              f"{e.colno})") from None
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"--config {args.config}: no such file") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {args.config} holds a JSON {type(loaded).__name__}; it must be an object "
                              "of PretrainConfig fields (such as a run's config.json)")
        try:
            base = from_dict(PretrainConfig, loaded)
        except ValueError as e:
            raise ConfigError(f"--config {args.config}: {e}") from None
    else:
        base = PretrainConfig()
    flags = {"method": args.method, "data.name": args.data, "model.backbone": args.backbone,
             "train.epochs": args.epochs, "train.batch_size": args.batch_size, "data.image_size": args.image_size,
             "train.device": args.device, "out": args.out, "name": args.name}
    overrides = {k: v for k, v in flags.items() if v is not None}
    cfg = apply_overrides(base, overrides) if overrides else base
    if args.overrides:
        cfg = apply_overrides(cfg, list(args.overrides))
    return cfg


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from workbench.train.engine import TrainingDiverged, TrainingInterrupted, pretrain

    try:
        cfg = build_config(args)
    except ValueError as e:  # invalid values raised by a method's or augmentation's own checks
        raise ConfigError(str(e)) from None
    if args.executor:
        return _submit_pretrain(args, cfg)
    try:
        run = pretrain(cfg, resume=args.resume)
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return e.exit_code
    s, status = run.summary.get("pretrain", {}), run.status
    print(f"run folder: {run.path}")
    print(f"status:     {status.get('status')}  steps {s.get('steps')}  loss {s.get('train_loss')}  "
          f"kNN acc {s.get('knn_acc')}")
    if status.get("skipped_count"):
        print(f"skipped:    {status['skipped_count']} unreadable image file(s), listed in {run.path / 'status.json'}")
    for message in (status.get("warnings") or {}).values():
        print(f"warning:    {message}")
    return 0


def _submit_pretrain(args: argparse.Namespace, cfg) -> int:
    """``workbench pretrain --executor slurm ...``: submit (nodes x GPUs per node tasks form one DDP run), print the
    job and the run folder; with --wait follow its epochs until it ends."""
    from workbench.config import to_dict
    from workbench.executors import PretrainJob, from_args, submit_pretrain

    ex = from_args(args, cfg.out)
    world = ex.nodes * ex.tasks_per_node
    if cfg.train.batch_size % world:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} (the global batch) must be divisible by the "
                          f"{world} processes of --nodes {ex.nodes} x {ex.tasks_per_node} tasks per node")
    if args.resume:
        from pathlib import Path
        run_dir = Path(args.resume).resolve()
        job = ex.submit(PretrainJob(to_dict(cfg), run_dir))
    else:
        job, run_dir = submit_pretrain(cfg, ex)
    print(f"submitted:  job {job.job_id} on {ex.describe()}")
    print(f"run folder: {run_dir}   (executor.json there records the job; `workbench runs` lists it)")
    print(f"log:        {job.paths.stdout}")
    if not args.wait:
        return 0
    return _follow(job, run_dir)


def _follow(job, run_dir) -> int:
    """Print the run's epoch records as they appear until ``job`` ends; 0 when the run completed."""
    import time

    from workbench.runs import Run
    seen = 0
    run = Run(run_dir)
    while True:
        finished = job.done()
        records = [r for r in run.metrics() if r.get("kind") == "epoch"] if run.path.exists() else []
        for r in records[seen:]:
            knn = f"  kNN {r['knn_acc']:.3f}" if isinstance(r.get("knn_acc"), float) else ""
            print(f"epoch {r['epoch']}  loss {r['loss']:.4f}{knn}", file=sys.stderr, flush=True)
        seen = len(records)
        if finished:
            break
        time.sleep(2.0)
    try:
        job.results()  # every task's (a DDP job has several)
    except Exception as e:
        print(f"error: job {job.job_id} failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e}",
              file=sys.stderr)
        print(f"log: {job.paths.stderr}", file=sys.stderr)
        return 1
    status = run.status
    print(f"status:     {status.get('status')}  steps {status.get('step')}")
    return 0 if status.get("status") == "completed" else 1


def _cmd_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from workbench.methods import Recipe, known_methods, method_class

    print("recipe defaults: " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(Recipe()).items()))
    for name in known_methods():
        cls = method_class(name)
        changes = " ".join(f"{k}={v}" for k, v in cls.recipe.changes().items()) or "(defaults)"
        print(f"{name:14s} preset={cls.preset:7s} recipe: {changes}" + ("  (ViT only)" if cls.requires_vit else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("ssl-workbench")  # the installed distribution's (pyproject: workbench.__version__)
    except PackageNotFoundError:  # run from a source tree that was never installed
        __version__ = "unknown (not installed)"
    parser = _Parser(prog="workbench", description="SSL Workbench: self-supervised pretraining, evaluation, notebooks")
    parser.add_argument("--version", action="version", version=f"ssl-workbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_pretrain(sub)
    p = sub.add_parser("methods", help="list the methods with their default preset and optimizer recipe")
    p.set_defaults(func=_cmd_methods)
    evaluation_commands.add_subcommands(sub)
    experiment_commands.add_subcommands(sub)
    export_commands.add_subcommands(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` items after the first flag join the sub-command's key=value list
    (``KEY_VALUE_LISTS``), so overrides may stand anywhere among the flags. Anything else unknown is an error."""
    args, extra = parser.parse_known_args(argv)
    target = KEY_VALUE_LISTS.get(getattr(args, "command", None) or "")
    pairs = [x for x in extra if target and not x.startswith("-")]
    rest = [x for x in extra if x not in pairs]
    if rest:
        raise _UsageError(f"{parser.prog}: error: unrecognized arguments: {' '.join(rest)}")
    if pairs:
        setattr(args, target, [*(getattr(args, target) or []), *pairs])
    return args


def report_error(e: BaseException) -> None:
    """Print ``e`` on stderr as one ``error:`` line and, where the error carries one, a ``hint:`` line."""
    hint = getattr(e, "hint", None)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if hint:
        lines = [ln for ln in lines if ln != f"hint: {hint}"]
    print("error: " + " ".join(lines), file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except _UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, CheckpointError, RunLockedError, FileNotFoundError, FileExistsError) as e:
        report_error(e)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
