"""Training curves from metrics.jsonl records (loss, lr, kNN accuracy, RankMe, embedding std, embedding spectrum),
the collapse rule, and curve figures (single run or overlaid runs).

Embedding spectrum: each epoch record with a kNN evaluation carries ``spectrum``, the top 64 singular values of
the held-out features (L2-normalised rows, centred) over the sum of all of them (metrics.normalized_spectrum).
Drawn on a log scale, one line per epoch from light (early) to dark (late, the last one thick), it shows
dimensional collapse as it happens: the tail of the line drops by decades while the first values grow.

Collapse rule (:func:`collapse_status`), on the median of the last ``window`` step records:
- **std**: the per-dimension std of L2-normalised embeddings is about 1/sqrt(D) when they spread over the
  sphere and 0 under complete collapse (SimSiam, Sec. 4.1). Warn when ``std < std_fraction / sqrt(D)``
  (default 0.3/sqrt(D)). Where D is unknown, warn when std fell below ``std_fraction`` of its early value.
- **RankMe**: the effective rank of the embeddings; warn when it fell below ``rankme_fraction`` (default
  0.25) of its early value (median of the first ``window`` step records) *and* below a floor of
  ``rankme_floor_fraction`` x D (default 0.05 D, at least ``rankme_floor`` = 4 effective dimensions) — dimensional
  collapse. The floor exists because RankMe at a random init is high and every method loses much of it while it
  learns: on 32 px shapes (1000 images, small_cnn width 16, 6 epochs, AdamW 4e-3, D = 128) SimCLR went 44 -> 14.7
  (0.33x), BYOL 47 -> 10.9 (0.23x) and SimSiam 44 -> 5.8 (0.13x) — the fraction alone would flag BYOL, whose
  std kept rising (0.041 -> 0.055) with kNN accuracy flat.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

SPECTRUM = "spectrum"  # the panel of per-epoch spectra (not a step series)
CURVE_METRICS = ("loss", "lr", "knn_acc", "rankme", "std", SPECTRUM)
CURVE_TITLES = {"loss": "loss", "lr": "learning rate", "knn_acc": "kNN accuracy", "rankme": "RankMe",
                "std": "embedding std (normalised)", SPECTRUM: "embedding spectrum"}
SPECTRUM_FLOOR = 1e-7  # spectrum values below this fraction of the largest are float32 round-off: left undrawn
SPECTRUM_NOTE = ("no spectrum recorded yet: it comes with each epoch's kNN check<br>"
                 "(runs from before it, or with knn_every=0, have none)")


def split_records(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(step records, epoch records) of a metrics.jsonl list (records without ``kind`` count as steps)."""
    steps, epochs = [], []
    for r in records:
        (epochs if r.get("kind") == "epoch" else steps).append(r)
    return steps, epochs


def series(records: Sequence[dict[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(step, value) float arrays of ``metric`` over the step records, or the epoch records for ``knn_acc``
    (records without a finite value are skipped)."""
    steps, epochs = split_records(records)
    src = epochs if metric == "knn_acc" else steps
    xs, ys = [], []
    for r in src:
        v = r.get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(r.get("step", len(xs))))
            ys.append(float(v))
    return np.asarray(xs), np.asarray(ys)


@dataclass
class CollapseStatus:
    """Result of the collapse rule: ``collapsed`` when any reason fired; the values it compared."""

    collapsed: bool
    reasons: list[str] = field(default_factory=list)
    std: float | None = None
    std_threshold: float | None = None
    rankme: float | None = None
    rankme_early: float | None = None

    @property
    def message(self) -> str:
        return ("possible collapse: " + "; ".join(self.reasons) + ". " + COLLAPSE_ADVICE[0].upper() + COLLAPSE_ADVICE[1:]
                + ".") if self.collapsed else "no sign of collapse"


COLLAPSE_ADVICE = ("if kNN accuracy falls too: lower the learning rate or raise weight decay, lengthen the warm-up, "
                   "and keep the method's anti-collapse parts as its recipe has them (BYOL/SimSiam predictor and stop-"
                   "gradient, EMA momentum, DINO centering, VICReg variance weight)")


def collapse_status(records: Sequence[dict[str, Any]], dim: int | None = None, std_fraction: float = 0.3,
                    rankme_fraction: float = 0.25, window: int = 3, rankme_floor: float = 4.0,
                    rankme_floor_fraction: float = 0.05) -> CollapseStatus:
    """Apply the module's collapse rule to metric records; ``dim`` = embedding dimension D (None: unknown)."""
    _, std = series(records, "std")
    _, rk = series(records, "rankme")
    st = CollapseStatus(False)
    if std.size:
        st.std = float(np.median(std[-window:]))
        if dim:
            st.std_threshold = std_fraction / math.sqrt(dim)
        elif std.size > window:
            st.std_threshold = std_fraction * float(np.median(std[:window]))
        if st.std_threshold is not None and st.std < st.std_threshold:
            st.reasons.append(f"embedding std {st.std:.4f} < {st.std_threshold:.4f}"
                              + (f" (= {std_fraction}/sqrt({dim}))" if dim else f" ({std_fraction} x its early value)"))
    if rk.size > window:
        st.rankme = float(np.median(rk[-window:]))
        st.rankme_early = float(np.median(rk[:window]))
        floor = max(rankme_floor, rankme_floor_fraction * dim) if dim else rankme_floor
        if st.rankme < rankme_fraction * st.rankme_early and st.rankme < floor:
            st.reasons.append(f"RankMe {st.rankme:.1f} < {rankme_fraction} x its early value {st.rankme_early:.1f} "
                              f"and < {floor:.1f} effective dimensions"
                              + (f" ({rankme_floor_fraction} x D={dim})" if dim else ""))
    st.collapsed = bool(st.reasons)
    return st


CURVE_YLABELS = {"loss": "loss", "lr": "learning rate", "knn_acc": "accuracy", "rankme": "effective rank",
                 "std": "std per dimension", SPECTRUM: "σ_i / Σσ (log)"}


def spectra(records: Sequence[dict[str, Any]]) -> list[tuple[Any, list[float]]]:
    """(epoch, normalised spectrum) of the epoch records that carry a ``spectrum``, in record order."""
    return [(r.get("epoch"), list(r["spectrum"])) for r in split_records(records)[1]
            if isinstance(r.get("spectrum"), (list, tuple)) and len(r["spectrum"])]


def spectrum_lines(records: Sequence[dict[str, Any]], color: str | None = None,
                   name: str = "") -> list[dict[str, Any]]:
    """Scatter keyword dicts (x = index 1..k, y = σ_i / Σσ) of a run's spectra: one per epoch, from light (early) to
    dark (late) on the Blues scale, the last one thick; with ``color`` (overlaid runs) the last epoch's only."""
    from workbench.inspect.colors import colormap

    found = spectra(records)
    if color is not None:
        found = found[-1:]
    n, out = len(found), []
    for i, (epoch, values) in enumerate(found):
        last = i == n - 1
        if color is None:
            rgb = colormap([0.35 + 0.65 * (i + 1) / n], "Blues")[0]
            c = "#{:02x}{:02x}{:02x}".format(*(int(round(255 * v)) for v in rgb))
        else:
            c = color
        label = f"{name + ' ' if name else ''}epoch {epoch}" + (" (last)" if last and color is None else "")
        y = np.asarray(values, dtype=float)
        y[y < SPECTRUM_FLOOR * y[0]] = np.nan  # numerically zero (float32 features): not drawn, not 1e-16 on log y
        out.append(dict(x=np.arange(1, len(values) + 1), y=y, mode="lines", name=label,
                        showlegend=False, legendgroup=name or None, line=dict(color=c, width=3 if last else 1.2),
                        hovertemplate=f"{label}<br>σ_%{{x}} / Σσ = %{{y:.3g}}<extra></extra>"))
    return out


def panel_grid(n: int, cols: int = 3) -> list[tuple[int, int, int]]:
    """(row, first column, column span) of ``n`` panels in rows of at most ``cols``, on a grid of ``n_rows`` x
    lcm-of-row-lengths columns, so a shorter last row widens its panels instead of leaving an empty slot."""
    cols = max(1, min(cols, n)) if n else 1
    rows = [cols] * (n // cols) + ([n % cols] if n % cols else [])
    width = math.lcm(*rows) if rows else 1
    out = []
    for r, k in enumerate(rows):
        span = width // k
        out += [(r + 1, c * span + 1, span) for c in range(k)]
    return out


def curves_figure(runs: dict[str, Sequence[dict[str, Any]]], metrics: Sequence[str] = CURVE_METRICS,
                  dim: int | None = None, title: str = "", cols: int = 3) -> Any:
    """Plotly figure with one subplot per metric (titled, y axis labelled; rows of at most ``cols``, a shorter last
    row with wider panels) and one line per run (``runs``: name -> records). Several runs get a legend above the
    panels; one run none (the title names it). With ``dim``, the std panel shows the healthy 1/sqrt(D) level and
    the collapse threshold. The ``spectrum`` panel (log y) has one line per epoch for one run, the last epoch's per
    run for several, and a short note (annotation named "spectrum-note") when no record carries a spectrum."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from workbench.inspect.colors import palette

    grid = panel_grid(len(metrics), cols)
    rows = grid[-1][0] if grid else 1
    width = max((c + span - 1 for _, c, span in grid), default=1)
    specs = [[None] * width for _ in range(rows)]
    for r, c, span in grid:
        specs[r - 1][c - 1] = {"colspan": span}
    fig = make_subplots(rows=rows, cols=width, specs=specs, subplot_titles=[CURVE_TITLES.get(m, m) for m in metrics],
                        horizontal_spacing=0.08 if width <= 3 else 0.075, vertical_spacing=0.16)
    for i, (name, recs) in enumerate(runs.items()):
        color = palette()[i % len(palette())]
        for j, m in enumerate(metrics):
            r, c, _ = grid[j]
            if m == SPECTRUM:
                for line in spectrum_lines(recs, color if len(runs) > 1 else None, name if len(runs) > 1 else ""):
                    fig.add_trace(go.Scatter(**line), row=r, col=c)
                continue
            x, y = series(recs, m)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if m == "knn_acc" or len(x) < 3 else "lines",
                                     name=name, legendgroup=name, showlegend=j == 0, line=dict(color=color),
                                     marker=dict(color=color)), row=r, col=c)
    for j, m in enumerate(metrics):
        r, c, _ = grid[j]
        fig.update_yaxes(title_text=CURVE_YLABELS.get(m, m), title_standoff=4, row=r, col=c)
        fig.update_xaxes(title_text="singular value index" if m == SPECTRUM else "step", title_standoff=2, row=r,
                         col=c)
    if SPECTRUM in metrics:
        j = list(metrics).index(SPECTRUM)
        r, c, _ = grid[j]
        fig.update_yaxes(type="log", exponentformat="power", row=r, col=c)
        ref = "" if j == 0 else str(j + 1)  # make_subplots numbers the axes of the panels in order
        fig.add_annotation(text=SPECTRUM_NOTE, name="spectrum-note", xref=f"x{ref} domain", yref=f"y{ref} domain",
                           x=0.5, y=0.5, showarrow=False, font=dict(size=11, color="#666666"),
                           visible=not any(spectra(recs) for recs in runs.values()))
    if dim and "std" in metrics:
        r, c, _ = grid[list(metrics).index("std")]
        fig.add_hline(y=1 / math.sqrt(dim), line_dash="dot", line_color="green", row=r, col=c,
                      annotation_text="1/sqrt(D): spread", annotation_position="top left",
                      annotation_font_size=10)
        fig.add_hline(y=0.3 / math.sqrt(dim), line_dash="dash", line_color="red", row=r, col=c,
                      annotation_text="collapse threshold", annotation_position="bottom left",
                      annotation_font_size=10)
    several = len(runs) > 1
    fig.update_layout(title=title, height=300 * rows + (40 if several else 0), showlegend=several,
                      legend=dict(orientation="h", x=0, y=1.08, yanchor="bottom"),
                      margin=dict(l=60, r=20, t=90 if several else 70, b=40))
    return fig
