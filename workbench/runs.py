"""Run records: one directory per run, written atomically, readable by notebooks, widgets and the CLI.

Layout (README, "Runs")::

    runs/<YYYYmmdd-HHMMSS>-<method>-<data>-<id>/
        config.json  env.json  metrics.jsonl  status.json  summary.json  [links.json]
        checkpoints/last.pt  checkpoints/epoch-0003.pt ...   (state dicts only)
        cache/                                                (features, 2-D embeddings)

Every JSON and checkpoint is written to a temporary file in the same folder and renamed, so a reader
never sees half a file and a crash never destroys the previous version.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

STATUSES = ("created", "running", "completed", "failed")
LINKS_FILE = "links.json"  # named links to other run folders (a notebook run -> the run it trained)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file and rename (the checkpoint on disk is always whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def environment() -> dict[str, Any]:
    """Versions, git commit, device and host facts recorded in env.json."""
    def version(mod: str) -> str | None:
        try:
            return __import__(mod).__version__
        except Exception:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except Exception:
        commit = None
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "torchvision": version("torchvision"), "timm": version("timm"), "numpy": version("numpy"),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(), "git_commit": commit, "argv": sys.argv,
    }


class Run:
    """A run directory. Cheap to construct; reads files on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status.get('status')!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- creation ---------------------------------------------------------------------------------------
    @classmethod
    def create(cls, runs_dir: str | os.PathLike, method: str, data: str, config: dict[str, Any] | None = None,
               name: str | None = None) -> "Run":
        """New run folder ``runs_dir/<time>-<method>-<data>-<id>`` with config.json, env.json, status created."""
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        slug = name or f"{stamp}-{method}-{data}-{secrets.token_hex(3)}"
        run = cls(Path(runs_dir) / slug)
        run.path.mkdir(parents=True, exist_ok=False)
        if config is not None:
            run.write_config(config)
        atomic_write_json(run.path / "env.json", environment())
        run.set_status("created")
        return run

    # -- files ------------------------------------------------------------------------------------------
    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    def _read_json(self, name: str) -> dict[str, Any]:
        p = self.path / name
        return json.loads(p.read_text()) if p.exists() else {}

    @property
    def config(self) -> dict[str, Any]:
        return self._read_json("config.json")

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.path / "config.json", config)

    @property
    def env(self) -> dict[str, Any]:
        return self._read_json("env.json")

    @property
    def status(self) -> dict[str, Any]:
        return self._read_json("status.json")

    def set_status(self, status: str, **details: Any) -> None:
        """Record ``status`` (created/running/completed/failed) with details such as ``error`` or ``step``."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        record = {"status": status, "updated": _dt.datetime.now().isoformat(timespec="seconds"), **details}
        atomic_write_json(self.path / "status.json", record)

    @property
    def training_run(self) -> "Run | None":
        """The pretraining run this (notebook) run trained into a sub-folder, from links.json's ``training_run``
        (a path relative to this folder); None when it has no such link or the linked folder is gone."""
        ref = self._read_json(LINKS_FILE).get("training_run")
        if not isinstance(ref, str):
            return None
        path = Path(ref) if Path(ref).is_absolute() else self.path / ref
        return Run(path) if path.is_dir() else None

    def link_training_run(self, run: "Run") -> None:
        """Record ``run`` as this run's training run (relative path when it lies inside this folder)."""
        try:
            ref = str(run.path.resolve().relative_to(self.path.resolve()))
        except ValueError:
            ref = str(run.path.resolve())
        atomic_write_json(self.path / LINKS_FILE, {**self._read_json(LINKS_FILE), "training_run": ref})

    @property
    def summary(self) -> dict[str, Any]:
        return self._read_json("summary.json")

    def update_summary(self, values: dict[str, Any]) -> dict[str, Any]:
        """Merge ``values`` into summary.json (atomically) and return the merged summary."""
        merged = {**self.summary, **values}
        atomic_write_json(self.path / "summary.json", merged)
        return merged

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (a line is a step or an epoch record)."""
        line = json.dumps(record, default=_json_default, allow_nan=True)
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(line + "\n")
            f.flush()

    def metrics(self) -> list[dict[str, Any]]:
        """All metric records so far (a torn last line, from a live writer, is ignored)."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    # -- checkpoints ------------------------------------------------------------------------------------
    def checkpoint_path(self, name: str = "last") -> Path:
        return self.checkpoints_dir / f"{name}.pt"

    def save_checkpoint(self, state: dict[str, Any], name: str = "last") -> Path:
        path = self.checkpoint_path(name)
        atomic_torch_save(state, path)
        return path

    def checkpoints(self) -> list[Path]:
        return sorted(self.checkpoints_dir.glob("*.pt")) if self.checkpoints_dir.exists() else []

    def load_checkpoint(self, name: str = "last", map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Load a checkpoint with ``weights_only=True``; a clear error if the run has none."""
        path = self.checkpoint_path(name)
        if not path.exists():
            have = [p.stem for p in self.checkpoints()]
            raise FileNotFoundError(f"run {self.path} has no checkpoint {name!r} at {path}; "
                                    + (f"available: {have}" if have else "it has no checkpoints at all "
                                       "(was it pretrained? run `workbench pretrain ...` first)"))
        return torch.load(path, map_location=map_location, weights_only=True)


def list_runs(runs_dir: str | os.PathLike) -> list[Run]:
    """Run folders (those holding a status.json or config.json) directly under ``runs_dir``, oldest first."""
    root = Path(runs_dir)
    if not root.exists():
        return []
    found: Iterable[Path] = (p for p in root.iterdir()
                             if p.is_dir() and ((p / "status.json").exists() or (p / "config.json").exists()))
    return [Run(p) for p in sorted(found)]
