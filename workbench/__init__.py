"""SSL Workbench: self-supervised visual representation learning on a CPU or GPUs, with notebooks and widgets.

Public API (the rest is importable by path)::

    from workbench import PretrainConfig, TrainConfig, pretrain, start_pretrain, load_trained, Run, list_runs
    run = pretrain(PretrainConfig(method="byol", train=TrainConfig(epochs=5)))
    trained = load_trained(run)        # backbone + image size, mean/std, data; also checkpoints, methods, modules
    evaluate(run)                      # workbench.evaluation.evaluate (imported on first use)
    run_notebook("notebooks/00_quickstart.ipynb", {...}); sweep(...)   # workbench.experiments

``import workbench`` stays light: evaluation and experiment helpers (pandas, papermill) load on first use,
and nothing here imports ipywidgets or plotly.
"""
from __future__ import annotations

from typing import Any

from workbench.config import ConfigError, apply_overrides, from_dict, to_dict
from workbench.runs import Run, list_runs
from workbench.train import (Callback, DataConfig, ModelConfig, PretrainConfig, PretrainHandle, TrainConfig,
                             TrainingDiverged, pretrain, start_pretrain)
from workbench.trained import Trained, extract_features, load_trained

__version__ = "0.1.0"

_LAZY = {"evaluate": ("workbench.evaluation", "evaluate"), "run_notebook": ("workbench.experiments", "run_notebook"),
         "sweep": ("workbench.experiments", "sweep")}


def __getattr__(name: str) -> Any:
    """``workbench.evaluate`` / ``run_notebook`` / ``sweep`` import their packages on first use."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


__all__ = ["ConfigError", "apply_overrides", "from_dict", "to_dict", "Run", "list_runs", "Callback", "DataConfig",
           "ModelConfig", "PretrainConfig", "PretrainHandle", "TrainConfig", "Trained", "TrainingDiverged",
           "extract_features", "load_trained", "pretrain", "start_pretrain", "evaluate", "run_notebook", "sweep", "__version__"]
