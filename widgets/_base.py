"""Shared plumbing of the widgets: an error area instead of tracebacks, display delegation, static export."""
from __future__ import annotations

import functools
import html
from typing import Any, Callable, TypeVar

import ipywidgets as W

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
        return self.widget._repr_mimebundle_(**kwargs)

    def to_figure(self) -> Any:  # pragma: no cover - every widget overrides
        raise NotImplementedError

    def save(self, path: str, width: int = 1000, height: int = 700) -> str:
        """Write what the widget shows to ``path``: ``.html`` (plotly, self-contained; needs nothing) or ``.png``
        (plotly + kaleido with Chromium where available, else composed with PIL from the same figure, with a
        warning). Returns "html", "kaleido" or "pil"."""
        from workbench.inspect.images import write_figure

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
