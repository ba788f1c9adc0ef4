"""Run records: one directory per run, written atomically, readable by notebooks, widgets and the CLI.

Layout (README, "Runs")::

    runs/<YYYYmmdd-HHMMSS>-<method>-<data>-<id>/
        config.json  env.json  metrics.jsonl  status.json  summary.json  [links.json]  .lock
        checkpoints/last.pt  [checkpoints/epoch-0003.pt  step-00000150.pt ...]   (state dicts only; the numbered
                                                              files with train.keep_checkpoints)
        cache/                                                (features, 2-D embeddings)

Every JSON and checkpoint is written to a temporary file in the same folder and renamed, so a reader
never sees half a file and a crash never destroys the previous version (files get the mode the umask gives).

One writer per run: a trainer holds ``<run>/.lock`` (``Run.acquire_writer``, an ``fcntl.flock`` the kernel
releases when the process dies) for its whole life; a second writer gets :class:`RunLockedError` naming the
holder's pid and host. ``Run.status`` reads a ``running`` record whose writer is gone (lock free, or its pid dead
on this host) as ``interrupted``. README, "What happens when things go wrong".
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import pickle
import platform
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from workbench.config import ConfigError

STATUSES = ("created", "running", "completed", "stopped", "failed", "interrupted")  # stopped: stop() ended it early
LINKS_FILE = "links.json"  # named links to other run folders (a notebook run -> the run it trained)
LOCK_FILE = ".lock"        # the writer lock of a run folder (content: the holder's pid, host, start time)
TMP_SUFFIX = ".tmp"        # temporary files of the atomic writers are named .<file>.<random>.tmp
PARAMETERS_FILE = "parameters.json"  # a notebook run's notebook name and parameters (workbench.experiments)
INDEX_DIR = ".index"       # under a runs folder: the runs index (runs.json snapshot, log.jsonl updates, lock)


def status_text(status: dict[str, Any]) -> str:
    """A status.json record as a person reads it: "completed", "stopped at epoch 9.7 of 25" (stop() ended the run
    before its course; ``epoch``/``epochs`` or ``step``/``total_steps``), "failed", ..."""
    state = str(status.get("status", "?"))
    if state != "stopped":
        return state
    epoch, epochs = status.get("epoch"), status.get("epochs")
    if isinstance(epoch, (int, float)) and isinstance(epochs, (int, float)):
        return f"stopped at epoch {epoch:.1f} of {epochs:g}"
    step, total = status.get("step"), status.get("total_steps")
    return f"stopped at step {step} of {total}" if step is not None and total else "stopped"


class RunLockedError(RuntimeError):
    """Another live process writes this run (it holds ``<run>/.lock``); ``holder`` is its pid/host/start record."""

    def __init__(self, path: Path, holder: dict[str, Any]):
        self.path, self.holder = path, holder
        since = f" (since {holder['since']})" if holder.get("since") else ""
        who = (f"pid {holder.get('pid')} on host {holder.get('host')!r}{since}" if holder.get("pid")
               else "another process (it has not written its pid yet)")
        self.hint = ("wait for it to finish, or stop it with `kill -TERM <pid>` (it checkpoints and marks itself "
                     "interrupted), then resume")
        super().__init__(f"run {path} is being written by {who}; a run folder has one writer at a time\n"
                         f"hint: {self.hint}")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: truncated or corrupt, not plain weights, or from another run."""

    def __init__(self, message: str, hint: str | None = None):
        self.hint = hint
        super().__init__(message + (f"\nhint: {hint}" if hint else ""))


def _temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"


def _open_new(tmp: Path) -> int:
    """Create ``tmp`` exclusively with mode 0666 minus the umask (what ``open`` gives), return its descriptor."""
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with os.fdopen(_open_new(tmp), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file and rename (the checkpoint on disk is always whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with os.fdopen(_open_new(tmp), "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` the same file as ``src`` atomically (a hard link renamed into place; a copy where the file
    system has no hard links)."""
    src, dst = Path(src), Path(dst)
    tmp = _temp_path(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            atomic_write_bytes(tmp, src.read_bytes())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors a user can act on (:class:`CheckpointError` naming the
    file): truncated or corrupt files, and files holding Python objects (which are refused, never executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = [ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln or "global" in ln.lower()]
        found = [ln for ln in found if "weights_only" not in ln]
        raise CheckpointError(
            f"{path} is not a plain-weights checkpoint: it holds Python objects that are not loaded for safety"
            + (f" ({found[0][:160]})" if found else ""),
            "use a checkpoint written by `workbench pretrain` (state dicts only); do not load a file you did not "
            "write yourself") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        size = path.stat().st_size if path.exists() else 0
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({size} bytes; {reason})",
            "resume from another checkpoint in that folder (copy it to last.pt), or start a new run") from None


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


def _host() -> str:
    return socket.gethostname()


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc; None where unknown), so a pid reused
    by another process is not mistaken for the writer."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _process_start(pid)
    return start is None or now is None or now == start


_HELD: dict[str, "RunLock"] = {}  # run folder (resolved) -> the writer lock this process holds on it
_HELD_GUARD = threading.Lock()


class RunLock:
    """The writer lock of one run folder, held by this process until :meth:`release` (or the process ends)."""

    def __init__(self, run: "Run", fd: int):
        self.run, self._fd = run, fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def announce(self) -> None:
        """Write this process as the holder (pid, host, start time) into the lock file, where a refused second
        writer reads it. A resume announces only once it has checked its checkpoint, so a resume that cannot
        start leaves even the lock file as it was."""
        record = {"pid": os.getpid(), "host": _host(), "since": _dt.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(record).encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        with _HELD_GUARD:
            if _HELD.get(self.run._key) is self:
                del _HELD[self.run._key]
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock is still released when the object goes
        try:
            self.release()
        except Exception:
            pass


def _forget_locks_in_child() -> None:
    """A forked child (a DataLoader worker, say) is not the writer: close its copies of the lock descriptors -
    closing, never unlocking, which would release the parent's lock - so the lock ends with the writer itself."""
    for lock in list(_HELD.values()):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


def _try_flock(fd: int, mode: int, wait_s: float) -> bool:
    """flock ``fd`` without blocking, retrying for ``wait_s`` (a reader's probe holds it for microseconds)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


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
        atomic_write_json(run.path / "env.json", {"run_id": secrets.token_hex(8), **environment()})
        run.set_status("created")
        return run

    @property
    def run_id(self) -> str | None:
        """The random id minted when the folder was made (env.json ``run_id``; None for older runs). Checkpoints
        carry it, so one copied in from another run is recognised."""
        value = self.env.get("run_id")
        return value if isinstance(value, str) else None

    # -- the one writer ---------------------------------------------------------------------------------
    @property
    def _key(self) -> str:
        return str(self.path.resolve())

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    def lock_holder(self) -> dict[str, Any]:
        """Who holds (or last announced holding) the lock: pid, host, since ({} when unknown). The lock file's
        record, corrected on Linux by the kernel's own list of lock holders (/proc/locks) when the file still
        names an earlier holder."""
        try:
            record = json.loads(self.lock_path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            record = {}
        record = record if isinstance(record, dict) else {}
        try:
            inode = os.stat(self.lock_path).st_ino
            for line in Path("/proc/locks").read_text().splitlines():
                parts = line.split()
                if "FLOCK" in parts and len(parts) > 5 and parts[5].rsplit(":", 1)[-1] == str(inode):
                    pid = int(parts[4])
                    if pid != record.get("pid") or record.get("host") != _host():
                        record = {"pid": pid, "host": _host()}  # it has not announced itself yet
                    break
        except (OSError, ValueError, IndexError):
            pass
        return record

    def acquire_writer(self, wait_s: float = 1.0, announce: bool = True) -> RunLock:
        """Take this run's writer lock (``<run>/.lock``, ``fcntl.flock``) for the life of the writer; the kernel
        releases it when the process dies. A live holder (another process, or another writer in this one) is a
        :class:`RunLockedError` naming its pid and host. ``announce``: write this process into the lock file now
        (else call ``RunLock.announce`` later)."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"run folder {self.path} does not exist")
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            if not _try_flock(fd, fcntl.LOCK_EX, wait_s):
                raise RunLockedError(self.path, self.lock_holder())
        except BaseException:
            os.close(fd)
            raise
        lock = RunLock(self, fd)
        if announce:
            lock.announce()
        with _HELD_GUARD:
            _HELD[self._key] = lock
        return lock

    def writer_alive(self, record: dict[str, Any] | None = None) -> bool | None:
        """True when a live process writes this run, False when its writer is gone, None when that cannot be
        told (a writer on another host without a lock file). With a lock file the lock decides; otherwise the
        pid recorded in ``record`` (the status) on this host."""
        if self.lock_path.exists():
            if self._key in _HELD:
                return True
            try:
                fd = os.open(self.lock_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return None
            try:
                free = _try_flock(fd, fcntl.LOCK_SH, 0.0)
                if free:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                return not free
            finally:
                os.close(fd)
        record = self.recorded_status if record is None else record
        pid = record.get("pid")
        if not isinstance(pid, int) or record.get("host") != _host():
            return None
        return _pid_alive(pid, record.get("pid_start"))

    def _write_guard(self) -> RunLock | None:
        """For writes from outside the trainer (evaluate, notebooks): a RunLockedError while another live writer
        holds the lock, else the lock taken for the moment of the write (None when this process holds it, or the
        folder has never had a locking writer)."""
        if self._key in _HELD or not self.lock_path.exists():
            return None
        return self.acquire_writer(announce=False)

    def remove_orphans(self) -> list[Path]:
        """Delete temporary files (``.<name>.<random>.tmp``) that killed writers left in the folder and in
        checkpoints/; call it only while holding the writer lock. Returns what was removed."""
        removed = []
        for folder in (self.path, self.checkpoints_dir):
            if folder.is_dir():
                for p in folder.glob(f".*{TMP_SUFFIX}"):
                    if p.is_file():
                        p.unlink(missing_ok=True)
                        removed.append(p)
        return removed

    # -- files ------------------------------------------------------------------------------------------
    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    def _read_json(self, name: str) -> dict[str, Any]:
        """A JSON record of the run ({} when absent); a ValueError naming the file when it is not valid JSON."""
        p = self.path / name
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} is corrupt: not valid JSON ({e.msg} at line {e.lineno}); restore it or remove "
                              "the run folder") from None

    @property
    def config(self) -> dict[str, Any]:
        return self._read_json("config.json")

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.path / "config.json", config)

    @property
    def env(self) -> dict[str, Any]:
        return self._read_json("env.json")

    @property
    def recorded_status(self) -> dict[str, Any]:
        """status.json as written (a dead writer's record still says ``running``)."""
        return self._read_json("status.json")

    @property
    def status(self) -> dict[str, Any]:
        """status.json, with a ``running`` record whose writer is gone read as ``interrupted`` (``recorded_status``
        keeps what the file says; ``step`` is the last step it recorded)."""
        record = self.recorded_status
        if record.get("status") != "running" or self.writer_alive(record) is not False:
            return record
        record = self.recorded_status  # the writer may have finished between the two reads
        if record.get("status") != "running":
            return record
        who = f"pid {record.get('pid')} on {record.get('host')}" if record.get("pid") else "its writer"
        return {**record, "status": "interrupted", "recorded_status": "running",
                "reason": f"{who} stopped without closing the run (killed?)"}

    def set_status(self, status: str, **details: Any) -> None:
        """Record ``status`` (created/running/completed/stopped/failed/interrupted) with details such as ``error`` or
        ``step``. A ``running`` record also names this process (pid, host) and the time (``heartbeat``)."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        now = _dt.datetime.now().isoformat(timespec="seconds")
        record: dict[str, Any] = {"status": status, "updated": now}
        if status == "running":
            record.update(pid=os.getpid(), pid_start=_process_start(os.getpid()), host=_host(), heartbeat=now)
        record.update(details)
        previous = None
        if status == "running":  # heartbeats rewrite a running status often: the index changes on a change only
            try:
                previous = json.loads((self.path / "status.json").read_text()).get("status")
            except (OSError, ValueError, AttributeError):
                previous = None
        atomic_write_json(self.path / "status.json", record)
        if previous != "running" or status != "running":
            update_index(self)

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
        update_index(self)

    @property
    def summary(self) -> dict[str, Any]:
        return self._read_json("summary.json")

    def update_summary(self, values: dict[str, Any]) -> dict[str, Any]:
        """Merge ``values`` into summary.json (atomically) and return the merged summary."""
        guard = self._write_guard()  # never while another live process trains this run
        try:
            merged = {**self.summary, **values}
            atomic_write_json(self.path / "summary.json", merged)
        finally:
            if guard is not None:
                guard.release()
        update_index(self)
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

    # -- the runs index ---------------------------------------------------------------------------------
    def recorded_status_or_none(self) -> str | None:
        """The ``status`` field of status.json as written (None when absent or unreadable)."""
        try:
            value = json.loads((self.path / "status.json").read_text())
            return value.get("status") if isinstance(value, dict) else None
        except (OSError, ValueError):
            return None

    def index_stamp(self) -> list[int]:
        """mtimes (ns) of status.json and summary.json (0 when absent): an index entry with other stamps is stale."""
        return _stamp(str(self.path))

    def index_entry(self) -> dict[str, Any] | None:
        """What the runs index keeps of this run (None when the folder is not a run): the recorded status (without
        tracebacks and file lists), the numeric summary, the training config's method/data/backbone/epochs (of the
        linked training run where there is one), the notebook name and parameters, and the stamp it was read at.
        ``workbench.experiments.table.run_facts`` turns it into the facts of a row."""
        stamp = self.index_stamp()
        if not stamp[0] and not (self.path / "config.json").exists():
            return None

        def read(path: Path) -> tuple[dict[str, Any], bool]:
            try:
                value = json.loads(path.read_text()) if path.exists() else {}
                return (value if isinstance(value, dict) else {}), True
            except (OSError, ValueError):
                return {}, False

        status, status_ok = read(self.path / "status.json")
        summary, summary_ok = read(self.path / "summary.json")
        params, _ = read(self.path / PARAMETERS_FILE)
        try:
            config = (self.training_run or self).config
        except ValueError:
            config = {}

        def section(name: str) -> dict[str, Any]:
            value = config.get(name)
            return value if isinstance(value, dict) else {}

        slim = {k: v for k, v in status.items() if k not in ("traceback", "skipped_files", "cell_source")}
        if isinstance(slim.get("warnings"), dict):
            slim["warnings"] = sorted(slim["warnings"])
        return {"name": self.path.name, "stamp": stamp,
                "status": slim if status_ok else {"status": "unreadable", "error": f"{self.path / 'status.json'} "
                                                                                    "is not valid JSON"},
                "summary": {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                if summary_ok else {},
                "config": {"method": config.get("method"), "data": section("data").get("name"),
                           "backbone": section("model").get("backbone"), "epochs": section("train").get("epochs")}
                if config else None,
                "notebook": params.get("notebook"), "tag": params.get("tag"),
                "parameters": params.get("parameters") if isinstance(params.get("parameters"), dict) else {}}

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
        """Load a checkpoint with ``weights_only=True``; a clear error if the run has none or it is unreadable."""
        path = self.checkpoint_path(name)
        if not path.exists():
            have = [p.stem for p in self.checkpoints()]
            raise FileNotFoundError(f"run {self.path} has no checkpoint {name!r} at {path}; "
                                    + (f"available: {have}" if have else "it has no checkpoints at all "
                                       "(was it pretrained? run `workbench pretrain ...` first)"))
        return load_weights(path, map_location)


def list_runs(runs_dir: str | os.PathLike) -> list[Run]:
    """Run folders (those holding a status.json or config.json) directly under ``runs_dir``, oldest first."""
    root = Path(runs_dir)
    if not root.exists():
        return []
    found: Iterable[Path] = (p for p in root.iterdir()
                             if p.is_dir() and ((p / "status.json").exists() or (p / "config.json").exists()))
    return [Run(p) for p in sorted(found)]


# ---- the runs index: listing 10,000 runs without reading 60,000 files --------------------------------------------
#
# <runs>/.index/runs.json is a snapshot {"entries": {name: entry}}; every status change (and summary update, and
# training-run link) of a run appends its fresh entry to <runs>/.index/log.jsonl; readers replay the log over the
# snapshot. Each entry carries the mtimes of status.json and summary.json it was read at, so a reader re-reads only a
# run whose files changed without an index update (a heartbeat, a run copied in from a cluster, an older writer).
# Appends and the compaction (log -> snapshot, written atomically) hold an exclusive flock on <runs>/.index/lock,
# readers a shared one: concurrent writers never lose each other's updates.

INDEX_COMPACT_LINES = 500    # a reader folds the log into the snapshot past this many lines


def _stamp(folder: str) -> list[int]:
    """``Run.index_stamp`` on a folder path string (os.stat on joined strings: a listing stats every run)."""
    out = []
    for name in ("status.json", "summary.json"):
        try:
            out.append(os.stat(os.path.join(folder, name)).st_mtime_ns)
        except OSError:
            out.append(0)
    return out


def _index_dir(runs_dir: Path) -> Path:
    return runs_dir / INDEX_DIR


class _IndexLock:
    def __init__(self, runs_dir: Path, mode: int):
        self.path, self.mode, self.fd = _index_dir(runs_dir) / "lock", mode, None

    def __enter__(self) -> "_IndexLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        fcntl.flock(self.fd, self.mode)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def update_index(run: Run) -> None:
    """Append ``run``'s fresh index entry to its runs folder's index log. Only where the parent is a runs folder
    (not a run: a notebook's training sub-run is not indexed on its own). Never fails the write it follows."""
    root = run.path.parent
    if (root / "status.json").exists() or (root / "config.json").exists():
        return
    try:
        entry = run.index_entry()
        if entry is None:
            return
        line = (json.dumps(entry, default=_json_default) + "\n").encode()
        with _IndexLock(root, fcntl.LOCK_EX):
            fd = os.open(_index_dir(root) / "log.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT
                         | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
    except OSError:  # a read-only or full runs folder: the index is a cache, the run's own files are the truth
        pass


def _read_index_files(root: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """The snapshot with the log replayed over it, and the log's line count (call under the index lock)."""
    entries: dict[str, dict[str, Any]] = {}
    folder = _index_dir(root)
    try:
        snap = json.loads((folder / "runs.json").read_text())
        if isinstance(snap, dict) and isinstance(snap.get("entries"), dict):
            entries = snap["entries"]
    except (OSError, ValueError):
        pass
    lines = 0
    try:
        with open(folder / "log.jsonl", "rb") as f:
            for raw in f:
                lines += 1
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue  # a torn line (a writer killed mid-append): that run is re-read by its stamp
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    entries[entry["name"]] = entry
    except OSError:
        pass
    return entries, lines


def _compact_index(root: Path, fresh: dict[str, dict[str, Any]], names: set[str]) -> None:
    """Fold the log and ``fresh`` entries into a new snapshot (atomically), dropping runs no longer there."""
    try:
        with _IndexLock(root, fcntl.LOCK_EX):
            entries, _ = _read_index_files(root)  # what other writers appended since we read
            for name, entry in fresh.items():
                if entries.get(name, {}).get("stamp") != Run(root / name).index_stamp() or name not in entries:
                    entries[name] = entry
            entries = {k: v for k, v in entries.items() if k in names}
            atomic_write_json(_index_dir(root) / "runs.json", {"version": 1, "entries": entries})
            os.truncate(_index_dir(root) / "log.jsonl", 0) if (_index_dir(root) / "log.jsonl").exists() else None
    except OSError:
        pass


def indexed_runs(runs_dir: str | os.PathLike) -> list[tuple[Run, dict[str, Any]]]:
    """(Run, index entry) for every run folder directly under ``runs_dir``, oldest first, from the index (made or
    brought up to date here: runs whose status.json/summary.json changed since their entry are re-read). A
    ``running`` status is checked against its writer (``Run.status``), so a dead run reads ``interrupted``."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    names = sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and e.is_dir())
    try:
        with _IndexLock(root, fcntl.LOCK_SH):
            entries, log_lines = _read_index_files(root)
        writable = True
    except OSError:  # a read-only runs folder: no index, every run read
        entries, log_lines, writable = {}, 0, False
    out, fresh = [], {}
    base = str(root)
    for name in names:
        run = Run(root / name)
        entry = entries.get(name)
        stale = entry is None or entry.get("stamp") != _stamp(os.path.join(base, name))
        if stale and entry is not None and entry["status"].get("status") == "running":
            stale = run.recorded_status_or_none() != "running"  # a heartbeat alone leaves the entry as it is
        if stale:
            entry = run.index_entry()
            if entry is None:
                continue
            fresh[name] = entry
        out.append((run, live_entry(run, entry)))
    if writable and (fresh or log_lines > INDEX_COMPACT_LINES or set(entries) - set(names)):
        _compact_index(root, fresh, set(names))
    return out


def live_entry(run: Run, entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with a ``running`` status checked against its writer (``Run.status``: a dead writer's run reads
    interrupted) and the running step brought up to date."""
    if entry["status"].get("status") != "running":
        return entry
    try:
        live = run.status
    except ValueError:
        live = {"status": "unreadable"}
    keep = {k: live[k] for k in ("status", "reason", "step", "recorded_status") if k in live}
    return {**entry, "status": {**entry["status"], **keep}}
