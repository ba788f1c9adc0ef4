"""Jupyter widgets (ipywidgets 8 + plotly FigureWidget; plotly 7 needs anywidget) composed from workbench.inspect.

Every widget shows itself in a notebook cell, reports bad input in its error area (``last_error``) instead of a
traceback, and exports what it shows with ``to_figure()`` (plotly) and ``save(path)`` (.html or .png).
"""
from widgets._lazy import defer_rfc3987_syntax

defer_rfc3987_syntax()  # before plotly's FigureWidget pulls in jsonschema (see widgets/_lazy.py)

from widgets.attention import AttentionViewer  # noqa: E402
from widgets.augmentation import AugmentationExplorer  # noqa: E402
from widgets.embedding import EmbeddingExplorer  # noqa: E402
from widgets.monitor import TrainingMonitor  # noqa: E402
from widgets.reconstruction import ReconstructionViewer  # noqa: E402
from widgets.runs import RunBrowser  # noqa: E402

__all__ = ["AugmentationExplorer", "AttentionViewer", "ReconstructionViewer", "EmbeddingExplorer",
           "TrainingMonitor", "RunBrowser"]
