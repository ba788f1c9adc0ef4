"""Reading run records back: one table of runs (the leaderboard) and summaries side by side."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from ..runs import Run, list_runs
from .records import read_parameters

COLUMNS = ("run", "notebook", "method", "data", "backbone", "epochs", "status", "step", "warnings")


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _status(run: Run) -> dict[str, Any]:
    """The run's status (``Run.status``: a dead writer's ``running`` reads ``interrupted``); an unreadable
    status.json reads ``unreadable``."""
    try:
        return run.status
    except ValueError as e:
        return {"status": "unreadable", "error": str(e)}


def run_facts(run: Run | str | os.PathLike) -> dict[str, Any]:
    """run, notebook, method, data, backbone, epochs, status, step and warnings of a run, each read from one named
    place. ``status`` is ``Run.status`` (created / running / completed / failed / interrupted; a run whose writer
    died reads interrupted), ``step`` the last step its status recorded, ``warnings`` the kinds of health warning
    the trainer raised (``constant_loss``, ``collapse``), comma-separated.

    method/data/backbone/epochs come from the PretrainConfig (config.json: ``method``, ``data.name``,
    ``model.backbone``, ``train.epochs``) of the run, or of its linked training run (``Run.training_run``) for a
    notebook run that trained into a sub-folder; a notebook run without a training config (one that trained
    several runs, or none) shows its notebook parameters of the same names.
    """
    run = run if isinstance(run, Run) else Run(run)
    record = read_parameters(run)
    try:
        config = (run.training_run or run).config
    except ValueError:  # a corrupt config.json: the row still shows, with the facts it cannot read left empty
        config = {}
    if config:
        facts = {"method": config.get("method"), "data": _section(config, "data").get("name"),
                 "backbone": _section(config, "model").get("backbone"),
                 "epochs": _section(config, "train").get("epochs")}
    else:
        params = record.get("parameters", {})
        facts = {k: params.get(k) for k in ("method", "data", "backbone", "epochs")}
    status = _status(run)
    health = ",".join(sorted(status.get("warnings") or {})) if isinstance(status.get("warnings"), dict) else ""
    return {"run": run.path.name, "notebook": record.get("notebook"), **facts, "status": status.get("status"),
            "step": status.get("step"), "warnings": health or None}


def numeric_summary(run: Run) -> dict[str, float]:
    """Numeric entries of a run's summary.json (booleans and nested values left out)."""
    return {k: v for k, v in run.summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _summary(run: Run) -> dict[str, float]:
    try:
        return numeric_summary(run)
    except ValueError:  # a corrupt summary.json: no metrics for this row
        return {}


def runs_table(runs: str | os.PathLike | Iterable[Run | str | os.PathLike] = "runs", sort_by: str | None = None,
               notebook: str | None = None, exclude: Iterable[Run | str | os.PathLike] = ()):
    """pandas DataFrame, one row per run: run, notebook, method, data, backbone, epochs, status, then the
    numeric summary metrics (the leaderboard). ``runs`` is a runs folder or a list of run folders; rows are
    sorted by ``sort_by`` (descending) when given, else oldest first. ``notebook`` keeps only runs of that
    notebook; ``exclude`` drops runs (e.g. the comparing notebook's own run)."""
    import pandas as pd

    if isinstance(runs, (str, os.PathLike)):
        found = list_runs(runs)
    else:
        found = [r if isinstance(r, Run) else Run(r) for r in runs]
    skip = {Path(r).resolve() for r in exclude}
    found = [r for r in found if r.path.resolve() not in skip
             and (not notebook or read_parameters(r).get("notebook") == notebook)]
    rows = []
    for r in found:
        facts = run_facts(r)
        rows.append({**facts, **{k: v for k, v in _summary(r).items() if k not in facts}, "path": str(r.path)})
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=[*COLUMNS, "path"])
    table["step"] = table["step"].astype("Int64")  # whole steps, <NA> where a run recorded none
    metric_cols = [c for c in table.columns if c not in (*COLUMNS, "path")]
    table = table[[*COLUMNS, *sorted(metric_cols), "path"]]
    if sort_by is not None:
        if sort_by not in table.columns:
            raise ValueError(f"cannot sort runs by {sort_by!r}; columns are {list(table.columns)}")
        table = table.sort_values(sort_by, ascending=False, na_position="last").reset_index(drop=True)
    return table


def compare_summaries(runs: Iterable[Run | str | os.PathLike]):
    """pandas DataFrame: one column per run (its folder name), one row per fact or summary entry."""
    import pandas as pd

    cols = {}
    for r in runs:
        run = r if isinstance(r, Run) else Run(r)
        if not run.path.exists():
            raise FileNotFoundError(f"run folder {run.path} does not exist (list runs with `workbench runs`)")
        facts = run_facts(run)
        facts.pop("run")
        cols[run.path.name] = {**facts, **{k: v for k, v in run.summary.items() if not isinstance(v, (dict, list))}}
    return pd.DataFrame(cols)


def curves_frame(runs: Iterable[Run | str | os.PathLike], y: str = "loss", x: str = "step", kind: str | None = "step"):
    """Long pandas DataFrame (run, x, y) of metric ``y`` against ``x`` from each run's metrics.jsonl records of
    ``kind`` ("step"/"epoch"; None = all records that have both keys)."""
    import pandas as pd

    rows = []
    for r in runs:
        run = r if isinstance(r, Run) else Run(r)
        for rec in (run.training_run or run).metrics():
            if (kind is None or rec.get("kind") == kind) and x in rec and y in rec and rec[y] is not None:
                rows.append({"run": run.path.name, x: rec[x], y: rec[y]})
    return pd.DataFrame(rows, columns=["run", x, y])


def plot_curves(runs: Iterable[Run | str | os.PathLike], y: str = "loss", x: str = "step", kind: str | None = "step",
                labels: dict[str, str] | None = None):
    """plotly Figure overlaying metric ``y`` against ``x`` for several runs (one line per run)."""
    import plotly.graph_objects as go

    frame = curves_frame(runs, y=y, x=x, kind=kind)
    fig = go.Figure()
    for name, part in frame.groupby("run", sort=False):
        fig.add_trace(go.Scatter(x=part[x], y=part[y], mode="lines+markers" if len(part) < 30 else "lines",
                                 name=(labels or {}).get(name, name)))
    fig.update_layout(xaxis_title=x, yaxis_title=y, title=f"{y} by {x}", height=380,
                      margin=dict(l=40, r=10, t=40, b=40))
    return fig


HEADLINE = {"knn_acc": "knn_top1_k20", "linear_acc": "linear_top1", "rankme": "rankme", "std": "std"}


def headline_metrics(evaluation, k: int = 20) -> dict[str, float]:
    """Short names for the numbers a notebook records, from ``workbench.evaluation.evaluate``'s table
    (columns model, name, value): ``knn_acc`` (weighted kNN top-1 at ``k``), ``linear_acc``, ``rankme``, ``std``
    for the pretrained model, and the same with ``_random_init`` / ``_raw_pixels`` for the baselines."""
    names = {**HEADLINE, "knn_acc": f"knn_top1_k{k}"}
    out: dict[str, float] = {}
    for rec in evaluation.to_dict("records"):
        for short, long in names.items():
            if rec["name"] == long:
                suffix = "" if rec["model"] == "pretrained" else f"_{rec['model']}"
                out[short + suffix] = float(rec["value"])
    return out
