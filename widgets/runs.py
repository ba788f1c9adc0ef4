"""RunBrowser: a table of the runs in a folder, filter and sort, select several to overlay their curves and
compare their summaries."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import ipywidgets as W

from widgets._base import WidgetBase, guarded
from workbench.experiments.table import runs_table
from workbench.inspect.curves import curves_figure


class RunBrowser(WidgetBase):
    """Runs under ``runs_dir`` (``workbench.runs.list_runs``): method, data, backbone, epochs, status and key
    summary metrics. ``filter`` (text, matched case-insensitively against every column), ``sort`` (column) and
    ``descending``; ``select`` (several run names) overlays their curves and tabulates their summaries."""

    def __init__(self, runs_dir: str | Path = "runs", metrics: tuple[str, ...] = ("loss", "knn_acc", "rankme")):
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.curve_metrics = metrics
        self.table = None
        self.shown = None
        wide = {"description_width": "initial"}  # labels are never cut to the default 90 px
        self.filter = W.Text(value="", description="filter", placeholder="method, data, status…", style=wide,
                             layout=W.Layout(width="280px"))
        self.sort = W.Dropdown(options=["run"], value="run", description="sort by", style=wide,
                               layout=W.Layout(width="260px"))
        self.descending = W.Checkbox(value=False, description="descending", indent=False,
                                     layout=W.Layout(width="auto"))
        # as wide as the longest run name (monospace-ish estimate); plain names, never cut
        self.select = W.SelectMultiple(options=[], description="compare", rows=8, style=wide,
                                       layout=W.Layout(width="auto", min_width="420px"))
        self.refresh_button = W.Button(description="refresh")
        self.table_area = W.HTML()
        self.compare_area = W.HTML()
        # the curves' FigureWidget is made at the first selection: no empty axes before one, and plotly's widget
        # (a second of imports and set-up, more while a run trains) does not hold up the first display
        self.fig: Any = None
        self.plot_box = W.Box([], layout=W.Layout(display="none"))
        self.widget = W.VBox([self.error, W.HBox([self.filter, self.sort, self.descending, self.refresh_button]),
                              self.table_area, self.select, self.plot_box, self.compare_area])
        self.widget.add_class("wb-run-browser")  # CSS hook for tests/widgets/test_browser.py
        self.filter.observe(self._on_table, names="value")
        self.sort.observe(self._on_table, names="value")
        self.descending.observe(self._on_table, names="value")
        self.select.observe(self._on_select, names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.refresh()

    @guarded
    def refresh(self) -> None:
        """Re-scan the runs folder and redraw."""
        from workbench.runs import list_runs, status_text

        if not self.runs_dir.is_dir():
            raise FileNotFoundError(f"runs folder {self.runs_dir} does not exist (pretrain something first, "
                                    "or pass the folder your runs are in)")
        self._runs = {r.path.name: r for r in list_runs(self.runs_dir)}
        table = drop_repeated_columns(runs_table(list(self._runs.values())).drop(columns=["path"]))
        if len(table):  # "stopped at epoch 9.7 of 25" rather than the bare status word
            table["status"] = [status_text(self._runs[n].status) for n in table["run"]]
        self.table = table
        cols = list(self.table.columns)
        keep = self.sort.value if self.sort.value in cols else "run"
        self.sort.options = cols
        self.sort.value = keep
        self._update_table()
        self.clear_error()

    @guarded
    def _on_table(self, change: Any = None) -> None:
        self._update_table()

    def _update_table(self) -> None:
        df = self.table
        q = self.filter.value.strip().lower()
        if q and len(df):
            mask = df.astype(str).apply(lambda col: col.str.lower().str.contains(q, regex=False)).any(axis=1)
            df = df[mask]
        if len(df) and self.sort.value in df.columns:
            df = df.sort_values(self.sort.value, ascending=not self.descending.value, na_position="last", kind="stable")
        self.shown = df
        if len(df):
            self.table_area.value = df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")
        else:
            self.table_area.value = ("<i>no runs match the filter</i>" if len(self.table)
                                     else f"<i>no runs in {html.escape(str(self.runs_dir))} yet</i>")
        names = list(df["run"]) if len(df) else []
        selected = tuple(s for s in self.select.value if s in names)
        self.select.options = names
        self.select.value = selected
        self._update_compare()

    @guarded
    def _on_select(self, change: Any = None) -> None:
        self._update_compare()

    def _update_compare(self) -> None:
        sel = list(self.select.value)
        if self.fig is None and not sel:  # nothing chosen yet: no plot to make or empty
            self.plot_box.layout.display = "none"
            self.compare_area.value = "<i>select one or more runs above to overlay their curves and summaries</i>"
            return
        fig = curves_figure({n: self._curves(n) for n in sel}, self.curve_metrics,
                            cols=len(self.curve_metrics))
        if self.fig is None:
            import plotly.graph_objects as go

            self.fig = go.FigureWidget(curves_figure({}, self.curve_metrics, cols=len(self.curve_metrics)))
            self.fig.layout.height = 340
            self.plot_box.children = (self.fig,)
        with self.fig.batch_update():
            self.fig.data = []
            self.fig.add_traces(list(fig.data))  # each trace keeps its subplot's axes
            self.fig.layout.showlegend = fig.layout.showlegend
            self.fig.layout.legend = fig.layout.legend
            self.fig.layout.margin = fig.layout.margin
        self.plot_box.layout.display = "flex" if sel else "none"
        if not sel:
            self.compare_area.value = "<i>select one or more runs above to overlay their curves and summaries</i>"
            return
        import pandas as pd

        rows = self.table.set_index("run").loc[sel]
        flat = {n: {k: v for k, v in self._runs[n].summary.items() if isinstance(v, (int, float, str))}
                for n in sel}
        extra = pd.DataFrame(flat).T.reindex(sel)
        comp = drop_repeated_columns(rows.join(extra[[c for c in extra.columns if c not in rows.columns]])).T
        self.compare_area.value = comp.to_html(float_format=lambda v: f"{v:.4g}", na_rep="")

    def _curves(self, name: str) -> list[dict[str, Any]]:
        """metrics.jsonl records of a run (of its linked training run, for a notebook run that trained one)."""
        run = self._runs[name]
        return (run.training_run or run).metrics()

    def to_figure(self) -> Any:
        """Curves of the selected runs (all shown runs when none is selected), overlaid."""
        names = list(self.select.value) or (list(self.shown["run"]) if self.shown is not None and len(self.shown)
                                            else [])
        return curves_figure({n: self._curves(n) for n in names}, self.curve_metrics,
                             cols=len(self.curve_metrics), title=f"runs in {self.runs_dir}")


def drop_repeated_columns(df: Any) -> Any:
    """``df`` without a ``pretrain_X`` column where a column ``X`` holds the same value in every row that has one
    (a notebook run's summary repeats its training run's ``pretrain_knn_acc`` as ``knn_acc``)."""
    import pandas as pd

    drop = []
    for c in df.columns:
        base = c[len("pretrain_"):] if isinstance(c, str) and c.startswith("pretrain_") else None
        if base in df.columns:
            a, b = df[c], df[base]
            both = a.notna() & b.notna()
            same = (pd.to_numeric(a[both], errors="coerce") - pd.to_numeric(b[both], errors="coerce")).abs() < 1e-9
            if same.all() and not (a.notna() & b.isna()).any():
                drop.append(c)
    return df.drop(columns=drop)
