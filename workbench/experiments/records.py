"""The notebook side of a run: which run folder a notebook records into, and the one call that records metrics.

Contract between the runner and a notebook (kept tiny so a notebook works the same under papermill and
interactively in JupyterLab):

* ``run_notebook`` creates the run folder and sets ``WORKBENCH_RUN_DIR`` in the kernel's environment (and
  injects a ``run_dir`` parameter when the notebook declares one in its ``parameters`` cell).
* In the notebook, ``current_run()`` returns that run. Run interactively (no runner), the first call creates
  a fresh run under ``runs_dir`` and later calls in the same kernel return it.
* ``record_metrics({...})`` merges metrics into the current run's summary.json; nothing scrapes cell outputs.
* ``run_notebook`` also sets ``WORKBENCH_DISPLAY=static``: no browser will ever show a live widget of that
  kernel, so widgets display their static picture (``static_display()``) and no widget state is stored.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from ..runs import PARAMETERS_FILE, Run, atomic_write_json

ENV_RUN_DIR = "WORKBENCH_RUN_DIR"
ENV_DISPLAY = "WORKBENCH_DISPLAY"

_current: Run | None = None


def _plain(value: Any) -> Any:
    """Numbers from numpy/torch/pandas -> Python floats/ints so summary.json stays plain JSON."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "item"):
        try:
            return value.item()
        except (ValueError, RuntimeError):  # a multi-element array/tensor: keep it as a list
            return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def default_runs_dir() -> Path:
    """Where runs go when no folder is named: ``$WORKBENCH_RUNS_DIR``, else the source checkout's ``runs/``
    (so a notebook opened in JupyterLab from ``notebooks/`` records beside the CLI's runs), else ``./runs``."""
    env = os.environ.get("WORKBENCH_RUNS_DIR")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").exists() and (root / "notebooks").is_dir():
        return root / "runs"
    return Path("runs")


def set_current_run(run: Run | str | os.PathLike | None) -> Run | None:
    """Make ``run`` the run that ``current_run``/``record_metrics`` use in this process (None clears it)."""
    global _current
    _current = None if run is None else (run if isinstance(run, Run) else Run(run))
    return _current


def current_run(runs_dir: str | os.PathLike | None = None, *, create: bool = True, method: str = "notebook",
                data: str = "interactive", parameters: Mapping[str, Any] | None = None) -> Run | None:
    """The run this notebook records into.

    Order: the runner's ``WORKBENCH_RUN_DIR`` (papermill), else the run set earlier in this kernel, else (with
    ``create``) a new run ``runs_dir/<time>-<method>-<data>-<id>`` with status running and ``parameters``
    written to parameters.json, so an interactive session leaves the same record as a papermill one.
    ``runs_dir`` None or "" means ``default_runs_dir()``.
    """
    global _current
    env_dir = os.environ.get(ENV_RUN_DIR)
    if env_dir:
        if _current is None or _current.path != Path(env_dir):
            _current = Run(env_dir)
        return _current
    if _current is not None:
        return _current
    if not create:
        return None
    run = Run.create(runs_dir or default_runs_dir(), method, data)
    if parameters is not None:
        atomic_write_json(run.path / PARAMETERS_FILE, {"notebook": None, "parameters": _plain(dict(parameters)),
                                                        "interactive": True})
    run.set_status("running", interactive=True)
    _current = run
    return run


def under_runner() -> bool:
    """True when this process executes inside ``run_notebook`` (papermill)."""
    return bool(os.environ.get(ENV_RUN_DIR))


def static_display() -> bool:
    """True when widgets should display a static picture instead of a live view: the kernel runs under
    ``run_notebook`` (``WORKBENCH_DISPLAY=static``), where outputs are saved but no browser shows them live."""
    return os.environ.get(ENV_DISPLAY, "").lower() == "static"


def record_metrics(values: Mapping[str, Any], run: Run | str | os.PathLike | None = None) -> dict[str, Any]:
    """Merge ``values`` (metric name -> number or plain value) into the run's summary.json; returns the summary.

    ``run`` defaults to ``current_run()``. Run interactively (no runner to close the run), the run is also
    marked completed; under the runner the runner records the final status.
    """
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"record_metrics needs a non-empty dict of metric name -> value, got {values!r}")
    target = current_run() if run is None else (run if isinstance(run, Run) else Run(run))
    merged = target.update_summary(_plain(dict(values)))
    from ..train.loggers import log_summary
    for tracked in {target.path: target, **({target.training_run.path: target.training_run}
                                            if target.training_run is not None else {})}.values():
        log_summary(tracked, _plain(dict(values)))  # TensorBoard / MLflow, where the run was tracked
    if run is None and not under_runner() and target.status.get("status") in ("created", "running"):
        target.set_status("completed", interactive=True)
    return merged


def adopt_training_run(train_run: Run | str | os.PathLike, run: Run | str | os.PathLike | None = None) -> Run:
    """Record a pretraining run made inside a notebook run (``pretrain(config)`` with ``out=<notebook run>/train``)
    as that notebook run's training run (``Run.link_training_run``: links.json, ``training_run``), so ``workbench
    runs``, the RunBrowser, TrainingMonitor, ``load_trained`` and ``evaluate`` read the notebook run's model,
    curves and facts from it by name. Returns the notebook run."""
    target = current_run() if run is None else (run if isinstance(run, Run) else Run(run))
    target.link_training_run(train_run if isinstance(train_run, Run) else Run(train_run))
    return target


def read_parameters(run: Run | str | os.PathLike) -> dict[str, Any]:
    """The parameters.json record of a notebook run ({} for a run not made by a notebook)."""
    path = Path(run) / PARAMETERS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
