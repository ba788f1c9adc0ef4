"""The training loop: one loop for every method, on a CPU, one GPU or many (torchrun + DDP).

Per step: index a batch of the uint8 training images that live on the device, draw the method's views there
(``workbench.augment.generate_views``, one seeded generator), ``method.training_step`` under autocast,
backward, clip, optimizer and per-step schedule, ``method.update_teacher``. Monitors go to metrics.jsonl
(``Run.log_metrics``) every ``log_every`` steps (loss, lr, RankMe, std of normalised features, speed) and each
epoch (weighted kNN accuracy on the test split). Setup lives in ``setup.py``, checkpoint I/O in
``checkpoint.py``; resuming continues exactly where the stopped run was (the batch order and the views of step
s depend only on the seed, the rank and s).
"""
from __future__ import annotations

import contextlib
import os
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
from workbench.device import resolve_device
from workbench.runs import Run
from workbench.train.checkpoint import finite_state, restore_checkpoint, save_checkpoint
from workbench.train.config import PretrainConfig, augment_config
from workbench.train.setup import (build_training, describe, init_distributed, mix_seed, prepare_data,
                                   resume_config)


class TrainingDiverged(RuntimeError):
    """The loss (or the model state) became NaN or infinite; the run is marked failed at ``step``."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


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
    """One pretraining run (new or resumed). ``run()`` trains and returns the Run; ``stop()`` asks it to end."""

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
        self.step = None
        if self.resume_run is not None:
            self.run_record = self.resume_run
        elif self.is_main:
            c = self.config
            try:
                self.run_record = Run.create(c.out, c.method, c.data.name, to_dict(c), name=c.name)
            except FileExistsError:
                raise ConfigError(f"PretrainConfig.name={c.name!r}: {Path(c.out) / str(c.name)} already exists; "
                                  "choose another name, leave name=None, or resume it (resume=RUN_DIR)") from None
        else:
            self.run_record = None  # only rank 0 writes the run

    def stop(self) -> None:
        """Ask the loop to finish after the current step (it saves a checkpoint and marks the run completed)."""
        self._stop.set()

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

    def run(self) -> Run:
        """Train to the end (or max_steps / stop()); returns the Run. Failures are recorded, then re-raised."""
        prev_det = torch.are_deterministic_algorithms_enabled()
        try:
            if self.config.train.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            return self._run()
        except BaseException as e:
            if self.is_main and self.run_record is not None:
                tb = traceback.format_exception(type(e), e, e.__traceback__)
                details = {"error": f"{type(e).__name__}: {e}", "traceback": "".join(tb[-6:])}
                if isinstance(e, TrainingDiverged):
                    details["step"] = e.step
                elif self.step is not None:
                    details["step"] = self.step
                if isinstance(e, KeyboardInterrupt):
                    details["error"] = "interrupted (KeyboardInterrupt)"
                details["checkpoint"] = "last" if self.run_record.checkpoint_path("last").exists() else None
                self.run_record.set_status("failed", **details)
                self._call("on_end", self.run_record.status)
            raise
        finally:
            if self.config.train.deterministic:
                torch.use_deterministic_algorithms(prev_det)

    # -- setup, checkpoints, the kNN monitor ---------------------------------------------------------------
    def _setup(self) -> None:
        c, t = self.config, self.config.train
        self.device = resolve_device(t.device, self.local_rank, field="TrainConfig.device")
        if self.world > 1 and t.batch_size % self.world:
            raise ConfigError(f"train.batch_size={t.batch_size} (the global batch) must be divisible by the number "
                              f"of processes {self.world}")
        if t.deterministic and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(t.seed)
        had_stats = c.data.mean is not None and c.data.std is not None
        self.data = prepare_data(c, self.device, with_monitor=self.is_main and t.knn_every > 0)
        if not had_stats and self.is_main and self.resume_run is None:
            self.run_record.write_config(to_dict(c))  # the statistics computed from the images, recorded
        self.parts = build_training(c, self.data, self.device, self.world, self.is_main)
        self.info = describe(c, self.data, self.parts, self.device, self.world)
        self.mean, self.std = tuple(self.info["mean"]), tuple(self.info["std"])
        self.aug = augment_config(c, self.data.image_size, self.mean, self.std)
        self.generator = torch.Generator(device=self.device)
        self.step, self.start_step, self._saved_step = 0, 0, -1

    def _checkpoint(self) -> None:
        if not self.is_main:
            return
        if not finite_state(self.parts.method):
            raise TrainingDiverged(f"the model state holds NaN/inf at step {self.step}; the last good checkpoint "
                                   "is kept", self.step)
        p = self.parts
        save_checkpoint(self.run_record, method=p.method, optimizer=p.optimizer, scheduler=p.scheduler,
                        step=self.step, steps_per_epoch=p.steps_per_epoch, generator=self.generator,
                        device=self.device, config=self.config, info=self.info)
        self._saved_step = self.step

    def _knn(self) -> float | None:
        d = self.data
        if not self.is_main or d.knn_test_images is None:
            return None
        from workbench.metrics import knn_accuracy
        from workbench.models.encode import encode

        kw = dict(device=self.device, autocast_dtype=self.parts.amp_dtype, channels_last=self.parts.channels_last,
                  batch_size=512, out_device=self.device)
        backbone = self.parts.method.backbone
        train_f = encode(backbone, d.knn_train_images, self.mean, self.std, **kw)
        test_f = encode(backbone, d.knn_test_images, self.mean, self.std, **kw)
        return knn_accuracy(train_f, d.knn_train_labels.to(self.device), test_f, d.knn_test_labels.to(self.device),
                            k=self.config.train.knn_k, temperature=0.07)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        ok = torch.isfinite(loss.detach().float()).all().to(torch.float32).reshape(1)
        if self.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() > 0)

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
        self.run_record.log_metrics(record)
        self._call("on_step", record)
        return record["loss"]

    # -- the loop ------------------------------------------------------------------------------------------
    def _run(self) -> Run:
        from workbench.augment import generate_views
        from workbench.methods.base import Progress

        self._setup()
        c, t, p = self.config, self.config.train, self.parts
        if self.resume_run is not None:
            self.step = self.start_step = self._saved_step = restore_checkpoint(
                self.resume_run, method=p.method, optimizer=p.optimizer, scheduler=p.scheduler, device=self.device,
                trim_metrics=self.is_main)
        run, spe = self.run_record, p.steps_per_epoch
        t0 = time.perf_counter()
        if self.is_main:
            run.set_status("running", step=self.step, total_steps=p.total_steps, world_size=self.world,
                           device=str(self.device), **({"resumed_from_step": self.step} if self.resume_run else {}))
            self._call("on_start", dict(self.info))
        p.method.train()
        b_local = t.batch_size // self.world
        lo, hi = self.rank * b_local, (self.rank + 1) * b_local
        params = [q for g in p.optimizer.param_groups for q in g["params"]]
        end_step = p.total_steps if t.max_steps is None else min(p.total_steps, t.max_steps)
        bar = None
        if self.is_main and _progress_enabled(t.progress):
            from tqdm.auto import tqdm

            bar = tqdm(total=p.total_steps, initial=self.step, desc=f"{c.method}/{c.model.backbone}", unit="step",
                       dynamic_ncols=True)
        last_loss, last_knn, stopped, stop_requested = float("nan"), None, None, False
        window = (time.perf_counter(), 0)
        try:
            while self.step < end_step:
                epoch = self.step // spe
                order = torch.Generator().manual_seed(mix_seed(t.seed, epoch))
                perm = torch.randperm(self.data.num_train, generator=order).to(self.device)
                for i in range(self.step - epoch * spe, spe):
                    images = self.data.train_images[perm[i * t.batch_size:(i + 1) * t.batch_size][lo:hi]]
                    self.generator.manual_seed(mix_seed(t.seed, self.rank, self.step, 1))
                    vb = generate_views(images, self.aug, self.generator)
                    views = vb.views
                    if p.channels_last:
                        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                    progress = Progress(self.step, p.total_steps, epoch, t.epochs, spe, self.generator)
                    amp = torch.autocast(self.device.type, dtype=p.amp_dtype) if p.amp_dtype else None
                    with amp or contextlib.nullcontext():
                        loss, features, logs = p.stepper(views, vb.num_global, images, progress)
                    if not self._all_finite(loss):
                        raise TrainingDiverged(f"loss is {float(loss.detach().float())} at step {self.step} "
                                               f"(epoch {epoch}); the run stopped before the optimizer step", self.step)
                    p.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    log_now = self.is_main and ((self.step + 1) % t.log_every == 0 or self.step == self.start_step)
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
                    stop_requested = self._stop.is_set()
                    if self.world > 1:
                        flag = torch.tensor([1.0 if stop_requested else 0.0], device=self.device)
                        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                        stop_requested = bool(flag.item() > 0)
                    if stop_requested or self.step >= end_step:
                        break
                if self.step % spe == 0:
                    done_epochs = self.step // spe
                    is_last = done_epochs >= t.epochs
                    knn = None
                    if t.knn_every > 0 and (done_epochs % t.knn_every == 0 or is_last):
                        knn = self._knn()
                        last_knn = knn if knn is not None else last_knn
                    if self.is_main:
                        record = {"kind": "epoch", "epoch": done_epochs, "step": self.step, "loss": last_loss,
                                  "knn_acc": knn, "elapsed_s": time.perf_counter() - t0}
                        run.log_metrics(record)
                        self._call("on_epoch", record)
                    if done_epochs % t.checkpoint_every == 0 or is_last:
                        self._checkpoint()
                if stop_requested:
                    stopped = "stopped"
                    break
            if self._saved_step != self.step:
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
            if last_knn is None and stopped and t.knn_every > 0:
                last_knn = self._knn()
            self._finish(last_loss, last_knn, stopped, time.perf_counter() - t0)
        if self.world > 1:
            dist.barrier()
        return run if run is not None else Run(Path(c.out))

    def _finish(self, last_loss: float, last_knn: float | None, stopped: str | None, wall: float) -> None:
        """Write the pretraining summary and mark the run completed (with how it stopped)."""
        p, run = self.parts, self.run_record
        trained = self.step - self.start_step
        summary = {"steps": self.step, "epochs": self.step / p.steps_per_epoch, "train_loss": last_loss,
                   "knn_acc": last_knn, "wall_s": wall,
                   "images_per_s": trained * self.config.train.batch_size / wall if wall > 0 else None,
                   **{k: self.info[k] for k in ("mean", "std", "image_size", "in_chans", "feature_dim", "world_size",
                                               "device", "precision")},
                   "train": p.resolved.to_dict(), "total_steps": p.total_steps}
        run.update_summary({"pretrain": summary, "pretrain_knn_acc": last_knn})
        details = {"step": self.step, "total_steps": p.total_steps, "checkpoint": "last"}
        if stopped == "stopped":
            details["stopped_early"] = True
        elif stopped == "max_steps":
            details["stopped_at_max_steps"] = True
        run.set_status("completed", **details)
        self._call("on_end", run.status)


# ------------------------------------------------------------------------------------------------ API
def pretrain(config: PretrainConfig | dict | None = None, callbacks: Iterable[Any] = (),
             resume: str | os.PathLike | Run | None = None) -> Run:
    """Pretrain ``config`` (blocking) and return its Run; ``resume=RUN_DIR`` continues a run from its last
    checkpoint (``config`` None = the recorded config; a given config may change only train fields such as
    epochs or max_steps). NaN/inf loss raises TrainingDiverged after marking the run failed."""
    return Trainer(config, callbacks, resume).run()
