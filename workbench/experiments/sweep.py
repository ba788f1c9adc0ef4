"""Parameter sweeps over a notebook: the product of a grid, one recorded run per combination, resumable."""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from ..runs import Run, indexed_runs
from .runner import (DEFAULT_TIMEOUT, NotebookError, find_notebook, notebook_parameters, run_notebook,
                     validate_parameters)


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
    """Completed runs of ``notebook`` (by name) under ``runs_dir``, keyed by their canonical parameters (read
    through the runs index)."""
    found = {}
    for run, entry in indexed_runs(runs_dir):
        if entry.get("notebook") == notebook and entry["status"].get("status") == "completed":
            found[_key(entry.get("parameters") or {})] = run
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


def sweep(path: str | os.PathLike, grid: Mapping[str, list], runs_dir: str | os.PathLike = "runs", jobs: int | None = None,
          name: str | None = None, parameters: Mapping[str, Any] | None = None,
          timeout: float | None = DEFAULT_TIMEOUT, coerce_strings: bool = False, executor: Any = None,
          progress: Callable[[str], None] | None = None):
    """Run notebook ``path`` once per combination of ``grid`` (fixed ``parameters`` apply to all).

    Every combination is validated before any runs. Combinations already completed under ``runs_dir`` (same
    notebook, same full parameters) are skipped, so a sweep killed halfway resumes; a failing combination is
    recorded as failed and the others go on. Where they run (``workbench.executors``): ``executor=None`` without
    ``jobs`` in this process one after another; ``"local"`` (or ``jobs > 1``) in local processes with a GPU or a
    share of the CPU cores each (``jobs`` at once; default one per GPU); ``"slurm"`` as one SLURM job array through submitit (``jobs``: array
    jobs at once); or an executor object (``LocalExecutor(...)``, ``SlurmExecutor(...)``). ``progress`` (e.g.
    ``print``) receives a line as each combination starts (in this process) or finishes.
    Returns a pandas DataFrame, one row per combination: run, status, skipped, the grid values, error, and
    the numeric metrics of each run's summary.
    """
    import pandas as pd

    path = find_notebook(path).resolve()  # a path, or a shipped notebook's name
    runs_dir = Path(runs_dir).resolve()
    spec = notebook_parameters(path)
    fixed = dict(parameters or {})
    points = []
    for point in grid_points(grid):
        given = {**fixed, **point}
        full = validate_parameters(spec, given, notebook=str(path), coerce_strings=coerce_strings)
        points.append((point, given, full))

    done = completed_runs(runs_dir, path.stem)
    results: list[tuple[dict, str | None, bool, str | None]] = []
    todo = []
    for point, given, full in points:
        key = _key(full)
        if key in done:
            results.append((point, str(done[key].path), True, None))
        else:
            todo.append((point, full))
    say = progress or (lambda line: None)
    if todo and (len(points) - len(todo)):
        say(f"sweep: {len(points) - len(todo)} of {len(points)} combination(s) already completed, skipped")
    label = lambda point: " ".join(f"{k}={v}" for k, v in point.items())  # noqa: E731
    if executor is None and (not jobs or jobs <= 1 or len(todo) <= 1):
        for i, (point, full) in enumerate(todo, 1):
            say(f"sweep [{i}/{len(todo)}] {label(point)}: running")
            run_path = _execute(str(path), full, str(runs_dir), name, timeout)
            say(f"sweep [{i}/{len(todo)}] {label(point)}: {Run(run_path).status.get('status')}  {run_path}")
            results.append((point, run_path, False, None))
    elif todo:
        from ..executors import make_executor, wait

        ex = make_executor(executor, jobs=jobs)
        say(f"sweep: {len(todo)} combination(s) on {ex.describe() if hasattr(ex, 'describe') else ex}")
        try:
            futures = ex.submit_all([(_execute, (str(path), full, str(runs_dir), name, timeout)) for _, full in todo])
            index = {id(f): i for i, f in enumerate(futures)}

            def finished(count: int, total: int, fut: Any) -> None:
                point = todo[index[id(fut)]][0]
                try:
                    run_path = fut.result()
                    state = Run(run_path).status.get("status")
                except Exception as e:  # the job itself died (killed, out of memory, cancelled)
                    run_path, state = None, f"job failed ({type(e).__name__})"
                job = getattr(fut, "job_id", None)
                say(f"sweep [{count}/{total}] {label(point)}: {state}" + (f"  job {job}" if job else "")
                    + (f"  {run_path}" if run_path else ""))

            wait(futures, progress=finished)
        finally:
            ex_shutdown = getattr(ex, "shutdown", None)
            if ex_shutdown is not None and ex is not executor:
                ex_shutdown()
        for (point, _), fut in zip(todo, futures):
            try:
                results.append((point, fut.result(), False, None))
            except Exception as e:
                results.append((point, None, False, f"{type(e).__name__}: {str(e).strip().splitlines()[-1:]}"))

    order = {_key(p): i for i, (p, _, _) in enumerate(points)}
    results.sort(key=lambda r: order[_key(r[0])])
    rows = []
    for point, run_path, skipped, job_error in results:
        if run_path is None:
            rows.append({"run": None, "status": "failed", "skipped": False, **point, "error": job_error})
            continue
        run = Run(run_path)
        status = run.status
        row: dict[str, Any] = {"run": run_path, "status": status.get("status"), "skipped": skipped, **point,
                               "error": status.get("error")}
        row.update({k: v for k, v in run.summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        rows.append(row)
    return pd.DataFrame(rows)
