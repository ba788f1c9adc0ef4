"""Re-execute a recorded notebook run from its stored source notebook and parameters; compare the metrics."""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..runs import Run
from .records import read_parameters
from .runner import DEFAULT_TIMEOUT, run_notebook


def reproduce(run: Run | str | os.PathLike, tolerance: float = 0.01, runs_dir: str | os.PathLike | None = None,
              timeout: float | None = DEFAULT_TIMEOUT):
    """Run ``run``'s stored source.ipynb again with its recorded parameters into a new run; compare summaries.

    ``tolerance`` is the absolute difference allowed per metric (default 0.01: run-to-run noise of an
    accuracy in [0, 1]; a deterministic CPU run reproduces exactly). The new run goes under ``runs_dir``
    (default: beside the original). Returns a pandas DataFrame with columns metric, original, reproduced,
    abs_diff, within_tolerance (one row per numeric metric of either summary); ``.attrs["run"]`` is the new
    run's path and ``.attrs["tolerance"]`` the tolerance used.
    """
    import pandas as pd

    original = run if isinstance(run, Run) else Run(run)
    record = read_parameters(original)
    source = original.path / "source.ipynb"
    if not record or not source.exists():
        raise FileNotFoundError(f"run {original.path} has no parameters.json/source.ipynb: only runs made by "
                                "run_notebook (workbench run / sweep) can be reproduced")
    out_dir = Path(runs_dir) if runs_dir is not None else original.path.parent
    new = run_notebook(source, record.get("parameters", {}), runs_dir=out_dir, timeout=timeout,
                       tag=f"reproduce:{original.path.name}", notebook_name=record.get("notebook"))

    def numeric(summary: dict) -> dict[str, float]:
        return {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    a, b = numeric(original.summary), numeric(new.summary)
    rows = []
    for metric in sorted(set(a) | set(b)):
        x, y = a.get(metric, math.nan), b.get(metric, math.nan)
        diff = abs(x - y)
        same_nan = math.isnan(x) and math.isnan(y) and metric in a and metric in b
        rows.append({"metric": metric, "original": x, "reproduced": y, "abs_diff": diff,
                     "within_tolerance": bool(diff <= tolerance or same_nan)})
    table = pd.DataFrame(rows, columns=["metric", "original", "reproduced", "abs_diff", "within_tolerance"])
    table.attrs["run"] = str(new.path)
    table.attrs["tolerance"] = tolerance
    return table
