"""The training engine: one loop for every method, on a CPU, one GPU or many (torchrun + DDP).

Per step: index a batch of the uint8 training images that live on the device, draw the method's views there
(``workbench.augment.generate_views``, one seeded generator), ``method.training_step`` under autocast,
backward, clip, optimizer and per-step schedule, ``method.update_teacher``. Monitors go to metrics.jsonl
(``Run.log_metrics``) every ``log_every`` steps (loss, lr, RankMe, std of normalised features, speed) and each
epoch (weighted kNN accuracy on the test split). Checkpoints hold state dicts and plain python only, so
``torch.load(weights_only=True)`` reads them; resuming restores model, teachers, optimizer, schedule, RNG and
step, and continues exactly where the stopped run was (the batch order and the views of step s depend only on
the seed, the rank and s).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

import torch
import torch.distributed as dist
import torch.nn as nn

from workbench.config import ConfigError, from_dict, to_dict
from workbench.runs import Run, atomic_write_bytes
from workbench.train.config import PretrainConfig, ResolvedTrain, augment_config, resolve_train, schedule_steps
from workbench.train.optim import build_optimizer, build_scheduler, param_groups

CHECKPOINT_FORMAT = "workbench-pretrain-1"


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


# ------------------------------------------------------------------------------------------------ helpers
def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local rank>`` when CUDA is available, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"TrainConfig.device={device!r} but CUDA is not available on this machine; use 'cpu' "
                          "or 'auto'")
    return dev


def init_distributed(device_pref: str) -> tuple[int, int, int]:
    """Join the process group torchrun describes (env RANK/WORLD_SIZE; gloo on CPU, nccl on CUDA).

    Returns (rank, world size, local rank); (0, 1, 0) outside torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return 0, 1, 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images [N, C, H, W] in [0, 1] units (float64 sums, chunked);
    ``workbench.data.channel_stats`` where the data package provides it. A std below 1e-3 is raised to 1e-3."""
    try:
        from workbench.data import channel_stats as data_stats
    except ImportError:
        data_stats = None
    if data_stats is not None:
        mean, std = data_stats(images, chunk)
        return [float(v) for v in mean], [max(float(v), 1e-3) for v in std]
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64) / 255.0
        s += x.sum(dim=(0, 2, 3)).cpu()
        sq += x.pow(2).sum(dim=(0, 2, 3)).cpu()
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / n
    std = (sq / n - mean.pow(2)).clamp_min(1e-12).sqrt()
    return [float(v) for v in mean], [max(float(v), 1e-3) for v in std]


def load_data(config: PretrainConfig, split: str):
    """``workbench.data.load(name, split, **config.data.loader_kwargs())``."""
    try:
        import workbench.data as data_pkg  # registers the built-in loaders
        load = getattr(data_pkg, "load")
    except (ImportError, AttributeError):
        from workbench.data.base import load
    return load(config.data.name, split=split, **config.data.loader_kwargs())


def build_method_for(config: PretrainConfig, image_size: int, in_chans: int):
    """Backbone + method of ``config`` for ``image_size`` px images with ``in_chans`` channels (on the CPU)."""
    from workbench.methods import build_method
    from workbench.models.backbones import build_backbone

    try:
        backbone = build_backbone(config.model.backbone, image_size=image_size, in_chans=in_chans,
                                  **config.model.options)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    except TypeError as e:
        raise ConfigError(f"model.options={config.model.options!r} do not fit backbone "
                          f"{config.model.backbone!r}: {e}") from None
    return build_method(config.method, backbone, config.method_options)


def _mix(*xs: int) -> int:
    """A 63-bit seed from integers (seed, rank, step, ...) so each step's randomness is addressable."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h ^= (int(x) + 0x9E3779B97F4A7C15 + ((h << 6) & (2 ** 64 - 1)) + (h >> 2)) & (2 ** 64 - 1)
        h = (h * 0xBF58476D1CE4E5B9) & (2 ** 64 - 1)
    return h & (2 ** 63 - 1)


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


def _finite_state(module: nn.Module) -> bool:
    """True when every floating parameter and buffer of ``module`` is finite."""
    tensors = [t for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class _StepModule(nn.Module):
    """Wraps a Method so DistributedDataParallel sees ``training_step`` as ``forward``."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, views: list[torch.Tensor], num_global: int, images: torch.Tensor, progress: Any):
        from workbench.methods.base import Batch

        out = self.method.training_step(Batch(list(views), num_global, images), progress)
        return out.loss, out.features, out.logs


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, mean, std, device: torch.device,
                     batch_size: int = 512, autocast_dtype: torch.dtype | None = None,
                     channels_last: bool = False) -> torch.Tensor:
    """Backbone features [N, D] (float32, on ``device``) of uint8 images [N, C, H, W], normalised with mean/std."""
    from workbench.augment import normalize

    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = normalize(images[start:start + batch_size].to(device, non_blocking=True), mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
            with ctx:
                out.append(backbone(x).float())
    finally:
        backbone.train(was_training)
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------ trainer
@dataclass
class _Data:
    train_images: torch.Tensor  # uint8 [N, C, H, W] on the device
    knn_train_images: torch.Tensor | None
    knn_train_labels: torch.Tensor | None
    knn_test_images: torch.Tensor | None
    knn_test_labels: torch.Tensor | None
    info: dict[str, Any]


class Trainer:
    """One pretraining run (new or resumed). ``run()`` trains and returns the Run; ``stop()`` asks it to end."""

    def __init__(self, config: PretrainConfig | dict | None = None, callbacks: Iterable[Any] = (),
                 resume: str | os.PathLike | Run | None = None):
        self.callbacks = list(callbacks)
        self._stop = threading.Event()
        self.resume_run: Run | None = None
        if resume is not None:
            self.resume_run = resume if isinstance(resume, Run) else Run(resume)
            if not self.resume_run.path.is_dir():
                raise FileNotFoundError(f"resume: run folder {self.resume_run.path} does not exist")
            recorded = self.resume_run.config
            if not recorded:
                raise FileNotFoundError(f"resume: {self.resume_run.path} has no config.json (is it a run folder?)")
            base = from_dict(PretrainConfig, recorded)
            if config is not None:
                config = from_dict(PretrainConfig, config) if isinstance(config, dict) else config
                for section in ("method", "method_options", "model", "augment"):
                    if to_dict(getattr(config, section)) != to_dict(getattr(base, section)):
                        raise ConfigError(f"resume: config.{section} differs from the run's recorded "
                                          f"{section} ({to_dict(getattr(base, section))}); resume with the "
                                          "recorded config (pass config=None) or start a new run")
                for key in ("batch_size", "seed"):
                    if getattr(config.train, key) != getattr(base.train, key):
                        raise ConfigError(f"resume: train.{key}={getattr(config.train, key)} differs from the "
                                          f"run's {getattr(base.train, key)}; the batch order would not match")
                if config.data.name != base.data.name or config.data.options != base.data.options:
                    raise ConfigError(f"resume: config.data differs from the run's recorded data "
                                      f"({to_dict(base.data)})")
                config.data.mean, config.data.std = base.data.mean, base.data.std
            else:
                config = base
        if config is None:
            raise ConfigError("pretrain needs a PretrainConfig (or resume=RUN_DIR)")
        self.config = from_dict(PretrainConfig, config) if isinstance(config, dict) else config
        if not isinstance(self.config, PretrainConfig):
            raise ConfigError(f"pretrain: config must be a PretrainConfig or a dict, got {type(config).__name__}")
        self.rank, self.world, self.local_rank = init_distributed(self.config.train.device)
        self.is_main = self.rank == 0
        if self.resume_run is not None:
            self.run_record = self.resume_run
        elif self.is_main:
            self.run_record = self._create_run()
        else:
            self.run_record = None  # only rank 0 writes the run

    # -- small utilities ---------------------------------------------------------------------------------
    def _create_run(self) -> Run:
        c = self.config
        try:
            return Run.create(c.out, c.method, c.data.name, to_dict(c), name=c.name)
        except FileExistsError:
            raise ConfigError(f"PretrainConfig.name={c.name!r}: {Path(c.out) / str(c.name)} already exists; "
                              "choose another name, leave name=None, or resume it (resume=RUN_DIR)") from None

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

    # -- the run -----------------------------------------------------------------------------------------
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
                elif getattr(self, "step", None) is not None:
                    details["step"] = self.step
                if isinstance(e, KeyboardInterrupt):
                    details["error"] = "interrupted (KeyboardInterrupt)"
                details["checkpoint"] = ("last" if self.run_record.checkpoint_path("last").exists() else None)
                self.run_record.set_status("failed", **details)
                self._call("on_end", self.run_record.status)
            raise
        finally:
            if self.config.train.deterministic:
                torch.use_deterministic_algorithms(prev_det)

    def _setup(self) -> None:
        c, t = self.config, self.config.train
        self.device = resolve_device(t.device, self.local_rank)
        if self.world > 1 and t.batch_size % self.world:
            raise ConfigError(f"train.batch_size={t.batch_size} (the global batch) must be divisible by the number "
                              f"of processes {self.world}")
        if t.deterministic and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(t.seed)
        train_ds = load_data(c, "train")
        if len(train_ds) < t.batch_size:
            raise ConfigError(f"train.batch_size={t.batch_size} is larger than the training set ({len(train_ds)} "
                              f"images of {c.data.name!r}); lower the batch size or load more data")
        image_size, in_chans = int(train_ds.images.shape[-1]), int(train_ds.images.shape[1])
        if c.data.mean is None or c.data.std is None:
            mean, std = channel_stats(train_ds.images)
            c.data.mean, c.data.std = mean, std
            if self.is_main and self.resume_run is None:
                self.run_record.write_config(to_dict(c))
        if len(c.data.mean) not in (1, in_chans) or len(c.data.std) not in (1, in_chans):
            raise ConfigError(f"data.mean/std have {len(c.data.mean)}/{len(c.data.std)} values for {in_chans}-channel "
                              "images; give one value per channel")
        self.mean = tuple(c.data.mean) * (in_chans if len(c.data.mean) == 1 else 1)
        self.std = tuple(c.data.std) * (in_chans if len(c.data.std) == 1 else 1)
        self.aug = augment_config(c, image_size, self.mean, self.std)
        method = build_method_for(c, image_size, in_chans)
        self.resolved: ResolvedTrain = resolve_train(c)

        # data on the device, once; a fixed kNN subset of the train split and the test split (rank 0)
        knn_train_images = knn_train_labels = knn_test_images = knn_test_labels = None
        num_test = 0
        if self.is_main and t.knn_every > 0:
            g = torch.Generator().manual_seed(_mix(t.seed, 17))
            idx = torch.randperm(len(train_ds), generator=g)[:t.knn_max_train]
            knn_train_images, knn_train_labels = train_ds.images[idx], train_ds.labels[idx]
            try:
                test_ds = load_data(c, "test")
                num_test = len(test_ds)
                tidx = torch.arange(len(test_ds))
                if len(test_ds) > t.knn_max_test:
                    tidx = torch.randperm(len(test_ds), generator=g)[:t.knn_max_test]
                knn_test_images, knn_test_labels = test_ds.images[tidx], test_ds.labels[tidx]
            except Exception as e:  # no test split (e.g. an unlabeled folder): no kNN monitor, say why
                warnings.warn(f"kNN monitor off: the test split of {c.data.name!r} could not be loaded ({e})")
            if knn_train_labels is not None and bool((knn_train_labels < 0).all()):
                knn_test_images = knn_test_labels = None  # unlabeled data: nothing to score
        self.data = _Data(train_ds.images.to(self.device), knn_train_images, knn_train_labels, knn_test_images,
                          knn_test_labels, {})
        self.num_train = len(train_ds)
        self.info = {
            "method": c.method, "backbone": c.model.backbone, "backbone_options": dict(c.model.options),
            "data": {"name": c.data.name, "options": c.data.loader_kwargs()},
            "image_size": image_size, "in_chans": in_chans, "mean": list(self.mean), "std": list(self.std),
            "feature_dim": int(method.backbone.feature_dim), "num_classes": len(train_ds.class_names),
            "class_names": list(train_ds.class_names), "preset": self.aug.preset,
            "num_train": self.num_train, "num_test": num_test,
        }

        # precision, memory format, compile, DDP
        self.amp_dtype = None
        if t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda"):
            self.amp_dtype = torch.bfloat16
        is_cnn = getattr(method.backbone, "kind", "cnn") == "cnn"
        self.channels_last = t.channels_last == "on" or (t.channels_last == "auto" and self.device.type == "cuda"
                                                         and is_cnn)
        self.sync_bn = False
        if self.world > 1 and method.sync_batchnorm:
            if self.device.type == "cuda":
                method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
                self.sync_bn = True
            elif self.is_main:
                warnings.warn("SyncBatchNorm needs CUDA; on CPU each process normalises with its own batch "
                              "statistics")
        method.to(self.device)
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        self.method = method
        teacher_params = [p for m in method.teacher_modules() for p in m.parameters()]
        groups = param_groups(method, self.resolved.weight_decay, exclude=teacher_params)
        if not method.recipe.get("exclude_bias_norm_from_lars", True):
            for g in groups:
                g["lars_exclude"] = False
        self.optimizer = build_optimizer(self.resolved.optimizer, groups, self.resolved.lr,
                                         self.resolved.weight_decay, self.resolved.momentum, self.resolved.betas)
        self.steps_per_epoch = self.num_train // t.batch_size
        self.total_steps, self.warmup_steps = schedule_steps(t.epochs, self.steps_per_epoch,
                                                             self.resolved.warmup_epochs)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, self.warmup_steps)
        if t.compile:
            method.backbone.compile()
        stepper = _StepModule(method)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            find_unused = bool(getattr(method, "find_unused_parameters", method.requires_vit))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # broadcast_buffers' rename in newer torch
                stepper = DDP(stepper, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                              broadcast_buffers=False, find_unused_parameters=find_unused)
        self.stepper = stepper
        self.generator = torch.Generator(device=self.device)
        self.step, self.start_step, self._saved_step = 0, 0, -1
        self.info.update({"steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                          "warmup_steps": self.warmup_steps, "epochs": t.epochs, "world_size": self.world,
                          "device": str(self.device), "precision": "bf16" if self.amp_dtype else "fp32",
                          "channels_last": self.channels_last, "sync_batchnorm": self.sync_bn,
                          "train": self.resolved.to_dict(),
                          "lr_rule": "lr = base_lr * batch_size / 256 (global batch)"})

    def _restore(self) -> None:
        ckpt = self.resume_run.load_checkpoint("last", map_location=self.device)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"resume: {self.resume_run.checkpoint_path('last')} is not a workbench pretraining "
                             f"checkpoint (format {ckpt.get('format')!r})")
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = self.start_step = self._saved_step = int(ckpt["step"])
        rng = ckpt.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        if self.is_main:
            # drop metric records past the checkpoint (written by the attempt that is being resumed)
            kept = [r for r in self.resume_run.metrics() if int(r.get("step", 0)) <= self.step]
            import json

            atomic_write_bytes(self.resume_run.path / "metrics.jsonl",
                               "".join(json.dumps(r) + "\n" for r in kept).encode())

    def _checkpoint(self, name: str = "last") -> None:
        if not self.is_main:
            return
        if not _finite_state(self.method):
            raise TrainingDiverged(f"the model state holds NaN/inf at step {self.step}; the last good checkpoint "
                                   "is kept", self.step)
        state = {
            "format": CHECKPOINT_FORMAT, "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.step // max(1, self.steps_per_epoch),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                    "generator": self.generator.get_state()},
            "config": to_dict(self.config), "info": dict(self.info),
        }
        self.run_record.save_checkpoint(state, name)
        self._saved_step = self.step

    def _knn(self) -> float | None:
        d = self.data
        if not self.is_main or d.knn_test_images is None:
            return None
        from workbench.metrics import knn_accuracy

        backbone = self.method.backbone
        kw = dict(autocast_dtype=self.amp_dtype, channels_last=self.channels_last)
        train_f = extract_features(backbone, d.knn_train_images, self.mean, self.std, self.device, **kw)
        test_f = extract_features(backbone, d.knn_test_images, self.mean, self.std, self.device, **kw)
        return knn_accuracy(train_f, d.knn_train_labels.to(self.device), test_f, d.knn_test_labels.to(self.device),
                            k=self.config.train.knn_k, temperature=0.07)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        ok = torch.isfinite(loss.detach().float()).all().to(torch.float32).reshape(1)
        if self.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() > 0)

    def _run(self) -> Run:
        from workbench.augment import generate_views
        from workbench.methods.base import Progress

        self._setup()
        c, t = self.config, self.config.train
        if self.resume_run is not None:
            self._restore()
        run = self.run_record
        t0 = time.perf_counter()
        if self.is_main:
            run.set_status("running", step=self.step, total_steps=self.total_steps, world_size=self.world,
                           device=str(self.device), **({"resumed_from_step": self.step} if self.resume_run else {}))
            self._call("on_start", dict(self.info))
        method, stepper, opt, sched = self.method, self.stepper, self.optimizer, self.scheduler
        method.train()
        b_local = t.batch_size // self.world
        lo, hi = self.rank * b_local, (self.rank + 1) * b_local
        params = [p for g in opt.param_groups for p in g["params"]]
        end_step = self.total_steps if t.max_steps is None else min(self.total_steps, t.max_steps)
        bar = None
        if self.is_main and _progress_enabled(t.progress):
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{c.method}/{c.model.backbone}",
                       unit="step", dynamic_ncols=True)
        last_loss, last_knn, stopped, stop_requested = float("nan"), None, None, False
        window_t, window_steps = time.perf_counter(), 0
        try:
            while self.step < end_step:
                epoch = self.step // self.steps_per_epoch
                perm = torch.randperm(self.num_train, generator=torch.Generator().manual_seed(_mix(t.seed, epoch)))
                perm = perm.to(self.device)
                for i in range(self.step - epoch * self.steps_per_epoch, self.steps_per_epoch):
                    idx = perm[i * t.batch_size:(i + 1) * t.batch_size][lo:hi]
                    images = self.data.train_images[idx]
                    self.generator.manual_seed(_mix(t.seed, self.rank, self.step, 1))
                    vb = generate_views(images, self.aug, self.generator)
                    views = vb.views
                    if self.channels_last:
                        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                    progress = Progress(self.step, self.total_steps, epoch, t.epochs, self.steps_per_epoch,
                                        self.generator)
                    ctx = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype
                           else contextlib.nullcontext())
                    with ctx:
                        loss, features, logs = stepper(views, vb.num_global, images, progress)
                    if not self._all_finite(loss):
                        raise TrainingDiverged(f"loss is {float(loss.detach().float())} at step {self.step} "
                                               f"(epoch {epoch}); the run stopped before the optimizer step",
                                               self.step)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    log_now = self.is_main and ((self.step + 1) % t.log_every == 0 or self.step == self.start_step)
                    grad_norm = None
                    if t.clip_grad is not None:
                        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad)
                    elif log_now:
                        grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
                    lr_now = opt.param_groups[0]["lr"]
                    opt.step()
                    sched.step()
                    method.update_teacher(progress)
                    self.step += 1
                    window_steps += 1
                    if bar is not None:
                        bar.update(1)
                    if log_now:
                        last_loss = float(loss.detach().float())
                        from workbench.metrics import normalized_std, rankme

                        if self.device.type == "cuda":
                            torch.cuda.synchronize(self.device)
                        dt = (time.perf_counter() - window_t) / max(1, window_steps)
                        feats = features.detach().float()
                        record = {"kind": "step", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                                  "loss": last_loss, "lr": lr_now, "rankme": rankme(feats),
                                  "std": normalized_std(feats), "step_time": dt,
                                  "images_per_s": t.batch_size / dt if dt > 0 else None,
                                  "grad_norm": float(grad_norm) if grad_norm is not None else None}
                        for k, v in (logs or {}).items():
                            record.setdefault(k, float(v) if isinstance(v, (int, float, torch.Tensor)) else v)
                        run.log_metrics(record)
                        self._call("on_step", record)
                        if bar is not None:
                            bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
                        window_t, window_steps = time.perf_counter(), 0
                    stop_requested = self._stop.is_set()
                    if self.world > 1:
                        flag = torch.tensor([1.0 if stop_requested else 0.0], device=self.device)
                        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                        stop_requested = bool(flag.item() > 0)
                    if stop_requested or self.step >= end_step:
                        break
                if self.step % self.steps_per_epoch == 0:
                    done_epochs = self.step // self.steps_per_epoch
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
            if stopped is None and self.step < self.total_steps:
                stopped = "max_steps"
        except TrainingDiverged as e:
            # the state before the diverging update is still good: keep it as "last" unless it is not finite
            if self.is_main and _finite_state(method) and e.step == self.step:
                with contextlib.suppress(TrainingDiverged):
                    self._checkpoint()
            raise
        finally:
            if bar is not None:
                bar.close()
        wall = time.perf_counter() - t0
        if self.is_main:
            trained = self.step - self.start_step
            if last_knn is None and stopped and t.knn_every > 0:
                last_knn = self._knn()
            summary = {"steps": self.step, "epochs": self.step / self.steps_per_epoch, "train_loss": last_loss,
                       "knn_acc": last_knn, "wall_s": wall,
                       "images_per_s": trained * t.batch_size / wall if wall > 0 else None,
                       **{k: self.info[k] for k in ("mean", "std", "image_size", "in_chans", "feature_dim",
                                                   "world_size", "device", "precision")},
                       "train": self.resolved.to_dict(), "total_steps": self.total_steps}
            run.update_summary({"pretrain": summary, "pretrain_knn_acc": last_knn})
            details = {"step": self.step, "total_steps": self.total_steps, "checkpoint": "last"}
            if stopped == "stopped":
                details["stopped_early"] = True
            elif stopped == "max_steps":
                details["stopped_at_max_steps"] = True
            run.set_status("completed", **details)
            self._call("on_end", run.status)
        if self.world > 1:
            dist.barrier()
        return run if run is not None else Run(Path(c.out))


# ------------------------------------------------------------------------------------------------ API
def pretrain(config: PretrainConfig | dict | None = None, callbacks: Iterable[Any] = (),
             resume: str | os.PathLike | Run | None = None) -> Run:
    """Pretrain ``config`` (blocking) and return its Run; ``resume=RUN_DIR`` continues a run from its last
    checkpoint (``config`` None = the recorded config; a given config may change only train fields such as
    epochs or max_steps). NaN/inf loss raises TrainingDiverged after marking the run failed."""
    return Trainer(config, callbacks, resume).run()


class PretrainHandle:
    """A pretraining run in a background thread: ``.run`` (the Run, available at once), ``done()``,
    ``wait() -> Run`` (re-raises the run's exception), ``stop()`` (finish after the current step with a
    checkpoint; status completed with ``stopped_early``)."""

    def __init__(self, trainer: Trainer):
        self._trainer = trainer
        self.run: Run = trainer.run_record
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._target, name=f"pretrain-{self.run.path.name}", daemon=True)
        self._thread.start()

    def _target(self) -> None:
        try:
            self._trainer.run()
        except BaseException as e:  # recorded in status.json by the trainer; kept for wait()
            self.error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self) -> None:
        self._trainer.stop()

    def wait(self, timeout: float | None = None) -> Run:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"pretraining {self.run.path} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.run

    def __repr__(self) -> str:
        return f"PretrainHandle({str(self.run.path)!r}, done={self.done()})"


def start_pretrain(config: PretrainConfig | dict | None = None, callbacks: Iterable[Any] = (),
                   resume: str | os.PathLike | Run | None = None) -> PretrainHandle:
    """Start ``pretrain`` in a background thread (the config is validated and the run folder created first)."""
    return PretrainHandle(Trainer(config, callbacks, resume))


def _checkpoint_of(run_or_path: Any, checkpoint: str) -> tuple[dict[str, Any], Run | None]:
    path = Path(run_or_path.path if isinstance(run_or_path, Run) else run_or_path)
    if path.is_file():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        run = Run(path.parent.parent) if path.parent.name == "checkpoints" else None
    elif path.is_dir():
        run = Run(path)
        ckpt = run.load_checkpoint(checkpoint)
    else:
        raise FileNotFoundError(f"{path} is neither a run folder nor a checkpoint file")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a workbench pretraining checkpoint (format {ckpt.get('format')!r})")
    return ckpt, run


def load_method(run_or_path: Any, checkpoint: str = "last"):
    """The full trained Method (backbone, heads, teachers, decoders) of a run, in eval mode on the CPU,
    and its info dict."""
    ckpt, _ = _checkpoint_of(run_or_path, checkpoint)
    config = from_dict(PretrainConfig, ckpt["config"])
    info = dict(ckpt["info"])
    method = build_method_for(config, info["image_size"], info["in_chans"])
    method.load_state_dict(ckpt["method"])
    info.update(step=int(ckpt["step"]), epoch=int(ckpt["epoch"]))
    return method.eval(), info


def load_pretrained(run_or_path: Any, checkpoint: str = "last") -> tuple[nn.Module, dict[str, Any]]:
    """(backbone in eval mode on the CPU, info) of a run folder, a Run or a checkpoint file.

    info: mean, std, image_size, in_chans, method, backbone, backbone_options, data ({"name", "options"}),
    feature_dim, num_classes, class_names, preset, step, epoch.
    """
    from workbench.models.backbones import build_backbone

    ckpt, _ = _checkpoint_of(run_or_path, checkpoint)
    info = dict(ckpt["info"])
    backbone = build_backbone(info["backbone"], image_size=info["image_size"], in_chans=info["in_chans"],
                              **info.get("backbone_options", {}))
    prefix = "backbone."
    state = {k[len(prefix):]: v for k, v in ckpt["method"].items() if k.startswith(prefix)}
    backbone.load_state_dict(state)
    info.update(step=int(ckpt["step"]), epoch=int(ckpt["epoch"]))
    return backbone.eval(), info
