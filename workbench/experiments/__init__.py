"""Notebooks as experiments: papermill runs into run folders, sweeps, reproduction, reading results back.

A notebook records into ``current_run()`` and reports its metrics with ``record_metrics({...})``;
``run_notebook``/``sweep``/``reproduce`` execute notebooks into run folders; ``runs_table`` is the leaderboard.
Papermill is imported only when a notebook is executed, so a notebook importing this package stays light.
"""
from workbench.experiments.records import (ENV_RUN_DIR, adopt_training_run, current_run, default_runs_dir,
                                           read_parameters, record_metrics, set_current_run, under_runner)
from workbench.experiments.reproduce import reproduce
from workbench.experiments.runner import (NotebookError, Parameter, describe_run, ensure_kernel, notebook_parameters,
                                          find_notebook, notebooks_dir, quickstart, repo_notebooks_dir, run_notebook,
                                          validate_parameters)
from workbench.experiments.sweep import sweep
from workbench.experiments.table import (compare_summaries, curves_frame, headline_metrics, plot_curves, run_facts,
                                         runs_table)

__all__ = [
    "ENV_RUN_DIR", "NotebookError", "Parameter", "adopt_training_run", "compare_summaries", "current_run",
    "curves_frame", "default_runs_dir", "describe_run", "ensure_kernel", "find_notebook", "notebooks_dir", "headline_metrics", "notebook_parameters",
    "plot_curves", "quickstart",
    "read_parameters", "record_metrics", "repo_notebooks_dir", "reproduce", "run_facts", "run_notebook",
    "runs_table", "set_current_run", "sweep", "under_runner", "validate_parameters",
]
