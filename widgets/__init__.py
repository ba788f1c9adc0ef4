"""Jupyter widgets (ipywidgets 8 + plotly FigureWidget; plotly 7 needs anywidget) composed from workbench.inspect.

Every widget shows itself in a notebook cell, reports bad input in its error area (``last_error``) instead of a
traceback, and exports what it shows with ``to_figure()`` (plotly) and ``save(path)`` (.html or .png).
"""
from widgets.attention import AttentionViewer
from widgets.augmentation import AugmentationExplorer
from widgets.embedding import EmbeddingExplorer
from widgets.monitor import TrainingMonitor
from widgets.reconstruction import ReconstructionViewer
from widgets.runs import RunBrowser

__all__ = ["AugmentationExplorer", "AttentionViewer", "ReconstructionViewer", "EmbeddingExplorer",
           "TrainingMonitor", "RunBrowser"]
