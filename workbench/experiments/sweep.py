"""Parameter sweeps over a notebook: the product of a grid, one recorded run per combination, resumable."""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any, Mapping

from ..runs import Run, list_runs
from .records import read_parameters
from .runner import DEFAULT_TIMEOUT, NotebookError, notebook_parameters, run_notebook, validate_parameters


def _key(values: Mapping[str, Any]) -> str:
    """Canonical form of a parameter dict (JSON, sorted keys; 2 and 2.0 compare equal through float)."""
    def norm(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): norm(x) for k, x in v.items()}
        return str(v)
    return json.dumps(norm(dict(values)), sort_keys=True)


def completed_runs(runs_dir: str | os.PathLike, notebook: str) -> dict[str, Run]:
    """Completed runs of ``notebook`` (by name) under ``runs_dir``, keyed by their canonical parameters."""
    found = {}
    for run in list_runs(runs_dir):
        rec = read_parameters(run)
        if rec.get("notebook") == notebook and run.status.get("status") == "completed":
            found[_key(rec.get("parameters", {}))] = run
    return found


def grid_points(grid: Mapping[str, list]) -> list[dict[str, Any]]:
    """All combinations of the grid, in order (last name varies fastest)."""
    for name, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"sweep grid entry {name!r} must be a non-empty list of values, got {values!r}")
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def _execute(path: str, values: dict[str, Any], runs_dir: str, tag: str | None, timeout: float | None) -> str:
    """One combination (runs in a worker process for jobs > 1); a failing notebook is recorded, not raised."""
    try:
        run = run_notebook(path, values, runs_dir=runs_dir, raise_on_error=False, tag=tag, timeout=timeout)
    except NotebookError as e:  # pragma: no cover - raise_on_error=False returns instead
        run = e.run
    return str(run.path)


def sweep(path: str | os.PathLike, grid: Mapping[str, list], runs_dir: str | os.PathLike = "runs", jobs: int = 1,
          name: str | None = None, parameters: Mapping[str, Any] | None = None,
          timeout: float | None = DEFAULT_TIMEOUT, coerce_strings: bool = False):
    """Run notebook ``path`` once per combination of ``grid`` (fixed ``parameters`` apply to all).

    Every combination is validated before any runs. Combinations already completed under ``runs_dir`` (same
    notebook, same full parameters) are skipped, so a sweep killed halfway resumes; a failing combination is
    recorded as failed and the others go on. ``jobs > 1`` runs combinations in that many processes.
    Returns a pandas DataFrame, one row per combination: run, status, skipped, the grid values, error, and
    the numeric metrics of each run's summary.
    """
    import pandas as pd

    path = Path(path)
    spec = notebook_parameters(path)
    fixed = dict(parameters or {})
    points = []
    for point in grid_points(grid):
        given = {**fixed, **point}
        full = validate_parameters(spec, given, notebook=str(path), coerce_strings=coerce_strings)
        points.append((point, given, full))

    done = completed_runs(runs_dir, path.stem)
    results: list[tuple[dict, str, bool]] = []
    todo = []
    for point, given, full in points:
        key = _key(full)
        if key in done:
            results.append((point, str(done[key].path), True))
        else:
            todo.append((point, full))
    if jobs <= 1 or len(todo) <= 1:
        for point, full in todo:
            results.append((point, _execute(str(path), full, str(runs_dir), name, timeout), False))
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx) as pool:
            futures = {pool.submit(_execute, str(path), full, str(runs_dir), name, timeout): point
                       for point, full in todo}
            for fut in cf.as_completed(futures):
                results.append((futures[fut], fut.result(), False))

    order = {_key(p): i for i, (p, _, _) in enumerate(points)}
    results.sort(key=lambda r: order[_key(r[0])])
    rows = []
    for point, run_path, skipped in results:
        run = Run(run_path)
        status = run.status
        row: dict[str, Any] = {"run": run_path, "status": status.get("status"), "skipped": skipped, **point,
                               "error": status.get("error")}
        row.update({k: v for k, v in run.summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        rows.append(row)
    return pd.DataFrame(rows)
