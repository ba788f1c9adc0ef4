"""TrainingMonitor: live curves of loss, lr, kNN accuracy, RankMe and embedding std, the held-out embedding
spectrum of each epoch (log scale, light = early, dark = late: dimensional collapse as it happens), with a collapse
warning.

Two ways to attach: pass the monitor as an engine callback (``start_pretrain(config, callbacks=[monitor])``;
records arrive through ``on_step`` / ``on_epoch`` / ``on_end`` in the training thread, so the notebook kernel
stays free), or follow a run folder's metrics.jsonl (``TrainingMonitor(run_or_folder_or_handle)``; ``refresh()``
reads new records; ``start()`` polls in a daemon thread until the run ends).
"""
from __future__ import annotations

import html
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as W

from widgets._base import WidgetBase, guarded
from workbench.inspect.curves import CURVE_METRICS, SPECTRUM, collapse_status, curves_figure, series, spectrum_lines
from workbench.runs import status_text


class TrainingMonitor(WidgetBase):
    """Live training curves. ``source``: None (use as a callback), a Run, a run folder, or a PretrainHandle.
    ``dim``: embedding dimension D for the std rule (default: from the run's on_start info or summary).
    ``min_interval``: the least seconds between redraws triggered by callbacks (the last one always redraws)."""

    def __init__(self, source: Any = None, dim: int | None = None, min_interval: float = 0.5,
                 poll_interval: float = 2.0, autostart: bool = True):
        import plotly.graph_objects as go

        super().__init__()
        self.run = None
        self.dim = dim
        self.min_interval = min_interval
        self.poll_interval = poll_interval
        self.records: list[dict[str, Any]] = []
        self.run_status: dict[str, Any] = {}
        self.collapse = collapse_status([])
        self._lock = threading.Lock()
        self._from_callbacks = False
        self._last_draw = 0.0
        self._poller: threading.Thread | None = None
        self._stop_poll = threading.Event()
        self.header = W.HTML("<i>waiting for a run…</i>")
        self.warning = W.HTML()
        self.fig = go.FigureWidget(curves_figure({"run": []}, dim=dim))
        self.widget = W.VBox([self.error, self.header, self.warning, self.fig])
        self.widget.add_class("wb-training-monitor")  # CSS hook for tests/widgets/test_browser.py
        if source is not None:
            try:
                self.follow(source, start=autostart)
            except Exception as e:
                self.show_error(str(e))

    # -- attaching ---------------------------------------------------------------------------------------------
    def follow(self, source: Any, start: bool = True) -> None:
        """Follow a Run / run folder / PretrainHandle (reads metrics.jsonl); ``start`` polls in a thread."""
        from workbench.runs import Run

        run = getattr(source, "run", None) if not isinstance(source, (Run, str, Path)) else None
        run = run or (source if isinstance(source, Run) else Run(source) if isinstance(source, (str, Path)) else None)
        if run is None:
            raise ValueError(f"cannot follow {type(source).__name__}: pass a Run, a run folder or a PretrainHandle")
        if not run.path.is_dir():
            raise FileNotFoundError(f"run folder {run.path} does not exist")
        self.run = run.training_run or run  # a notebook run's curves live in the training run it links
        self.refresh()
        if start:
            self.start()

    def start(self, interval: float | None = None) -> None:
        """Poll the followed run folder every ``interval`` s in a daemon thread until the run ends."""
        if self.run is None or (self._poller is not None and self._poller.is_alive()):
            return
        self.poll_interval = interval or self.poll_interval
        self._stop_poll.clear()

        def loop() -> None:
            while not self._stop_poll.wait(self.poll_interval):
                self.refresh()
                if self.run_status.get("status") in ("completed", "stopped", "failed", "interrupted"):
                    break

        self._poller = threading.Thread(target=loop, daemon=True, name="training-monitor")
        self._poller.start()

    def stop(self) -> None:
        """Stop polling (callbacks still update the monitor)."""
        self._stop_poll.set()

    # -- engine Callback protocol (called in the training thread) ---------------------------------------------
    def on_start(self, run: Any, info: dict[str, Any]) -> None:
        self.run, self._from_callbacks = run, True
        self.dim = self.dim or info.get("feature_dim")
        self.run_status = {"status": "running"}
        self._redraw(force=True)

    def on_step(self, run: Any, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(dict(record))
        self._redraw()

    def on_epoch(self, run: Any, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(dict(record))
        self._redraw()

    def on_end(self, run: Any, status: dict[str, Any]) -> None:
        self.run_status = dict(status)
        self._redraw(force=True)

    # -- drawing -------------------------------------------------------------------------------------------------
    @guarded
    def refresh(self) -> int:
        """Re-read the followed run's metrics.jsonl and status (callback mode: redraw what arrived); returns the
        number of records shown."""
        if self.run is not None and not self._from_callbacks:
            recs = self.run.metrics()
            with self._lock:
                self.records = recs
            self.run_status = self.run.status
            if self.dim is None:
                self.dim = (self.run.summary.get("pretrain") or {}).get("feature_dim")
        self._redraw(force=True)
        return len(self.records)

    def _redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        try:
            self._draw()
        except Exception as e:  # never raise into the training thread
            self.show_error(f"monitor could not draw: {e}")

    def _draw(self) -> None:
        import plotly.graph_objects as go

        with self._lock:
            recs = list(self.records)
        curves = [m for m in CURVE_METRICS if m != SPECTRUM]
        lines = spectrum_lines(recs)
        ref = str(CURVE_METRICS.index(SPECTRUM) + 1)  # the spectrum panel's axes (x6, y6)
        if len(self.fig.data) > len(curves) + len(lines):  # fewer epochs (a resumed run trimmed its records)
            self.fig.data = self.fig.data[:len(curves) + len(lines)]
        for line in lines[len(self.fig.data) - len(curves):]:  # one trace per new epoch
            self.fig.add_trace(go.Scatter(**line, xaxis=f"x{ref}", yaxis=f"y{ref}"))
        with self.fig.batch_update():
            for k, m in enumerate(curves):
                x, y = series(recs, m)
                self.fig.data[k].x, self.fig.data[k].y = x, y
                self.fig.data[k].mode = "lines+markers" if m == "knn_acc" or len(x) < 3 else "lines"
            for trace, line in zip(self.fig.data[len(curves):], lines):  # colours run early -> late: all change
                trace.update(x=line["x"], y=line["y"], name=line["name"], line=line["line"],
                             hovertemplate=line["hovertemplate"])
            for note in self.fig.layout.annotations:
                if note.name == "spectrum-note":
                    note.visible = not lines
        self.collapse = collapse_status(recs, dim=self.dim)
        name = self.run.path.name if self.run is not None else "run"
        st = status_text(self.run_status) if self.run_status else "?"
        last = next((r for r in reversed(recs) if r.get("kind", "step") == "step"), {})
        self.header.value = (f"<b>{html.escape(name)}</b> — {st}; step {last.get('step', 0)}"
                             + (f", loss {last['loss']:.4f}" if isinstance(last.get('loss'), float) else "")
                             + (f"<br><span style='color:#9b1c1c'>{html.escape(str(self.run_status.get('error')))}"
                                "</span>" if self.run_status.get("error") else ""))
        self.warning.value = (f"<div style='color:#8a4b00;background:#fff4e5;padding:6px;border:1px solid #f0b35e'>"
                              f"&#9888; {html.escape(self.collapse.message)}</div>" if self.collapse.collapsed else "")

    def to_figure(self) -> Any:
        """The current curves as a plain plotly figure (with the 1/sqrt(D) level on the std panel when D is known)."""
        with self._lock:
            recs = list(self.records)
        name = self.run.path.name if self.run is not None else "run"
        title = name + (" — " + self.collapse.message if self.collapse.collapsed else "")
        return curves_figure({name: recs}, dim=self.dim, title=title)
