"""Execute a notebook as a recorded experiment: validate parameters, run it with papermill into a run folder.

A notebook run folder holds, besides what the notebook's library calls write (metrics, checkpoints,
pictures)::

    parameters.json   {"notebook": stem, "source_path": ..., "parameters": {...all, defaults filled...}}
    source.ipynb      the unexecuted notebook (what ``reproduce`` re-executes)
    notebook.ipynb    the executed notebook (saved after every cell, so it can be watched live); widgets in it
                      show their static picture (image/png) and no widget state is stored, so it stays small
                      and shows every figure when opened without a kernel
    status.json       running -> completed | failed (with the failing cell, its source and the error)
    summary.json      what the notebook recorded through ``record_metrics``
"""
from __future__ import annotations

import ast
import dataclasses
import datetime as _dt
import json
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..config import ConfigError, parse_value
from ..executors import record_job
from ..runs import Run, atomic_write_json
from .records import ENV_DISPLAY, ENV_RUN_DIR, PARAMETERS_FILE, _plain
from .table import HEADLINE

RUN_DIR_PARAMETER = "run_dir"
DEFAULT_TIMEOUT = 1800  # seconds per cell
_ENV_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One assignment of a notebook's ``parameters`` cell: its name, default and the type a value must have."""
    name: str
    default: Any

    @property
    def type_name(self) -> str:
        return "any" if self.default is None else type(self.default).__name__

    def accepts(self, value: Any) -> bool:
        """Same type as the default; an int where a float is expected; anything where the default is None."""
        d = self.default
        if d is None:
            return True
        if isinstance(d, bool) or isinstance(value, bool):
            return isinstance(d, bool) and isinstance(value, bool)
        if isinstance(d, float):
            return isinstance(value, (int, float))
        if isinstance(d, (list, tuple)):
            return isinstance(value, (list, tuple))
        return isinstance(value, type(d))

    def coerce(self, value: Any) -> Any:
        """Turn a value given on the command line (a string) into the default's type; other values unchanged."""
        if not isinstance(value, str) or isinstance(self.default, str):
            return value
        if self.default is None:
            return parse_value(value)
        if isinstance(self.default, bool) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        parsed = parse_value(value)
        if isinstance(self.default, (list, tuple)) and isinstance(parsed, str):
            parsed = [parse_value(v) for v in parsed.split(",") if v]
        return parsed

    def describe(self) -> str:
        return f"{self.name}: {self.type_name} = {self.default!r}"


class NotebookError(RuntimeError):
    """A notebook raised while executing; ``.run`` is its run folder (status failed, with the failing cell)."""

    def __init__(self, message: str, run: Run):
        super().__init__(message)
        self.run = run


# ---- reading a notebook -------------------------------------------------------------------------------------

def _read_notebook(path: str | os.PathLike) -> Any:
    import nbformat
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"notebook {path} does not exist")
    return nbformat.read(str(path), as_version=4)


def parameters_cell_index(nb: Any, path: str | os.PathLike = "notebook") -> int:
    """Index of the single code cell tagged ``parameters``; an error naming the notebook if there are 0 or >1."""
    found = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(found) != 1:
        raise ConfigError(f"notebook {path} must have exactly one code cell tagged 'parameters'; found {len(found)}")
    return found[0]


def notebook_parameters(path: str | os.PathLike) -> dict[str, Parameter]:
    """Parse the notebook's ``parameters`` cell: plain ``name = literal`` assignments -> {name: Parameter}."""
    nb = _read_notebook(path)
    source = nb.cells[parameters_cell_index(nb, path)].source
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ConfigError(f"notebook {path}: the parameters cell is not valid Python: {e}") from e
    out: dict[str, Parameter] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value_node = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value_node = node.target.id, node.value
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # a docstring/comment string
            continue
        else:
            raise ConfigError(f"notebook {path}: the parameters cell may only hold `name = value` lines with plain "
                              f"values; line {node.lineno} is `{ast.get_source_segment(source, node)}`")
        try:
            default = ast.literal_eval(value_node)
        except ValueError as e:
            raise ConfigError(f"notebook {path}: parameter {name!r} must have a plain literal value "
                              f"(number, string, bool, None, list, dict); got "
                              f"`{ast.get_source_segment(source, value_node)}`") from e
        out[name] = Parameter(name, default)
    return out


def validate_parameters(spec: Mapping[str, Parameter], given: Mapping[str, Any] | None,
                        notebook: str = "notebook", coerce_strings: bool = False) -> dict[str, Any]:
    """Check ``given`` against the notebook's parameters; return all parameters with defaults filled in.

    An unknown name or a value of the wrong type is a ConfigError listing every accepted name, type and default.
    ``coerce_strings`` turns CLI strings ("3", "true", "a,b") into the default's type first.
    """
    given = dict(given or {})
    problems = []
    values = {name: p.default for name, p in spec.items()}
    for name, value in given.items():
        if name == RUN_DIR_PARAMETER:
            problems.append(f"{name!r} is set by the runner (the new run folder); do not pass it")
            continue
        if name not in spec:
            problems.append(f"unknown parameter {name!r}")
            continue
        p = spec[name]
        if coerce_strings:
            value = p.coerce(value)
        if not p.accepts(value):
            problems.append(f"parameter {name!r}={value!r} must be {p.type_name} (default {p.default!r})")
            continue
        values[name] = value
    if problems:
        accepted = "\n  ".join(p.describe() for p in spec.values()) or "(none)"
        raise ConfigError(f"{notebook}: " + "; ".join(problems) + f"\nthe notebook accepts:\n  {accepted}")
    return values


# ---- kernel -------------------------------------------------------------------------------------------------

KERNEL_NAME = "ssl-workbench"  # the Jupyter kernel of this interpreter, used by papermill and `workbench lab`


def kernel_dir() -> Path:
    """Where this interpreter's kernel specs live (``<sys.prefix>/share/jupyter``); run_notebook and `workbench lab`
    put it first on JUPYTER_PATH, so the ``ssl-workbench`` kernel is this Python even where a user-wide kernel of
    the same name (another checkout's) exists."""
    return Path(sys.prefix) / "share" / "jupyter"


def ensure_kernel(kernel_name: str | None = None) -> str:
    """Return a kernel name that exists. The default, ``ssl-workbench``, is installed into this interpreter's
    prefix (``kernel_dir()``) when missing or when it runs another Python; another name must exist already, except
    ``python3`` (ipykernel's own spec, installed like ssl-workbench when absent)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    name = kernel_name or KERNEL_NAME
    if name not in (KERNEL_NAME, "python3"):
        KernelSpecManager().get_kernel_spec(name)  # NoSuchKernel names it
        return name
    spec_file = kernel_dir() / "kernels" / name / "kernel.json"
    try:
        argv = json.loads(spec_file.read_text()).get("argv") or [""]
        current = os.path.abspath(argv[0]) == os.path.abspath(sys.executable)  # not resolved: venvs link one python
    except (OSError, ValueError):
        current = False
    if not current:
        if name == "python3":
            try:
                KernelSpecManager().get_kernel_spec(name)
                return name
            except NoSuchKernel:
                pass
        from ipykernel.kernelspec import install
        version = ".".join(map(str, sys.version_info[:2]))
        install(kernel_name=name, prefix=sys.prefix,
                display_name=f"SSL Workbench (Python {version})" if name == KERNEL_NAME else None)
    return name


def jupyter_env() -> dict[str, str]:
    """JUPYTER_PATH with this interpreter's kernels first (see ``kernel_dir``)."""
    rest = os.environ.get("JUPYTER_PATH", "")
    return {"JUPYTER_PATH": os.pathsep.join(p for p in (str(kernel_dir()), rest) if p)}


# ---- running ------------------------------------------------------------------------------------------------

def _slug(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.+]+", "-", str(text)).strip("-") or "x"


def _kernel_env(run: Run) -> dict[str, str]:
    """Environment of the kernel: the run folder, widgets as static pictures (no browser shows this kernel's
    outputs live), progress bars off (tqdm's TQDM_DISABLE; the engine's bar also reads CI: the runner reports
    progress itself, see ``NotebookProgress``), the repo importable from any cwd."""
    env = {ENV_RUN_DIR: str(run.path.resolve()), ENV_DISPLAY: "static", "TQDM_DISABLE": "1",
           "CI": os.environ.get("CI") or "true", "PYDEVD_DISABLE_FILE_VALIDATION": "1", "MPLBACKEND": "Agg",
           **jupyter_env()}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return env


class _patched_env:
    """Set environment variables for the kernel launch (papermill starts the kernel with this process's env)."""

    def __init__(self, values: Mapping[str, str]):
        self.values, self.saved = dict(values), {}

    def __enter__(self):
        _ENV_LOCK.acquire()
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _ENV_LOCK.release()


def _excerpt(source: str, lines: int = 8) -> str:
    parts = source.splitlines()
    return "\n".join(parts[:lines]) + ("\n..." if len(parts) > lines else "")


def _source_index(path: Path, executed_index: int) -> int:
    """Index in the source notebook of a cell of the executed one (papermill adds a cell after `parameters`)."""
    injected = parameters_cell_index(_read_notebook(path), path) + 1
    return executed_index - 1 if executed_index > injected else executed_index


def _last_started_cell(executed: Path) -> tuple[int | None, str | None]:
    """(index, source) of the last cell papermill started in a saved executed notebook (the one running when
    execution stopped), or (None, None)."""
    try:
        nb = _read_notebook(executed)
    except Exception:
        return None, None
    started = [i for i, c in enumerate(nb.cells) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    return (started[-1], nb.cells[started[-1]].source) if started else (None, None)


class NotebookProgress:
    """Reports a notebook run while papermill executes it, one line at a time, by watching its run folder from
    this process (nothing runs in the kernel): each code cell as it starts (from the executed notebook papermill
    saves at every cell start: its section heading and first line) and each epoch that a training run under the
    run folder logs to its metrics.jsonl (loss, kNN accuracy). ``report`` receives each line; ``start()`` polls
    every ``interval`` s in a daemon thread, ``stop()`` reads what is left and ends it.
    """

    def __init__(self, run: Run, report: Callable[[str], None], interval: float = 1.0):
        self.run, self.report, self.interval = run, report, interval
        self._started = time.monotonic()
        self._cells_seen: set[int] = set()
        self._nb_mtime: int | None = None
        self._offsets: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, message: str | None = None) -> "NotebookProgress":
        """Report ``message`` (if any), then poll in a daemon thread."""
        if message:
            self._say(message)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="notebook-progress")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def _say(self, text: str) -> None:
        m, sec = divmod(int(time.monotonic() - self._started), 60)
        self.report(f"[{m}:{sec:02d}] {text}")

    def poll(self) -> None:
        """Report the epochs logged and the cells started since the last poll (a file caught mid-write is read
        again at the next poll). Epochs first: when both arrive in one poll, the epochs are the end of the cell that
        was running and the cell is the next one."""
        try:
            self._poll_epochs()
            self._poll_cells()
        except Exception as e:  # progress is a courtesy: it never fails the run
            self.report(f"(progress unavailable: {type(e).__name__}: {e})")
            self._stop.set()

    def _poll_cells(self) -> None:
        path = self.run.path / "notebook.ipynb"
        try:
            mtime = path.stat().st_mtime_ns
            if mtime == self._nb_mtime:
                return
            cells = json.loads(path.read_text()).get("cells", [])
        except (OSError, ValueError):  # not written yet, or caught mid-write
            return
        self._nb_mtime = mtime
        code = [i for i, c in enumerate(cells) if c.get("cell_type") == "code"
                and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
        for n, i in enumerate(code):
            meta = cells[i].get("metadata", {}).get("papermill", {})
            if i in self._cells_seen or not meta.get("start_time"):
                continue
            self._cells_seen.add(i)
            section = next((_heading(cells[k]) for k in range(i - 1, -1, -1) if _heading(cells[k])), None)
            first = next((ln.strip() for ln in _source(cells[i]).splitlines()
                          if ln.strip() and not ln.strip().startswith("#")), "")
            first = first if len(first) <= 70 else first[:67] + "..."
            self._say(f"cell {n + 1}/{len(code)}" + (f" · {section}" if section else "") + f" · {first}")

    def _poll_epochs(self) -> None:
        for metrics in sorted(self.run.path.rglob("metrics.jsonl")):
            offset = self._offsets.get(metrics, 0)
            try:
                with open(metrics, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n") + 1  # complete lines only
            self._offsets[metrics] = offset + end
            for line in chunk[:end].decode("utf-8", "replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("kind") == "epoch":
                    self._say(self._epoch_line(metrics.parent, rec))

    def _epoch_line(self, train_dir: Path, rec: Mapping[str, Any]) -> str:
        try:
            total = json.loads((train_dir / "config.json").read_text())["train"]["epochs"]
        except (OSError, ValueError, KeyError, TypeError):
            total = None
        parts = [f"{train_dir.name}: epoch {rec.get('epoch')}" + (f"/{total}" if total else "")]
        for key, label, fmt in (("loss", "loss", ".4f"), ("knn_acc", "kNN", ".3f")):
            if isinstance(rec.get(key), (int, float)):
                parts.append(f"{label} {rec[key]:{fmt}}")
        return "  ".join(parts)


def _source(cell: Mapping[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _heading(cell: Mapping[str, Any]) -> str | None:
    """The first Markdown heading of a markdown cell, without its #s (None for other cells)."""
    if cell.get("cell_type") != "markdown":
        return None
    for line in _source(cell).splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip() or None
    return None


def run_notebook(path: str | os.PathLike, parameters: Mapping[str, Any] | None = None,
                 runs_dir: str | os.PathLike = "runs", name: str | None = None, kernel_name: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT,
                 *, coerce_strings: bool = False, raise_on_error: bool = True, tag: str | None = None,
                 notebook_name: str | None = None, progress: Callable[[str], None] | None = None) -> Run:
    """Execute notebook ``path`` with ``parameters`` into a new run under ``runs_dir``; return the run.

    Parameters are validated against the notebook's ``parameters`` cell before anything runs. The run folder is
    named after the ``method``/``data`` parameters where the notebook has them (else the notebook's name), or
    ``name``. ``timeout`` is per cell, in seconds. A cell that raises records status failed with the cell's
    index and source and the error, then raises NotebookError (``raise_on_error=False`` returns the run).
    ``tag`` (e.g. a sweep name) is stored in parameters.json; ``notebook_name`` overrides the recorded notebook
    name (``reproduce`` runs a stored source.ipynb under its original name). ``progress`` (e.g. ``print``)
    receives a line per cell started and per training epoch logged (``NotebookProgress``); None is silent.
    Widgets show their static pictures in the executed notebook and no widget state is stored in it.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    path = find_notebook(path)
    stem = notebook_name or path.stem
    spec = notebook_parameters(path)
    values = validate_parameters(spec, parameters, notebook=str(path), coerce_strings=coerce_strings)
    kernel = ensure_kernel(kernel_name)

    method = values.get("method") if isinstance(values.get("method"), str) else stem
    data = values.get("data") if isinstance(values.get("data"), str) else "notebook"
    run = Run.create(runs_dir, _slug(method), _slug(data), name=name)
    record_job(run)  # under an executor (sweep job, SLURM array task): job id, slot, log files -> executor.json
    record = {"notebook": stem, "source_path": str(path.resolve()), "parameters": _plain(values),
              "given": _plain(dict(parameters or {})), "kernel": kernel, "tag": tag}
    atomic_write_json(run.path / PARAMETERS_FILE, record)
    shutil.copyfile(path, run.path / "source.ipynb")
    out_nb = run.path / "notebook.ipynb"
    started = time.time()
    run.set_status("running", notebook=stem, started=_dt.datetime.now().isoformat(timespec="seconds"))
    watcher = (NotebookProgress(run, progress).start(f"executing {path.name} into {run.path}")
               if progress is not None else None)
    try:
        with _patched_env(_kernel_env(run)):
            injected = dict(values)
            if RUN_DIR_PARAMETER in spec:  # the notebook declares it; otherwise the env var alone carries it
                injected[RUN_DIR_PARAMETER] = str(run.path.resolve())
            pm.execute_notebook(str(path), str(out_nb), parameters=injected,
                                kernel_name=kernel, progress_bar=False, log_output=False,
                                execution_timeout=timeout, request_save_on_cell_execute=True,
                                store_widget_state=False)
    except PapermillExecutionError as e:
        source_cell = _source_index(path, e.cell_index)
        error = f"{e.ename}: {e.evalue}"
        run.set_status("failed", notebook=stem, error=error, ename=e.ename, evalue=e.evalue,
                       cell_index=source_cell, executed_cell_index=e.cell_index,
                       cell_source=_excerpt(e.source), seconds=round(time.time() - started, 2))
        message = (f"notebook {stem} failed in cell {source_cell} ({error}); executed notebook: {out_nb}\n"
                   f"cell source:\n{_excerpt(e.source)}")
        if raise_on_error:
            raise NotebookError(message, run) from None
        return run
    except BaseException as e:  # a cell timed out, the kernel died, Ctrl-C: the record must not stay "running"
        executed, source = _last_started_cell(out_nb)
        source_cell = _source_index(path, executed) if executed is not None else None
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        run.set_status("failed", notebook=stem, error=error, ename=type(e).__name__, cell_index=source_cell,
                       executed_cell_index=executed, cell_source=_excerpt(source or ""),
                       seconds=round(time.time() - started, 2))
        if not isinstance(e, Exception):
            raise
        if raise_on_error:
            raise NotebookError(f"notebook {stem} failed in cell {source_cell} ({error}); executed notebook: "
                                f"{out_nb}", run) from e
        return run
    finally:
        if watcher is not None:
            watcher.stop()
    run.set_status("completed", notebook=stem, seconds=round(time.time() - started, 2))
    return run


def in_checkout() -> bool:
    """True when this package runs from a source checkout (its folder beside pyproject.toml and notebooks/)."""
    root = Path(__file__).resolve().parents[2]
    return (root / "notebooks").is_dir() and (root / "pyproject.toml").exists()


def notebooks_dir() -> Path:
    """The notebooks that ship with the workbench: ``notebooks/`` of the source checkout this package runs from,
    else the copy inside the installed package (``workbench/notebooks``, package data of the wheel)."""
    package = Path(__file__).resolve().parents[1]
    return package.parent / "notebooks" if in_checkout() else package / "notebooks"


repo_notebooks_dir = notebooks_dir  # the earlier name


def find_notebook(name: str | os.PathLike) -> Path:
    """A notebook path as given, or a shipped notebook by name: ``quickstart`` -> 00_quickstart.ipynb,
    ``tutorial_03_collapse``, ``pretrain.ipynb``. A FileNotFoundError lists the shipped names."""
    path = Path(name)
    if path.exists():
        return path
    folder = notebooks_dir()
    shipped = sorted(folder.glob("*.ipynb"))
    wanted = path.name[:-6] if path.name.endswith(".ipynb") else path.name
    for nb in shipped:
        if wanted in (nb.stem, re.sub(r"^\d+_", "", nb.stem)):
            return nb
    names = ", ".join(re.sub(r"^\d+_", "", nb.stem) for nb in shipped) or f"(none in {folder})"
    raise FileNotFoundError(f"notebook {str(name)!r} is neither a file nor a shipped notebook; shipped: {names}")


def quickstart(runs_dir: str | os.PathLike = "runs", parameters: Mapping[str, Any] | None = None,
               timeout: float | None = DEFAULT_TIMEOUT, coerce_strings: bool = False,
               progress: Callable[[str], None] | None = None) -> Run:
    """The main job: execute notebooks/00_quickstart.ipynb through papermill into a new run under ``runs_dir``
    (``parameters`` override its defaults, e.g. ``{"epochs": 2}``; ``progress`` as in :func:`run_notebook`)."""
    nb = notebooks_dir() / "00_quickstart.ipynb"
    return run_notebook(nb, parameters, runs_dir=runs_dir, timeout=timeout, coerce_strings=coerce_strings,
                        progress=progress)


HEADLINE_LABELS = {"knn_acc": ("kNN accuracy", ".3f"), "linear_acc": ("linear probe accuracy", ".3f"),
                   "rankme": ("RankMe (effective rank)", ".1f"), "std": ("embedding std", ".4f")}  # how to show them
BASELINE_COLUMNS = (("", "pretrained"), ("_random_init", "random init"), ("_raw_pixels", "raw pixels"))


def headline_table(summary: Mapping[str, Any]) -> str:
    """The headline comparison of a summary as a short text table: one row per headline metric it holds
    (``headline_metrics``: kNN and linear accuracy, RankMe, std), one column per model (pretrained, random init,
    raw pixels); "-" where a value is missing. "" when the summary holds none."""
    rows = []
    for key in HEADLINE:
        label, fmt = HEADLINE_LABELS.get(key, (key, ".4g"))
        values = [summary.get(key + suffix) for suffix, _ in BASELINE_COLUMNS]
        if any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            rows.append([label] + [format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool)
                                   else "-" for v in values])
    if not rows:
        return ""
    head = [""] + [name for _, name in BASELINE_COLUMNS]
    first = max(len(r[0]) for r in rows)
    widths = [max(len(head[c]), *(len(r[c]) for r in rows)) for c in range(1, len(head))]
    lines = [" " * first + "".join(f"  {h:>{w}}" for h, w in zip(head[1:], widths))]
    lines += [f"{r[0]:<{first}}" + "".join(f"  {v:>{w}}" for v, w in zip(r[1:], widths)) for r in rows]
    return "\n".join(lines)


def describe_run(run: Run, table: bool = True) -> str:
    """Where an executed notebook, its pictures and its summary are, then (with ``table``) the headline comparison
    (pretrained vs random init vs raw pixels, :func:`headline_table`) where the notebook recorded one."""
    pics = sorted(p.name for p in run.path.glob("*") if p.suffix in (".png", ".html"))
    status = run.status
    seconds = status.get("seconds")
    lines = [f"run folder:        {run.path}",
             f"status:            {status.get('status')}"
             + (f" ({seconds // 60:.0f} min {seconds % 60:.0f} s)" if isinstance(seconds, (int, float)) else ""),
             f"executed notebook: {run.path / 'notebook.ipynb'}"]
    if pics:
        lines.append(f"pictures:          {', '.join(pics)}")
    summary = run.summary
    headline = {key + suffix for key in HEADLINE for suffix, _ in BASELINE_COLUMNS}
    flat = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in sorted(summary.items())
            if "/" not in k and not isinstance(v, (dict, list)) and k not in headline}
    if summary:
        lines.append(f"summary:           {run.path / 'summary.json'}")
    if flat:
        lines.append("other results:     " + json.dumps(flat, default=str))
    comparison = headline_table(summary) if table else ""
    if comparison:
        lines += ["", comparison]
    return "\n".join(lines)
