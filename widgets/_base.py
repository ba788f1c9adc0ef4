"""Shared plumbing of the widgets: an error area instead of tracebacks, display, static export.

A widget displays live in JupyterLab. In a notebook that ``workbench run`` executes (papermill, no browser:
``workbench.experiments.records.static_display()``), the same cell shows the widget's static picture instead (an
``image/png`` output), so the executed notebook shows every figure when opened without a kernel and stores no
widget state.
"""
from __future__ import annotations

import base64
import functools
import html
from pathlib import Path
from typing import Any, Callable, TypeVar

import ipywidgets as W
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])


def guarded(fn: F) -> F:
    """Decorator for handlers: an exception is shown in the widget's error area (never a traceback in the
    output); success clears the area. The handler's return value is passed through (None on error)."""

    @functools.wraps(fn)
    def wrapper(self: "WidgetBase", *args: Any, **kwargs: Any) -> Any:
        try:
            out = fn(self, *args, **kwargs)
        except Exception as e:  # shown to the user, kept for scripts/tests in last_error
            self.show_error(f"{e}" if str(e) else type(e).__name__)
            return None
        return out

    return wrapper  # type: ignore[return-value]


def as_images(data: Any) -> Any:
    """uint8 images [N, C, H, W] of an ImageDataset / FeatureSet-like object or a tensor; ValueError otherwise."""
    import torch

    images = getattr(data, "images", data)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        desc = (f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor)
                else type(images).__name__)
        raise ValueError(f"expected uint8 images [N, C, H, W] (or an ImageDataset), got {desc}")
    if images.shape[0] == 0:
        raise ValueError("no images given (the selection is empty)")
    return images


class WidgetBase:
    """Base of every widget: ``widget`` (the ipywidgets container shown in Jupyter), ``error`` (an HTML area for
    bad input), ``last_error`` (the message shown, or None), ``to_figure()`` and ``save(path)``."""

    widget: W.Widget
    #: the readable picture of what an image-drawing widget shows (uint8 [H, W, 3], captions drawn in), set by its
    #: ``render``; None for widgets whose view is a plotly figure (their static picture renders ``to_figure``)
    picture: np.ndarray | None = None

    def __init__(self) -> None:
        self.error = W.HTML(value="")
        self.error.add_class("wb-error")  # CSS hook: the browser test fails when one shows a message
        self.last_error: str | None = None

    def show_error(self, message: str) -> None:
        """Show ``message`` in the widget's error area (red box)."""
        self.last_error = message
        self.error.value = (f"<div style='color:#9b1c1c;background:#fde8e8;border:1px solid #f5a3a3;"
                            f"padding:6px;border-radius:4px'>&#9888; {html.escape(message)}</div>")

    def clear_error(self) -> None:
        self.last_error = None
        self.error.value = ""

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The live widget; under ``workbench run`` (no browser) the static picture, as image/png."""
        from workbench.experiments.records import static_display

        if not static_display():
            return self.widget._repr_mimebundle_(**kwargs)
        try:
            png, _ = self.static_picture()
        except Exception as e:  # nothing drawable (bad input): the error area's message, as text
            return {"text/plain": f"{type(self).__name__}: {self.last_error or e}"}
        return {"image/png": base64.b64encode(png).decode("ascii"),
                "text/plain": f"<{type(self).__name__}: static picture; open the notebook in JupyterLab and run it "
                              "for the live widget>"}

    def to_figure(self) -> Any:  # pragma: no cover - every widget overrides
        raise NotImplementedError

    def static_picture(self, width: int | None = None, height: int | None = None) -> tuple[bytes, str]:
        """PNG bytes of what the widget shows, readable without a kernel, and how they were made: "picture" (the
        widget's own ``picture``), else "kaleido" or "pil" (``to_figure()`` rendered by
        ``workbench.inspect.images.figure_png`` at ``width`` x ``height``, default the figure's size)."""
        from workbench.inspect.images import figure_png, png_bytes

        if self.picture is not None:
            return png_bytes(self.picture), "picture"
        return figure_png(self.to_figure(), width, height)

    def save(self, path: str | Path, width: int | None = None, height: int | None = None) -> str:
        """Write what the widget shows to ``path``: ``.png`` (:meth:`static_picture`) or ``.html`` (the plotly
        figure; plotly.js is loaded from one ``plotly.min.js`` written beside it). Returns how: "picture",
        "kaleido", "pil" or "html"."""
        from workbench.inspect.images import write_figure
        from workbench.runs import atomic_write_bytes

        path = Path(path)
        if path.suffix.lower() == ".png":
            png, how = self.static_picture(width, height)
            atomic_write_bytes(path, png)
            return how
        return write_figure(self.to_figure(), str(path), width, height)


def image_figure(pictures: list[Any], titles: list[str] | None = None, title: str = "") -> Any:
    """Plotly figure of uint8 HWC pictures side by side (go.Image traces, y axis downward)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(pictures), subplot_titles=titles)
    for j, pic in enumerate(pictures):
        fig.add_trace(go.Image(z=pic), row=1, col=j + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(title=title, margin=dict(l=10, r=10, t=60, b=10))
    return fig


def gallery_html(uris: list[str], captions: list[str], size: int = 72) -> str:
    """HTML gallery of data-URI images with captions under each."""
    cells = "".join(f"<div style='display:inline-block;margin:3px;text-align:center;font-size:11px'>"
                    f"<img src='{u}' width='{size}' style='image-rendering:pixelated'/><br>{html.escape(c)}</div>"
                    for u, c in zip(uris, captions))
    return f"<div style='max-width:640px'>{cells}</div>"
