"""The ``workbench evaluate`` subcommand; ``workbench.cli`` calls ``add_subcommands(subparsers)``.

    workbench evaluate RUN_DIR [key=value ...] [--data D] [--data-option key=value ...]
                       [--metrics knn,linear,...] [--checkpoint last] [--adapt] [--no-baselines] [--device auto]
                       [--json]

``key=value`` pairs are data-set options (e.g. ``size=32 n=2000``), used when the data set differs from the
run's or to override its recorded options; write them right after RUN_DIR (argparse takes positionals in
one go) or anywhere as ``--data-option key=value``. Prints the table (or JSON rows) and writes summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from workbench.config import parse_pairs


def add_subcommands(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``evaluate`` to an argparse subparsers object; the parser's ``func(args) -> int`` runs it."""
    from workbench.evaluation.report import DEFAULT_METRICS, METRICS

    p = subparsers.add_parser(
        "evaluate", help="evaluate a run: kNN, linear probe, label-free metrics... vs random-init and raw pixels",
        description="Evaluate a run's checkpoint and write summary.json. Metrics: " + ", ".join(METRICS) + ".")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder (runs/<time>-<method>-<data>-<id>)")
    p.add_argument("--data", default=None, help="data set name (default: the run's training data)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"comma-separated metrics or 'all' (default: {','.join(DEFAULT_METRICS)})")
    p.add_argument("--checkpoint", default="last", help="checkpoint name in RUN_DIR/checkpoints (default: last)")
    p.add_argument("--adapt", action="store_true",
                   help="resize / convert grey<->RGB data that does not match the backbone (transfer)")
    p.add_argument("--no-baselines", action="store_true", help="skip the random-init and raw-pixel baselines")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--json", action="store_true", help="print the rows as JSON lines instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress lines (model and stage, on stderr)")
    p.add_argument("options", nargs="*", metavar="key=value",
                   help="data-set options right after RUN_DIR, e.g. size=32 n=2000")
    p.add_argument("--data-option", "-o", action="append", default=[], metavar="key=value",
                   help="a data-set option anywhere on the line (repeatable), e.g. -o size=32")
    p.set_defaults(func=run_command)
    return p


def run_command(args: argparse.Namespace) -> int:
    """Run ``workbench evaluate`` from parsed arguments; prints the table, returns the exit status."""
    from workbench.evaluation.report import evaluate

    try:
        table = evaluate(args.run_dir, data=args.data, metrics=args.metrics, checkpoint=args.checkpoint,
                         baselines=not args.no_baselines,
                         data_options=parse_pairs([*args.options, *args.data_option], "data option", "size=32"),
                         device=args.device, adapt=args.adapt,
                         progress=None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)))
    except (FileNotFoundError, ValueError) as e:
        print(f"workbench evaluate: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        for rec in json.loads(table.to_json(orient="records")):
            print(json.dumps(rec))
    else:
        wide = table.pivot_table(index="name", columns="model", values="value", sort=False)
        print(wide.to_string(float_format=lambda v: f"{v:.4f}"))
        if os.path.isdir(args.run_dir):  # a backbone spec (timm:..., a weights file) has no run folder to write
            print(f"\nsummary written to {args.run_dir}/summary.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m workbench.evaluation.cli_commands RUN_DIR ...``)."""
    parser = argparse.ArgumentParser(prog="workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
