"""The training loop: one loop for every method, on a CPU, one GPU or many (torchrun + DDP).

Per step: the batch's views from ``batches.py`` (in memory: index the uint8 images on the device and draw the views
there; streamed: DataLoader workers decode and crop, the colour ops run on the device), ``method.training_step``
under autocast,
backward, clip, optimizer and per-step schedule, ``method.update_teacher``. Monitors go to metrics.jsonl
(``Run.log_metrics``) every ``log_every`` steps (loss, lr, RankMe, std of normalised features, speed) and each
epoch (the mean loss over the epoch's steps, weighted kNN accuracy on the test split). Setup lives in
``setup.py``, checkpoint I/O in ``checkpoint.py``; resuming continues exactly where the stopped run was (the batch
order and the views of step s depend only on the seed, the rank and s; the epoch's running loss sums travel in
the checkpoint), so a resumed run logs what an uninterrupted one would.

Reliability (README, "What happens when things go wrong"): the data is loaded and the model built before the
run folder is made, so bad input leaves nothing behind; the trainer holds the run's writer lock for its life;
the status records pid, host and a heartbeat; SIGTERM/SIGINT finish the step, checkpoint, mark the run
``interrupted`` and raise :class:`TrainingInterrupted`; a constant loss or collapsed embeddings are warned about
in the log and the status.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

import torch
import torch.distributed as dist

from workbench.config import ConfigError, from_dict, to_dict
from workbench.device import configure_cuda, resolve_device
from workbench.runs import Run, RunLock
from workbench.train.checkpoint import (ResumeState, apply_rng, finite_state, load_resume_state, numbered_name,
                                        save_checkpoint, trim_metrics)
from workbench.train.config import PretrainConfig, augment_config
from workbench.train.setup import build_training, describe, init_distributed, mix_seed, prepare_data, resume_config


HEARTBEAT_S = 10.0            # the running status (step, heartbeat time) is rewritten at most this often
COLLAPSE_STD_RATIO = 0.01     # embeddings count as collapsed when std * sqrt(dim) falls below this (spread: ~1)
CONSTANT_LOSS_RTOL = 1e-6     # an epoch's loss "has not moved" when max - min <= this * max(1, |mean|)
SPECTRUM_VALUES = 64          # singular values in an epoch record's embedding spectrum (held-out features)


GLOBAL_RNG = 4               # mix_seed's last argument for the global RNG of a step (dropout, drop-path)
FAILED_KEY = "workbench/failed"  # the launcher store's key a failing rank writes its cause to
PEER_POLL_S = 0.5             # how often each rank of a DDP run looks for another rank's failure
PEER_GRACE_S = 5.0            # how long a rank may take to fail on its own after a peer failed, before it is ended


def seed_step(seed: int, rank: int, step: int) -> None:
    """Seed torch's global RNG (CPU and every CUDA device) for ``step`` on ``rank``: what a step draws from it
    (dropout, drop-path) depends only on (seed, rank, step), differs between ranks, and needs no saved RNG state to
    resume, under any world size. Seeding is host-side bookkeeping: no device sync."""
    torch.manual_seed(mix_seed(seed, rank, step, GLOBAL_RNG))


class RankFailed(RuntimeError):
    """Another rank of a DDP run failed; the message carries its cause (rank, exception type and message)."""


class TrainingDiverged(RuntimeError):
    """The loss (or the model state) became NaN or infinite; the run is marked failed at ``step``."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class TrainingInterrupted(RuntimeError):
    """SIGTERM or SIGINT stopped the run: the step in flight finished, a checkpoint was written at ``step`` and the
    run is marked ``interrupted``; ``pretrain(resume=run)`` / ``workbench pretrain --resume RUN`` continues it.
    ``exit_code`` is what the CLI exits with: 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, run: Run | None, signum: int, step: int):
        self.run, self.signum, self.step = run, signum, step
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"{self.signal_name} received: stopped after step {step} with a checkpoint; resume with "
                         f"`workbench pretrain --resume {run.path if run is not None else 'RUN_DIR'}`")


@runtime_checkable
class Callback(Protocol):
    """Observer of a run (all methods optional; called on rank 0 only, in the training thread).

    ``on_start(run, info)``, ``on_step(run, record)`` (every ``log_every`` steps, the record written to
    metrics.jsonl), ``on_epoch(run, record)``, ``on_end(run, status)`` (the status.json dict). An exception in
    a callback is reported as a warning and that callback is dropped; training goes on.
    """


def _progress_enabled(mode: str) -> bool:
    if mode == "on":
        return True
    if mode == "off" or os.environ.get("CI"):
        return False
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Trainer:
    """One pretraining run (new or resumed). ``prepare()`` loads the data, builds the model and only then makes
    (or, resuming, locks and checks) the run folder; ``run()`` prepares if needed, trains and returns the Run;
    ``stop()`` asks it to end."""

    def __init__(self, config: PretrainConfig | dict | None = None, callbacks: Iterable[Any] = (),
                 resume: str | os.PathLike | Run | None = None):
        self.callbacks = list(callbacks)
        self._stop = threading.Event()
        self.resume_run = None if resume is None else (resume if isinstance(resume, Run) else Run(resume))
        if self.resume_run is not None:
            config = resume_config(self.resume_run, config)
        if config is None:
            raise ConfigError("pretrain needs a PretrainConfig (or resume=RUN_DIR)")
        self.config = from_dict(PretrainConfig, config) if isinstance(config, dict) else config
        if not isinstance(self.config, PretrainConfig):
            raise ConfigError(f"pretrain: config must be a PretrainConfig or a dict, got {type(config).__name__}")
        self.rank, self.world, self.local_rank = init_distributed(self.config.train.device)
        self.is_main = self.rank == 0
        if self.is_main and self.config.train.loggers:  # train.loggers: TensorBoard / MLflow callbacks
            from workbench.train.loggers import make_loggers
            given = {getattr(cb, "name", None) for cb in self.callbacks}
            self.callbacks += [cb for cb in make_loggers(self.config.train.loggers) if cb.name not in given]
        self.step = None
        c = self.config
        if self.is_main and self.resume_run is None and c.name is not None and (Path(c.out) / c.name).exists():
            raise ConfigError(f"PretrainConfig.name={c.name!r}: {Path(c.out) / c.name} already exists; "
                              "choose another name, leave name=None, or resume it (resume=RUN_DIR)")
        # a new run's folder is made by prepare(), after the data loaded and the model was built; only rank 0 writes
        self.run_record: Run | None = self.resume_run if self.is_main else None
        self._lock: RunLock | None = None
        self._prepared = self._started = False
        self._signal: int | None = None
        self._resume: ResumeState | None = None
        self._status: dict[str, Any] = {}       # details every status write of this run carries
        self._warnings: dict[str, str] = {}     # health warnings by kind (constant_loss, collapse)
        self.progress_bar: Any = None           # a tqdm bar made by the caller (start_pretrain), used instead of one
        self._beat = 0.0
        self._store_client: Any = None
        self._peer_failure: str | None = None

    def stop(self) -> None:
        """Ask the loop to finish after the current step (it saves a checkpoint and marks the run stopped)."""
        self._stop.set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT: finish the step, checkpoint, mark the run interrupted; a second signal stops at once."""
        if self._signal is not None:
            raise KeyboardInterrupt
        self._signal = signum
        self._stop.set()

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Route SIGTERM and SIGINT to :meth:`_on_signal` (main thread only); returns the handlers to restore."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except (ValueError, OSError):  # not settable here (e.g. an embedded interpreter)
                continue
        return previous

    def _call(self, hook: str, *args: Any) -> None:
        if not self.is_main:
            return
        for cb in list(self.callbacks):
            fn = getattr(cb, hook, None)
            if fn is None:
                continue
            try:
                fn(self.run_record, *args)
            except Exception as e:  # a broken monitor must not kill a long run
                warnings.warn(f"callback {type(cb).__name__}.{hook} raised {type(e).__name__}: {e}; "
                              "it is removed from this run", RuntimeWarning, stacklevel=2)
                self.callbacks.remove(cb)

    def prepare(self) -> "Trainer":
        """Load the data and build the model; then (rank 0) make the new run's folder and take its writer lock, or,
        resuming, take the lock first and load the last checkpoint. Nothing is written until all of that worked,
        so bad input leaves no folder behind and a resume that cannot start leaves the run as it was."""
        if self._prepared:
            return self
        try:
            if self.resume_run is not None and self.is_main:  # a live writer: RunLockedError, nothing touched
                self._lock = self.resume_run.acquire_writer(announce=False)
            self._setup()
            p = self.parts
            if self.resume_run is not None:
                self._resume = load_resume_state(self.resume_run, method=p.method, optimizer=p.optimizer,
                                                 scheduler=p.scheduler, device=self.device)
            elif self.is_main:
                c = self.config
                try:
                    self.run_record = Run.create(c.out, c.method, c.data.name, to_dict(c), name=c.name)
                except FileExistsError:
                    raise ConfigError(f"PretrainConfig.name={c.name!r}: {Path(c.out) / str(c.name)} already exists; "
                                      "choose another name, leave name=None, or resume it (resume=RUN_DIR)") from None
                self._lock = self.run_record.acquire_writer()
        except BaseException:
            self._release()
            raise
        cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self._rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if cuda else None}
        self._prepared = True
        return self

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def run(self) -> Run:
        """Train to the end (or max_steps / stop()); returns the Run. Failures are recorded, then re-raised;
        SIGTERM/SIGINT (main thread) end it with a checkpoint, status ``interrupted`` and TrainingInterrupted."""
        prev_det = torch.are_deterministic_algorithms_enabled()
        handlers = self._install_signal_handlers()
        watcher = self._watch_peers() if self.world > 1 else None
        try:
            if self.config.train.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            self.prepare()
            return self._run()
        except BaseException as e:
            if self.world > 1:
                e = self._peer_failure_or(e)
            if self.is_main and self._started and not isinstance(e, TrainingInterrupted):
                self._record_end(e)
            raise e
        finally:
            if watcher is not None:
                self._stop_watching(*watcher)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.config.train.deterministic:
                torch.use_deterministic_algorithms(prev_det)
            self._release()

    # -- DDP: a failure on any rank ends every rank, with its cause ------------------------------------------
    def _store(self) -> Any:
        """A client of the launcher's TCP store (MASTER_ADDR/MASTER_PORT, as torchrun and env:// set them), or None."""
        if self._store_client is None and os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
            from datetime import timedelta

            with contextlib.suppress(Exception):
                self._store_client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                                   is_master=False, timeout=timedelta(seconds=10))
        return self._store_client

    def _peer_cause(self) -> str | None:
        """The cause another rank recorded when it failed, or None."""
        store = self._store()
        if store is None:
            return None
        with contextlib.suppress(Exception):
            if store.check([FAILED_KEY]):
                cause = store.get(FAILED_KEY).decode()
                return None if cause.startswith(f"rank {self.rank}:") else cause
        return None

    def _peer_failure_or(self, e: BaseException) -> BaseException:
        """``e`` re-described when another rank failed first (a collective broken by its exit), else ``e`` after
        recording this rank's cause for the others."""
        cause = self._peer_failure or self._peer_cause()
        if cause is not None:
            err = RankFailed(f"{cause} (this is rank {self.rank}, stopped by that failure: {type(e).__name__})")
            err.__cause__ = e
            return err
        store = self._store()
        if store is not None and not isinstance(e, TrainingInterrupted):
            with contextlib.suppress(Exception):
                store.set(FAILED_KEY, f"rank {self.rank}: {type(e).__name__}: {e}")
        return e

    def _watch_peers(self) -> tuple[threading.Event, threading.Thread]:
        """A daemon thread that polls the store for another rank's failure. A rank blocked in a collective (NCCL
        does not notice a peer's exit until its timeout, minutes later) gets ``PEER_GRACE_S`` to raise on its own;
        then the thread prints the cause, marks the run failed (rank 0) and ends the process (exit code 1)."""
        done = threading.Event()

        def watch() -> None:
            while not done.wait(PEER_POLL_S):
                cause = self._peer_cause()
                if cause is None:
                    continue
                self._peer_failure = cause
                if done.wait(PEER_GRACE_S):
                    return
                message = f"{cause}; rank {self.rank} was still blocked {PEER_GRACE_S:.0f} s later and exits"
                print(f"workbench: {message}", file=sys.stderr, flush=True)
                if self.is_main and self._started and self.run_record is not None:
                    with contextlib.suppress(Exception):
                        self.run_record.set_status("failed", **{**self._status, "error": f"RankFailed: {message}",
                                                                "step": self.step})
                os._exit(1)

        thread = threading.Thread(target=watch, name="workbench-peer-watch", daemon=True)
        thread.start()
        return done, thread

    def _stop_watching(self, done: threading.Event, thread: threading.Thread) -> None:
        """End the peer watcher and drop its store client here, in this thread: a process that exits while the
        daemon thread is inside a TCPStore call aborts ("terminate called without an active exception")."""
        done.set()
        thread.join(timeout=PEER_POLL_S + 15)
        self._store_client = None

    def _record_end(self, e: BaseException) -> None:
        """status.json for a run that ended with an exception: failed, or interrupted (KeyboardInterrupt)."""
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        details = {**self._status, "error": f"{type(e).__name__}: {e}", "traceback": "".join(tb[-6:])}
        if isinstance(e, TrainingDiverged):
            details["step"] = e.step
        elif self.step is not None:
            details["step"] = self.step
        interrupted = isinstance(e, KeyboardInterrupt)
        if interrupted:
            details["error"] = "interrupted (KeyboardInterrupt)"
        details["checkpoint"] = "last" if self.run_record.checkpoint_path("last").exists() else None
        self.run_record.set_status("interrupted" if interrupted else "failed", **details)
        self._call("on_end", self.run_record.status)

    # -- setup, checkpoints, the kNN monitor ---------------------------------------------------------------
    def _setup(self) -> None:
        c, t = self.config, self.config.train
        self.device = resolve_device(t.device, self.local_rank, field="TrainConfig.device", distributed=self.world > 1)
        if self.world > 1 and t.batch_size % self.world:
            raise ConfigError(f"train.batch_size={t.batch_size} (the global batch) must be divisible by the number "
                              f"of processes {self.world}")
        if self.device.type == "cuda":
            configure_cuda(deterministic=t.deterministic)
        torch.manual_seed(t.seed)  # the model's initialisation: the same on every rank
        self.data = prepare_data(c, self.device, with_monitor=self.is_main and t.knn_every > 0)
        self.parts = build_training(c, self.data, self.device, self.world, self.is_main)
        self.info = describe(c, self.data, self.parts, self.device, self.world)
        self.mean, self.std = tuple(self.info["mean"]), tuple(self.info["std"])
        self.aug = augment_config(c, self.data.image_size, self.mean, self.std)
        self.generator = torch.Generator(device=self.device)
        self.step, self.start_step, self._saved_step = 0, 0, -1

    def _checkpoint(self, numbered: str | None = None) -> None:
        if not self.is_main:
            return
        if not finite_state(self.parts.method):
            raise TrainingDiverged(f"the model state holds NaN/inf at step {self.step}; the last good checkpoint "
                                   "is kept", self.step)
        p = self.parts
        save_checkpoint(self.run_record, method=p.method, optimizer=p.optimizer, scheduler=p.scheduler,
                        step=self.step, steps_per_epoch=p.steps_per_epoch, generator=self.generator,
                        device=self.device, config=self.config, info=self.info, loop=self._loop_state(),
                        numbered=numbered, keep=self.config.train.keep_checkpoints)
        self._saved_step = self.step
        self._status["checkpoint_step"] = self.step
        self._heartbeat(force=True)

    # -- the status, the epoch's running loss, health warnings ---------------------------------------------
    def _heartbeat(self, force: bool = False) -> None:
        """Rewrite the running status (step, pid, host, heartbeat time) at most every HEARTBEAT_S seconds."""
        now = time.monotonic()
        if not self.is_main or not self._started or (not force and now - self._beat < HEARTBEAT_S):
            return
        self._beat = now
        self.run_record.set_status("running", step=self.step, **self._status)

    def _reset_epoch(self, loop: dict[str, Any] | None = None) -> None:
        """Zero the epoch's running loss sum/min/max/count (kept on the device: no host sync per step), or set them
        from a checkpoint's ``loop`` record."""
        loop = loop or {}
        dev = self.device

        def value(key: str, default: float) -> torch.Tensor:
            v = loop.get(key)
            return (v.to(dev) if isinstance(v, torch.Tensor) else torch.tensor(default, device=dev)).float()

        self._loss_sum = value("epoch_loss_sum", 0.0)
        self._loss_min, self._loss_max = value("epoch_loss_min", math.inf), value("epoch_loss_max", -math.inf)
        self._loss_n = int(loop.get("epoch_loss_count", 0))
        self._epoch_std = loop.get("epoch_std")

    def _loop_state(self) -> dict[str, Any]:
        return {"epoch_loss_sum": self._loss_sum.detach().cpu(), "epoch_loss_min": self._loss_min.detach().cpu(),
                "epoch_loss_max": self._loss_max.detach().cpu(), "epoch_loss_count": self._loss_n,
                "epoch_std": self._epoch_std, "last_epoch_loss": self._last_epoch_loss,
                "warnings": dict(self._warnings)}

    def _epoch_loss(self) -> tuple[float, float, float]:
        """(mean, min, max) of the loss over the epoch's steps so far (one host sync)."""
        if self._loss_n == 0:
            return math.nan, math.nan, math.nan
        total, lo, hi = torch.stack([self._loss_sum, self._loss_min, self._loss_max]).tolist()
        return total / self._loss_n, lo, hi

    def _health(self, epoch: int, mean: float, lo: float, hi: float) -> list[str]:
        """Warnings for a run that is not learning: a loss that did not move over the epoch, collapsed embeddings.
        Each goes to the epoch record, the status (``warnings``) and, the first time, Python's warnings."""
        found = []
        if self._loss_n >= 2 and math.isfinite(mean) and hi - lo <= CONSTANT_LOSS_RTOL * max(1.0, abs(mean)):
            found.append(("constant_loss", f"the loss has not moved for a whole epoch (epoch {epoch}: {mean:.6g} at "
                                           f"every one of its {self._loss_n} steps); the run is not learning: check "
                                           "the learning rate and optimizer (train.lr, train.optimizer)"))
        if self._epoch_std is not None and self._epoch_std < COLLAPSE_STD_RATIO:
            found.append(("collapse", f"the embeddings collapsed in epoch {epoch} (std of the normalised features "
                                      f"x sqrt(dim) = {self._epoch_std:.3g}; about 1 when spread): every image maps "
                                      "to nearly the same point; check the learning rate and the method's options"))
        for kind, message in found:
            if kind not in self._warnings:
                warnings.warn(f"run {self.run_record.path}: {message}", RuntimeWarning, stacklevel=2)
            self._warnings[kind] = message
        if found:
            self._status["warnings"] = dict(self._warnings)
        return [m for _, m in found]

    def _record_skipped(self) -> int:
        """Put the files the data left out (``skip_corrupt``: at loading, or found on decode by a streamed run) into
        the status (``skipped_files`` by split, ``skipped_count`` distinct files); returns the count."""
        skipped = {split: [list(f) for f in files] for split, files in self.data.skipped.items() if files}
        count = len({f[0] for files in skipped.values() for f in files})
        if count:
            self._status.update(skipped_files=skipped, skipped_count=count)
        return count

    def _stop_flag(self) -> bool:
        """stop() or a signal: on one process at once; under DDP the flags of all ranks are combined on check steps
        (``_check``), so every rank stops at the same step without a collective per step."""
        return self._stop.is_set() if self.world == 1 else False

    def _knn(self) -> tuple[float | None, list[float] | None]:
        """(kNN accuracy of the held-out test features, their spectrum): the epoch record's ``spectrum`` is
        metrics.normalized_spectrum of those features (top 64 singular values of the L2-normalised, centred rows
        over the sum of all: a flat line is a spread embedding, one value ~1 a collapsed one)."""
        d = self.data
        if not self.is_main or d.knn_test_images is None:
            return None, None
        from workbench.metrics import knn_accuracy, normalized_spectrum
        from workbench.models.encode import encode

        kw = dict(device=self.device, autocast_dtype=self.parts.amp_dtype, channels_last=self.parts.channels_last,
                  batch_size=512, out_device=self.device)
        backbone = self.parts.method.backbone
        train_f = encode(backbone, d.knn_train_images, self.mean, self.std, **kw)
        test_f = encode(backbone, d.knn_test_images, self.mean, self.std, **kw)
        acc = knn_accuracy(train_f, d.knn_train_labels.to(self.device), test_f, d.knn_test_labels.to(self.device),
                           k=self.config.train.knn_k, temperature=0.07)
        return acc, normalized_spectrum(test_f.float().cpu(), SPECTRUM_VALUES)

    def _note_finite(self, loss: torch.Tensor) -> None:
        """Record on the device (no host sync) the first step whose loss is not finite, and its value."""
        value = loss.detach().float()
        newly = ~torch.isfinite(value) & (self._bad_step < 0)
        self._bad_step = torch.where(newly, float(self.step), self._bad_step)
        self._bad_loss = torch.where(newly, value, self._bad_loss)

    def _check(self) -> bool:
        """The host check of a check step (one sync; under DDP one all-reduce, every rank at the same step): raise
        TrainingDiverged when a loss since the last check was not finite; returns whether any rank asked to stop."""
        local = torch.stack([(self._bad_step >= 0).float(), self._bad_step, self._bad_loss,
                             torch.full((), float(self._stop.is_set()), device=self.device)])
        if self.world > 1:
            # the first bad step of any rank (bad_step as -step so MAX finds the earliest) and the stop flags
            flags = torch.stack([local[0], torch.where(local[0] > 0, -local[1], -math.inf), local[3]])
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            bad, neg_step, stop = flags.tolist()
            step = -neg_step
            value = float(self._bad_loss) if bad and int(local[1]) == int(step) else math.nan
        else:
            bad, step, value, stop = local.tolist()
        if bad:
            step = int(step)
            if step == self.step:
                raise TrainingDiverged(f"loss is {value} at step {step}; the run stopped before the optimizer step",
                                       step)
            raise TrainingDiverged(f"loss is {value} at step {step} (found at step {self.step}: the loss is checked on "
                                   "log steps); the last good checkpoint is kept", step)
        return bool(stop)

    def _log_step(self, loss: torch.Tensor, features: torch.Tensor, logs: dict, lr: float, grad_norm: Any,
                  window: tuple[float, int]) -> float:
        """Write one step record (loss, lr, RankMe, std, speed, the method's own logs); returns the loss."""
        from workbench.metrics import normalized_std, rankme

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = (time.perf_counter() - window[0]) / max(1, window[1])
        feats = features.detach().float()
        record = {"kind": "step", "step": self.step, "epoch": self.step / self.parts.steps_per_epoch,
                  "loss": float(loss.detach().float()), "lr": lr, "rankme": rankme(feats),
                  "std": normalized_std(feats), "step_time": dt,
                  "images_per_s": self.config.train.batch_size / dt if dt > 0 else None,
                  "grad_norm": float(grad_norm) if grad_norm is not None else None}
        for k, v in (logs or {}).items():
            record.setdefault(k, float(v) if isinstance(v, (int, float, torch.Tensor)) else v)
        if record["std"] is not None and feats.dim() == 2:  # the collapse monitor: ~1 when spread, 0 collapsed
            self._epoch_std = float(record["std"]) * math.sqrt(feats.shape[1])
        self.run_record.log_metrics(record)
        self._call("on_step", record)
        return record["loss"]

    # -- the loop ------------------------------------------------------------------------------------------
    def _run(self) -> Run:
        from workbench.methods.base import Progress
        from workbench.train.batches import make_batches

        c, t, p = self.config, self.config.train, self.parts
        resume = self._resume
        loop = resume.loop if resume is not None else {}
        apply_rng(resume.rng if resume is not None and resume.checkpoint is not None else self._rng, self.device)
        if resume is not None:
            self.step = self.start_step = resume.step
            self._saved_step = resume.step if resume.checkpoint is not None else -1
        self._reset_epoch(loop)
        self._last_epoch_loss = loop.get("last_epoch_loss", math.nan)
        self._warnings = dict(loop.get("warnings") or {})
        run, spe = self.run_record, p.steps_per_epoch
        t0 = time.perf_counter()
        if self.is_main:
            self._status = {"total_steps": p.total_steps, "world_size": self.world, "device": str(self.device)}
            if resume is not None:  # the checkpoint was good: now the folder may change
                self._lock.announce()
                run.remove_orphans()  # temporary files of writes a kill interrupted
                trim_metrics(run, self.step)
                self._status["resumed_from_step"] = self.step
                if resume.checkpoint is None:
                    self._status["restarted"] = "no checkpoint was written before it stopped: restarted from step 0"
            if self._warnings:
                self._status["warnings"] = dict(self._warnings)
            count = self._record_skipped()
            if count:
                warnings.warn(f"data {c.data.name!r}: {count} unreadable image file(s) skipped (skip_corrupt); they "
                              f"are listed in {run.path / 'status.json'} under skipped_files", UserWarning,
                              stacklevel=2)
            self._started = True
            self._heartbeat(force=True)
            self._call("on_start", dict(self.info))
        p.method.train()
        params = [q for g in p.optimizer.param_groups for q in g["params"]]
        end_step = p.total_steps if t.max_steps is None else min(p.total_steps, t.max_steps)
        batches = make_batches(self.data, self.aug, t.seed, self.rank, self.world, t.batch_size, spe, end_step,
                               self.device)
        bar = self.progress_bar  # start_pretrain's, shown in the cell that started the run, never another one
        if bar is None and self.is_main and _progress_enabled(t.progress):
            from tqdm.auto import tqdm

            bar = tqdm(total=p.total_steps, initial=self.step, desc=f"{c.method}/{c.model.backbone}", unit="step",
                       dynamic_ncols=True)
        last_loss, last_knn, stopped = float("nan"), None, None
        window = (time.perf_counter(), 0)
        self._bad_step = torch.full((), -1.0, device=self.device)  # first non-finite step since the last check
        self._bad_loss = torch.full((), math.nan, device=self.device)
        stop_requested = self._stop.is_set() if self.world == 1 else self._check()  # a signal during set-up
        try:
            while self.step < end_step and not stop_requested:
                epoch = self.step // spe
                if self.step % spe == 0:
                    self._reset_epoch()
                for images, vb in batches.epoch(epoch, self.step - epoch * spe, self.generator):
                    views = vb.views
                    if p.channels_last:
                        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                    progress = Progress(self.step, p.total_steps, epoch, t.epochs, spe, self.generator)
                    seed_step(t.seed, self.rank, self.step)
                    amp = torch.autocast(self.device.type, dtype=p.amp_dtype) if p.amp_dtype else None
                    with amp or contextlib.nullcontext():
                        loss, features, logs = p.stepper(views, vb.num_global, images, progress)
                    self._note_finite(loss)
                    # check steps (the same on every rank): log steps, and steps a checkpoint, an epoch's end or the
                    # run's end follows; only these sync with the host (one sync: the loss check and stop flags)
                    nxt = self.step + 1
                    check_now = (nxt % t.log_every == 0 or self.step == 0 or nxt % spe == 0 or nxt >= end_step
                                 or bool(t.checkpoint_steps and nxt % t.checkpoint_steps == 0))
                    stop_seen = self._check() if check_now else False
                    if self.is_main:  # the epoch's mean loss, summed on the device (no host sync per step)
                        value = loss.detach().float()
                        self._loss_sum = self._loss_sum + value
                        self._loss_min = torch.minimum(self._loss_min, value)
                        self._loss_max = torch.maximum(self._loss_max, value)
                        self._loss_n += 1
                    p.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    log_now = self.is_main and (nxt % t.log_every == 0 or self.step == 0)
                    grad_norm = None
                    if t.clip_grad is not None or log_now:
                        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad or float("inf"))
                    lr_now = p.optimizer.param_groups[0]["lr"]
                    p.optimizer.step()
                    p.scheduler.step()
                    p.method.update_teacher(progress)
                    self.step += 1
                    window = (window[0], window[1] + 1)
                    if bar is not None:
                        bar.update(1)
                    if log_now:
                        last_loss = self._log_step(loss, features, logs, lr_now, grad_norm, window)
                        if bar is not None:
                            bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
                        window = (time.perf_counter(), 0)
                    self._heartbeat()
                    if t.checkpoint_steps and self.step % t.checkpoint_steps == 0 and self.step % spe:
                        self._checkpoint(numbered_name("step", self.step))
                    stop_requested = stop_seen or self._stop_flag()
                    if stop_requested or self.step >= end_step:
                        break
                if self.step % spe == 0:
                    done_epochs = self.step // spe
                    is_last = done_epochs >= t.epochs
                    knn, spectrum = None, None
                    if t.knn_every > 0 and (done_epochs % t.knn_every == 0 or is_last):
                        knn, spectrum = self._knn()
                        last_knn = knn if knn is not None else last_knn
                    if self.is_main:
                        mean, lo_loss, hi_loss = self._epoch_loss()
                        self._last_epoch_loss = mean
                        record = {"kind": "epoch", "epoch": done_epochs, "step": self.step, "loss": mean,
                                  "knn_acc": knn, "elapsed_s": time.perf_counter() - t0}
                        if spectrum:
                            record["spectrum"] = spectrum
                        found = self._health(done_epochs, mean, lo_loss, hi_loss)
                        if found:
                            record["warnings"] = found
                        run.log_metrics(record)
                        self._call("on_epoch", record)
                        self._record_skipped()
                        self._heartbeat(force=True)
                    due_step = bool(t.checkpoint_steps) and self.step % (t.checkpoint_steps or 1) == 0
                    if done_epochs % t.checkpoint_every == 0 or is_last or due_step:
                        self._checkpoint(numbered_name("epoch", done_epochs))
            if stop_requested and self.step < end_step:
                stopped = "signal" if self._signal is not None else "stopped"
            if self._saved_step != self.step:
                if self.world == 1:  # a stop() between check steps (under DDP stops happen on check steps)
                    self._check()
                self._checkpoint()  # the end state (max_steps or stop() mid-epoch): resume continues from here
            if stopped is None and self.step < p.total_steps:
                stopped = "max_steps"
        except TrainingDiverged as e:
            # the state before the diverging update is still good: keep it as "last" unless it is not finite
            if self.is_main and finite_state(p.method) and e.step == self.step:
                with contextlib.suppress(TrainingDiverged):
                    self._checkpoint()
            raise
        finally:
            if bar is not None:
                bar.close()
        if self.is_main:
            self._record_skipped()
        if self.is_main and stopped == "signal":  # preemption: be quick, the scheduler's kill follows
            run.set_status("interrupted", **{**self._status, "step": self.step, "checkpoint": "last",
                                             "signal": signal.Signals(self._signal).name})
            self._call("on_end", run.status)
        elif self.is_main:
            if last_knn is None and stopped and t.knn_every > 0:
                last_knn = self._knn()[0]
            mean, _, _ = self._epoch_loss()  # the last (possibly partial) epoch's mean loss
            self._finish(mean if self._loss_n else self._last_epoch_loss, last_knn, stopped,
                         time.perf_counter() - t0)
        if self.world > 1:
            dist.barrier()
        if self._signal is not None and stopped == "signal":
            raise TrainingInterrupted(run, self._signal, self.step)
        return run if run is not None else Run(Path(c.out))

    def _finish(self, last_loss: float, last_knn: float | None, stopped: str | None, wall: float) -> None:
        """Write the pretraining summary and mark the run completed, or stopped (stop() before its course)."""
        p, run = self.parts, self.run_record
        trained = self.step - self.start_step
        summary = {"steps": self.step, "epochs": self.step / p.steps_per_epoch, "train_loss": last_loss,
                   "knn_acc": last_knn, "wall_s": wall,
                   "images_per_s": trained * self.config.train.batch_size / wall if wall > 0 else None,
                   **{k: self.info[k] for k in ("mean", "std", "image_size", "in_chans", "feature_dim", "world_size",
                                               "device", "precision")},
                   "train": p.resolved.to_dict(), "total_steps": p.total_steps}
        run.update_summary({"pretrain": summary, "pretrain_knn_acc": last_knn})
        details = {**self._status, "step": self.step, "total_steps": p.total_steps, "checkpoint": "last",
                   "epoch": round(self.step / p.steps_per_epoch, 2), "epochs": self.config.train.epochs}
        if stopped == "stopped":  # stop() ended it before its course: "stopped", never "completed"
            details["stopped_early"] = True
        elif stopped == "max_steps":
            details["stopped_at_max_steps"] = True
        run.set_status("stopped" if stopped == "stopped" else "completed", **details)
        self._call("on_end", run.status)


# ------------------------------------------------------------------------------------------------ API
def pretrain(config: PretrainConfig | dict | None = None, callbacks: Iterable[Any] = (),
             resume: str | os.PathLike | Run | None = None) -> Run:
    """Pretrain ``config`` (blocking) and return its Run; ``resume=RUN_DIR`` continues a run from its last
    checkpoint (``config`` None = the recorded config; a given config may change only train fields such as
    epochs or max_steps). NaN/inf loss raises TrainingDiverged after marking the run failed."""
    return Trainer(config, callbacks, resume).run()
