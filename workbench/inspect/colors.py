"""Colours of the inspection views, from plotly's scales: the categorical palette, colour maps for heat maps,
and marker colour specs for scatter plots (with the per-point colours a viewer sees).

plotly is imported inside the functions (``import workbench.inspect`` stays light); the palette and the
scales' anchor colours are read once and cached. Colour maps interpolate the anchors with numpy, so heat maps
of any size stay fast.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

UNLABELED = "#bbbbbb"  # points without a label (negative category)


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb[:3]))


@functools.lru_cache(maxsize=4096)
def _parse(color: str) -> tuple[int, int, int] | None:
    """A CSS colour string (hex, name, ``rgb(...)`` / ``rgba(...)`` with float parts) -> (r, g, b) or None."""
    s = color.strip()
    if s.startswith("rgb") and "(" in s and ")" in s:
        parts = s[s.index("(") + 1:s.index(")")].split(",")[:3]
        return tuple(int(round(float(p))) for p in parts)  # type: ignore[return-value]
    from PIL import ImageColor

    try:
        return ImageColor.getrgb(s)[:3]  # type: ignore[return-value]
    except ValueError:
        return None


def to_rgb(color: Any, default: tuple[int, int, int] = (31, 119, 180)) -> tuple[int, int, int]:
    """A colour string -> (r, g, b) ints in 0..255; ``default`` for anything unparseable (None, arrays)."""
    parsed = _parse(color) if isinstance(color, str) else None
    return parsed if parsed is not None else default


@functools.lru_cache(maxsize=None)
def palette() -> tuple[str, ...]:
    """The 20 categorical colours (lower-case hex): plotly's D3 (matplotlib's tab10), then its colour-blind-safe
    ``Safe`` set (far from every D3 colour)."""
    from plotly.colors import qualitative

    return tuple(_hex(to_rgb(c)) for c in list(qualitative.D3) + list(qualitative.Safe[:10]))


@functools.lru_cache(maxsize=None)
def palette_rgb() -> tuple[tuple[int, int, int], ...]:
    """:func:`palette` as (r, g, b) ints, for drawing with PIL / numpy."""
    return tuple(to_rgb(c) for c in palette())


@functools.lru_cache(maxsize=64)
def _stops(scale: str | tuple[tuple[float, str], ...]) -> tuple[np.ndarray, np.ndarray]:
    """(positions [K], anchor colours float [K, 3] in [0, 1]) of a plotly colour scale: a name ("Inferno",
    "viridis", "Jet", "Blues_r", ...) or ((position, colour), ...)."""
    if isinstance(scale, str):
        from plotly.colors import get_colorscale

        try:
            scale = tuple((p, c) for p, c in get_colorscale(scale))
        except Exception as e:  # plotly's PlotlyError for an unknown name
            raise ValueError(f"colormap: unknown colour scale {scale!r} ({e})") from None
    pos = np.asarray([float(p) for p, _ in scale], dtype=np.float64)
    rgb = np.asarray([to_rgb(c, (0, 0, 0)) for _, c in scale], dtype=np.float64) / 255.0
    pos.setflags(write=False)
    rgb.setflags(write=False)
    return pos, rgb


def colormap(values: Any, scale: str | Sequence[Sequence[Any]] = "inferno") -> np.ndarray:
    """Values in [0, 1] (any shape; NaN -> 0, clipped) -> float32 RGB in [0, 1] of shape [..., 3] through a plotly
    colour scale (name or [[position, colour], ...]), linear between its anchors (a discrete scale, whose bins
    repeat each colour at both ends, gives exact colours)."""
    key = scale if isinstance(scale, str) else tuple((float(p), str(c)) for p, c in scale)
    pos, rgb = _stops(key)
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    return np.stack([np.interp(v, pos, rgb[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def _discrete_scale(colors: Sequence[str]) -> list[list[Any]]:
    """Plotly colour scale giving code i of ``len(colors)`` codes (cmin -0.5, cmax n - 0.5) the colour colors[i]."""
    n = len(colors)
    out: list[list[Any]] = []
    for i, c in enumerate(colors):
        out += [[i / n, c], [(i + 1) / n, c]]
    return out


def color_spec(values: Any) -> dict[str, Any]:
    """Plotly marker settings colouring points by ``values`` [N] with a numeric array (fast to send and validate
    for 70k points, unlike per-point colour strings): integers -> categories of :func:`palette` (code
    ``v % 20``; negative = unlabeled, gray), bools -> red (False) / green (True), floats -> Viridis."""
    v = np.asarray(values)
    pal = palette()
    if v.dtype == bool:
        return dict(color=v.astype(np.int64), colorscale=_discrete_scale([pal[3], pal[2]]), cmin=-0.5,
                    cmax=1.5, showscale=False)
    if np.issubdtype(v.dtype, np.integer):
        codes = np.where(v < 0, len(pal), v % len(pal)).astype(np.int64)
        return dict(color=codes, colorscale=_discrete_scale(list(pal) + [UNLABELED]), cmin=-0.5,
                    cmax=len(pal) + 0.5, showscale=False)
    return dict(color=v.astype(np.float32), colorscale="Viridis", cmin=float(np.nanmin(v)), cmax=float(np.nanmax(v)),
                showscale=True)


def spec_colors(marker: Any) -> list[str]:
    """Per-point hex colours [N] that a marker's numeric colours map to through its colour scale between cmin
    and cmax (the colours a viewer sees; plotly's defaults where unset: the data's range, Viridis)."""
    get = (lambda k: marker.get(k)) if isinstance(marker, dict) else (lambda k: getattr(marker, k, None))
    color = np.asarray(get("color"), dtype=np.float64)
    scale = get("colorscale") or "Viridis"
    cmin = float(np.nanmin(color)) if get("cmin") is None else float(get("cmin"))
    cmax = float(np.nanmax(color)) if get("cmax") is None else float(get("cmax"))
    rgb = (colormap((color - cmin) / max(cmax - cmin, 1e-12), scale) * 255).round().astype(int)
    return [_hex(c) for c in rgb]
