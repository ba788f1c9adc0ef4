"""Execute a notebook as a recorded experiment: validate parameters, run it with papermill into a run folder.

A notebook run folder holds, besides what the notebook's library calls write (metrics, checkpoints,
pictures)::

    parameters.json   {"notebook": stem, "source_path": ..., "parameters": {...all, defaults filled...}}
    source.ipynb      the unexecuted notebook (what ``reproduce`` re-executes)
    notebook.ipynb    the executed notebook (saved after every cell, so it can be watched live)
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
from typing import Any, Mapping

from ..config import ConfigError, parse_value
from ..runs import Run, atomic_write_json
from .records import ENV_RUN_DIR, PARAMETERS_FILE, _plain

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

def ensure_kernel(kernel_name: str | None = None) -> str:
    """Return a kernel name that exists; for the default ``python3`` install ipykernel's spec into sys.prefix
    when no spec is found (the kernel then runs this interpreter, so the venv's packages are importable)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    name = kernel_name or "python3"
    try:
        KernelSpecManager().get_kernel_spec(name)
        return name
    except NoSuchKernel:
        if name != "python3":
            raise
    from ipykernel.kernelspec import install
    install(prefix=sys.prefix)
    return name


# ---- running ------------------------------------------------------------------------------------------------

def _slug(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.+]+", "-", str(text)).strip("-") or "x"


def _kernel_env(run: Run) -> dict[str, str]:
    """Environment of the kernel: the run folder, progress bars off (tqdm's TQDM_DISABLE; the engine's bar
    also reads CI), the repo importable from any cwd."""
    env = {ENV_RUN_DIR: str(run.path.resolve()), "TQDM_DISABLE": "1", "CI": os.environ.get("CI") or "true",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1", "MPLBACKEND": "Agg"}
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


def run_notebook(path: str | os.PathLike, parameters: Mapping[str, Any] | None = None,
                 runs_dir: str | os.PathLike = "runs", name: str | None = None, kernel_name: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT,
                 *, coerce_strings: bool = False, raise_on_error: bool = True, tag: str | None = None,
                 notebook_name: str | None = None) -> Run:
    """Execute notebook ``path`` with ``parameters`` into a new run under ``runs_dir``; return the run.

    Parameters are validated against the notebook's ``parameters`` cell before anything runs. The run folder is
    named after the ``method``/``data`` parameters where the notebook has them (else the notebook's name), or
    ``name``. ``timeout`` is per cell, in seconds. A cell that raises records status failed with the cell's
    index and source and the error, then raises NotebookError (``raise_on_error=False`` returns the run).
    ``tag`` (e.g. a sweep name) is stored in parameters.json; ``notebook_name`` overrides the recorded notebook
    name (``reproduce`` runs a stored source.ipynb under its original name).
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    path = Path(path)
    stem = notebook_name or path.stem
    spec = notebook_parameters(path)
    values = validate_parameters(spec, parameters, notebook=str(path), coerce_strings=coerce_strings)
    kernel = ensure_kernel(kernel_name)

    method = values.get("method") if isinstance(values.get("method"), str) else stem
    data = values.get("data") if isinstance(values.get("data"), str) else "notebook"
    run = Run.create(runs_dir, _slug(method), _slug(data), name=name)
    record = {"notebook": stem, "source_path": str(path.resolve()), "parameters": _plain(values),
              "given": _plain(dict(parameters or {})), "kernel": kernel, "tag": tag}
    atomic_write_json(run.path / PARAMETERS_FILE, record)
    shutil.copyfile(path, run.path / "source.ipynb")
    out_nb = run.path / "notebook.ipynb"
    started = time.time()
    run.set_status("running", notebook=stem, started=_dt.datetime.now().isoformat(timespec="seconds"))
    try:
        with _patched_env(_kernel_env(run)):
            injected = dict(values)
            if RUN_DIR_PARAMETER in spec:  # the notebook declares it; otherwise the env var alone carries it
                injected[RUN_DIR_PARAMETER] = str(run.path.resolve())
            pm.execute_notebook(str(path), str(out_nb), parameters=injected,
                                kernel_name=kernel, progress_bar=False, log_output=False,
                                execution_timeout=timeout, request_save_on_cell_execute=True)
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
    run.set_status("completed", notebook=stem, seconds=round(time.time() - started, 2))
    return run


def repo_notebooks_dir() -> Path:
    """``notebooks/`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "notebooks"


def quickstart(runs_dir: str | os.PathLike = "runs", parameters: Mapping[str, Any] | None = None,
               timeout: float | None = DEFAULT_TIMEOUT, coerce_strings: bool = False) -> Run:
    """The main job: execute notebooks/00_quickstart.ipynb through papermill into a new run under ``runs_dir``
    (``parameters`` override its defaults, e.g. ``{"epochs": 2}``)."""
    nb = repo_notebooks_dir() / "00_quickstart.ipynb"
    return run_notebook(nb, parameters, runs_dir=runs_dir, timeout=timeout, coerce_strings=coerce_strings)


def describe_run(run: Run) -> str:
    """A few lines naming where an executed notebook, its pictures and its summary are."""
    pics = sorted(p.name for p in run.path.glob("*") if p.suffix in (".png", ".html"))
    lines = [f"run folder:        {run.path}",
             f"status:            {run.status.get('status')}",
             f"executed notebook: {run.path / 'notebook.ipynb'}"]
    if pics:
        lines.append(f"pictures:          {', '.join(pics)}")
    flat = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in sorted(run.summary.items())
            if "/" not in k and not isinstance(v, (dict, list))}
    if flat:
        lines.append("summary:           " + json.dumps(flat, default=str))
    return "\n".join(lines)
