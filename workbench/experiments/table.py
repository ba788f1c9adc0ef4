"""Reading run records back: one table of runs (the leaderboard) and summaries side by side."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..runs import Run, indexed_runs, live_entry

COLUMNS = ("run", "notebook", "method", "data", "backbone", "epochs", "status", "step", "warnings")


def facts_from_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """run, notebook, method, data, backbone, epochs, status, step and warnings from a runs-index entry
    (``Run.index_entry``); see :func:`run_facts`."""
    config = entry.get("config")
    if config:
        facts = {k: config.get(k) for k in ("method", "data", "backbone", "epochs")}
    else:
        params = entry.get("parameters") or {}
        facts = {k: params.get(k) for k in ("method", "data", "backbone", "epochs")}
    status = entry.get("status") or {}
    warnings = status.get("warnings")
    health = ",".join(sorted(warnings)) if isinstance(warnings, (list, dict)) else ""
    return {"run": entry["name"], "notebook": entry.get("notebook"), **facts, "status": status.get("status"),
            "step": status.get("step"), "warnings": health or None}


def _entry(run: Run) -> dict[str, Any]:
    entry = run.index_entry() or {"name": run.path.name, "status": {}, "summary": {}, "config": None,
                                  "notebook": None, "parameters": {}}
    return live_entry(run, entry)


def run_facts(run: Run | str | os.PathLike) -> dict[str, Any]:
    """run, notebook, method, data, backbone, epochs, status, step and warnings of a run, each read from one named
    place. ``status`` is ``Run.status`` (created / running / completed / stopped / failed / interrupted; a run whose
    writer died reads interrupted; a corrupt status.json reads ``unreadable``), ``step`` the last step its status recorded,
    ``warnings`` the kinds of health warning the trainer raised (``constant_loss``, ``collapse``), comma-separated.

    method/data/backbone/epochs come from the PretrainConfig (config.json: ``method``, ``data.name``,
    ``model.backbone``, ``train.epochs``) of the run, or of its linked training run (``Run.training_run``) for a
    notebook run that trained into a sub-folder; a notebook run without a training config (one that trained
    several runs, or none) shows its notebook parameters of the same names. (The runs index keeps the same record
    per run: ``Run.index_entry``.)
    """
    run = run if isinstance(run, Run) else Run(run)
    return facts_from_entry(_entry(run))


def numeric_summary(run: Run) -> dict[str, float]:
    """Numeric entries of a run's summary.json (booleans and nested values left out)."""
    return {k: v for k, v in run.summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


_OPS = (("!=", lambda a, b: a != b), (">=", lambda a, b: a >= b), ("<=", lambda a, b: a <= b),
        (">", lambda a, b: a > b), ("<", lambda a, b: a < b), ("=", lambda a, b: a == b))


def parse_where(items: Iterable[str] | Mapping[str, Any] | None) -> list[tuple[str, str, Any]]:
    """``["method=simclr", "knn_acc>0.5", "status!=failed"]`` (or ``{"method": "simclr"}``) -> [(key, op, value)];
    operators ``= != > >= < <=``; a ConfigError for an item without one."""
    if not items:
        return []
    if isinstance(items, Mapping):
        return [(str(k), "=", v) for k, v in items.items()]
    out = []
    for item in items:
        for op, _ in _OPS:
            if op in item:
                key, value = item.split(op, 1)
                if key.strip():
                    out.append((key.strip(), op, value.strip()))
                    break
        else:
            from ..config import ConfigError
            raise ConfigError(f"--where {item!r} must look like key=value (or key!=, >, >=, <, <= value), "
                              "e.g. --where method=simclr --where knn_acc>0.5")
    return out


def _matches(value: Any, op: str, wanted: Any) -> bool:
    fn = dict(_OPS)[op]
    if value is None:
        return op == "!=" and str(wanted).lower() not in ("none", "null", "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return fn(float(value), float(wanted))
        except (TypeError, ValueError):
            return False
    if op in ("=", "!="):
        return fn(str(value).lower(), str(wanted).lower())
    return fn(str(value), str(wanted))


def runs_table(runs: str | os.PathLike | Iterable[Run | str | os.PathLike] = "runs", sort_by: str | None = None,
               notebook: str | None = None, exclude: Iterable[Run | str | os.PathLike] = (),
               where: Iterable[str] | Mapping[str, Any] | None = None, status: str | Iterable[str] | None = None,
               limit: int | None = None, ascending: bool = False):
    """pandas DataFrame, one row per run: run, notebook, method, data, backbone, epochs, status, then the
    numeric summary metrics (the leaderboard). ``runs`` is a runs folder (read through its index,
    ``workbench.runs.indexed_runs``) or a list of run folders. ``where`` keeps rows matching every condition
    (``"method=simclr"``, ``"knn_acc>0.5"``; a key that is no column is looked up in the notebook parameters);
    ``status`` keeps those statuses; ``notebook`` keeps only runs of that notebook; ``exclude`` drops runs. Rows are
    sorted by ``sort_by`` (descending unless ``ascending``) when given, else oldest first; ``limit`` keeps the
    first N after sorting (without ``sort_by``: the newest N)."""
    import pandas as pd

    if isinstance(runs, (str, os.PathLike)):
        found = indexed_runs(runs)
    else:
        found = [(r, _entry(r)) for r in (x if isinstance(x, Run) else Run(x) for x in runs)]
    skip = {Path(r).resolve() for r in exclude}
    conditions = parse_where(where)
    statuses = {status} if isinstance(status, str) else set(status or ())
    rows = []
    seen_keys: set[str] = set()
    for r, entry in found:
        if skip and r.path.resolve() in skip:
            continue
        if notebook and entry.get("notebook") != notebook:
            continue
        facts = facts_from_entry(entry)
        if statuses and facts["status"] not in statuses:
            continue
        row = {**facts, **{k: v for k, v in (entry.get("summary") or {}).items() if k not in facts},
               "path": str(r.path)}
        if conditions:
            params = entry.get("parameters") or {}
            lookup = {**params, "tag": entry.get("tag"), **row}
            seen_keys.update(lookup)
            if not all(_matches(lookup.get(k), op, v) for k, op, v in conditions):
                continue
        rows.append(row)
    unknown = [k for k, _, _ in conditions if found and k not in seen_keys and k not in COLUMNS]
    if unknown and not rows:
        raise ValueError(f"--where {unknown[0]!r}: no run has that column or notebook parameter; columns are "
                         f"{list(COLUMNS)} and the summary metrics")
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=[*COLUMNS, "path"])
    table["step"] = table["step"].astype("Int64")  # whole steps, <NA> where a run recorded none
    metric_cols = [c for c in table.columns if c not in (*COLUMNS, "path")]
    table = table[[*COLUMNS, *sorted(metric_cols), "path"]]
    if sort_by is not None:
        if sort_by not in table.columns:
            raise ValueError(f"cannot sort runs by {sort_by!r}; columns are {list(table.columns)}")
        table = table.sort_values(sort_by, ascending=ascending, na_position="last", kind="stable")
        table = table.reset_index(drop=True)
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit={limit!r} must be an integer >= 1")
        table = (table.head(limit) if sort_by is not None else table.tail(limit)).reset_index(drop=True)
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
