"""Everything a pretraining run needs before its first step: processes, data on the device, the method,
precision and memory format, optimizer and schedule, compile and DDP. The loop (``engine.py``) only trains.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from workbench.config import ConfigError, from_dict, to_dict
from workbench.device import autocast_dtype, cpu_has_native_bf16
from workbench.runs import Run
from workbench.train.config import PretrainConfig, ResolvedTrain, augment_config, resolve_train, schedule_steps
from workbench.train.optim import build_optimizer, build_scheduler, param_groups


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


def mix_seed(*xs: int) -> int:
    """A 63-bit seed from integers (seed, rank, step, ...) so each step's randomness is addressable."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h ^= (int(x) + 0x9E3779B97F4A7C15 + ((h << 6) & (2 ** 64 - 1)) + (h >> 2)) & (2 ** 64 - 1)
        h = (h * 0xBF58476D1CE4E5B9) & (2 ** 64 - 1)
    return h & (2 ** 63 - 1)


def load_data(config: PretrainConfig, split: str):
    """``workbench.data.load(name, split, **config.data.loader_kwargs())``."""
    import workbench.data as data_pkg  # registers the built-in loaders

    return data_pkg.load(config.data.name, split=split, **config.data.loader_kwargs())


def build_method_for(config: PretrainConfig, image_size: int, in_chans: int):
    """Backbone + method of ``config`` for ``image_size`` px images with ``in_chans`` channels (on the CPU)."""
    from workbench.methods import build_method
    from workbench.models.backbones import build_backbone

    try:
        backbone = build_backbone(config.model.backbone, image_size=image_size, in_chans=in_chans,
                                  **config.model.options)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    return build_method(config.method, backbone, config.method_options)


def resume_config(run: Run, config: PretrainConfig | dict | None) -> PretrainConfig:
    """The config to resume ``run`` with: its recorded config, or ``config`` where it changes only what a resume
    may change (epochs, max_steps, logging ...); anything that would change the model or the batch order is
    a ConfigError naming the section."""
    if not run.path.is_dir():
        raise FileNotFoundError(f"resume: run folder {run.path} does not exist")
    recorded = run.config
    if not recorded:
        raise FileNotFoundError(f"resume: {run.path} has no config.json (is it a run folder?)")
    base = from_dict(PretrainConfig, recorded)
    if config is None:
        return base
    config = from_dict(PretrainConfig, config) if isinstance(config, dict) else config
    for section in ("method", "method_options", "model", "augment"):
        if to_dict(getattr(config, section)) != to_dict(getattr(base, section)):
            raise ConfigError(f"resume: config.{section} differs from the run's recorded {section} "
                              f"({to_dict(getattr(base, section))}); resume with the recorded config "
                              "(pass config=None) or start a new run")
    for key in ("batch_size", "seed"):
        if getattr(config.train, key) != getattr(base.train, key):
            raise ConfigError(f"resume: train.{key}={getattr(config.train, key)} differs from the run's "
                              f"{getattr(base.train, key)}; the batch order would not match")
    if config.data.name != base.data.name or config.data.options != base.data.options:
        raise ConfigError(f"resume: config.data differs from the run's recorded data ({to_dict(base.data)})")
    config.data.mean, config.data.std = base.data.mean, base.data.std
    return config


@dataclass
class TrainingData:
    """The training images (uint8 [N, C, H, W], on the device) or, streamed, their ``stream`` source
    (``workbench.data.stream``; ``train_images`` is None then), and the kNN monitor's fixed subsets (CPU;
    None when the monitor is off or the data has no labelled test split)."""

    train_images: torch.Tensor | None
    class_names: list[str]
    knn_train_images: torch.Tensor | None = None
    knn_train_labels: torch.Tensor | None = None
    knn_test_images: torch.Tensor | None = None
    knn_test_labels: torch.Tensor | None = None
    num_test: int = 0
    skipped: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # split -> (file, reason) left out
    stream: Any = None

    @property
    def num_train(self) -> int:
        return len(self.stream) if self.stream is not None else int(self.train_images.shape[0])

    @property
    def image_size(self) -> int:
        return self.stream.size if self.stream is not None else int(self.train_images.shape[-1])

    @property
    def in_chans(self) -> int:
        return self.stream.channels if self.stream is not None else int(self.train_images.shape[1])


def prepare_data(config: PretrainConfig, device: torch.device, with_monitor: bool) -> TrainingData:
    """Load the training split to ``device`` once and (``with_monitor``: rank 0 with ``knn_every``) fixed kNN
    subsets of the train and test splits; fills ``config.data.mean/std`` from the images when unset."""
    from workbench.data import channel_stats
    from workbench.data.stream import open_stream

    t = config.train
    source = open_stream(config.data.name, "train", **config.data.loader_kwargs())
    if source is not None:
        return prepare_stream(config, source, with_monitor)
    train_ds = load_data(config, "train")
    if len(train_ds) < t.batch_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is larger than the training set ({len(train_ds)} "
                          f"images of {config.data.name!r}); lower the batch size or load more data")
    if config.data.mean is None or config.data.std is None:
        config.data.mean, config.data.std = channel_stats(train_ds.images)
    chans = train_ds.images.shape[1]
    if len(config.data.mean) not in (1, chans) or len(config.data.std) not in (1, chans):
        raise ConfigError(f"data.mean/std have {len(config.data.mean)}/{len(config.data.std)} values for "
                          f"{chans}-channel images; give one value per channel")
    data = TrainingData(train_ds.images.to(device), list(train_ds.class_names))
    if train_ds.skipped:  # data.options.skip_corrupt: the files left out are recorded in the run
        data.skipped["train"] = list(train_ds.skipped)
    if not with_monitor or bool((train_ds.labels < 0).all()):  # unlabeled data: nothing to score
        return data
    g = torch.Generator().manual_seed(mix_seed(t.seed, 17))
    idx = torch.randperm(len(train_ds), generator=g)[:t.knn_max_train]
    try:
        test_ds = load_data(config, "test")
    except (FileNotFoundError, ValueError) as e:  # no test split (e.g. an unlabeled folder): say why
        warnings.warn(f"kNN monitor off: the test split of {config.data.name!r} could not be loaded ({e})")
        return data
    if test_ds.skipped:
        data.skipped["test"] = list(test_ds.skipped)
    tidx = torch.arange(len(test_ds))
    if len(test_ds) > t.knn_max_test:
        tidx = torch.randperm(len(test_ds), generator=g)[:t.knn_max_test]
    data.knn_train_images, data.knn_train_labels = train_ds.images[idx], train_ds.labels[idx]
    data.knn_test_images, data.knn_test_labels = test_ds.images[tidx], test_ds.labels[tidx]
    data.num_test = len(test_ds)
    return data


STATS_SAMPLE = 2000  # images a streamed split's mean/std are computed from


def prepare_stream(config: PretrainConfig, source: Any, with_monitor: bool) -> TrainingData:
    """``prepare_data`` for a streamed train split (``source``, a ``workbench.data.stream.StreamSource``): nothing is
    decoded but a seeded sample of the split (the first images of shards, read in order) for mean/std when unset
    (``STATS_SAMPLE`` images) and the kNN monitor's subsets (``knn_max_train``/``knn_max_test`` images, the test
    split opened as a source too), decoded as the in-memory loader would (centre square at ``size``)."""
    import dataclasses

    from workbench.data import channel_stats
    from workbench.data.stream import open_source

    t, c = config.train, config.data
    n = len(source)
    if n < t.batch_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is larger than the training set ({n} images of "
                          f"{c.name!r}); lower the batch size or add data")
    g = torch.Generator().manual_seed(mix_seed(t.seed, 17))

    def pick(src: Any, k: int) -> torch.Tensor:  # a seeded subset, or the first k where reading is in order
        return torch.randperm(len(src), generator=g)[:k] if src.random_access else torch.arange(min(len(src), k))

    need_stats = c.mean is None or c.std is None
    want = max(t.knn_max_train if with_monitor else 0, STATS_SAMPLE if need_stats else 0)
    # unreadable files in the sample are left out here; the epoch that reads them reports them by the policy
    sample = dataclasses.replace(source, skip_corrupt=True).subset(pick(source, want)) if want else None
    if need_stats:
        c.mean, c.std = channel_stats(sample.images[:STATS_SAMPLE])
    if len(c.mean) not in (1, source.channels) or len(c.std) not in (1, source.channels):
        raise ConfigError(f"data.mean/std have {len(c.mean)}/{len(c.std)} values for {source.channels}-channel "
                          "images; give one value per channel")
    data = TrainingData(None, list(source.class_names), stream=source)
    if sample is not None and sample.skipped and source.skip_corrupt:
        data.skipped["train"] = list(sample.skipped)
    if not with_monitor or bool((sample.labels < 0).all()):  # unlabeled data: nothing to score
        return data
    try:
        test = open_source(c.name, "test", **c.loader_kwargs())
        test_ds = test.subset(pick(test, t.knn_max_test))
    except (FileNotFoundError, ValueError) as e:  # no test split (e.g. an unlabeled folder): say why
        warnings.warn(f"kNN monitor off: the test split of {c.name!r} could not be loaded ({e})")
        return data
    if test_ds.skipped:
        data.skipped["test"] = list(test_ds.skipped)
    k = min(len(sample), t.knn_max_train)
    data.knn_train_images, data.knn_train_labels = sample.images[:k], sample.labels[:k]
    data.knn_test_images, data.knn_test_labels = test_ds.images, test_ds.labels
    data.num_test = len(test)
    return data


class StepModule(nn.Module):
    """Wraps a Method so DistributedDataParallel sees ``training_step`` as ``forward``."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, views: list[torch.Tensor], num_global: int, images: torch.Tensor, progress: Any):
        from workbench.methods.base import Batch

        out = self.method.training_step(Batch(list(views), num_global, images), progress)
        return out.loss, out.features, out.logs


@dataclass
class TrainingParts:
    """What the loop drives: the method on its device, the callable step (DDP-wrapped under torchrun), the
    optimizer and per-step schedule, and the settings chosen for this device."""

    method: nn.Module
    stepper: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    resolved: ResolvedTrain
    amp_dtype: torch.dtype | None
    channels_last: bool
    sync_bn: bool
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


# the entry points of a backbone the methods call besides forward (ViT: MAE, I-JEPA, DINO/SwAV multi-crop)
COMPILED_ENTRY_POINTS = ("forward", "forward_tokens", "encode", "embed_any_size")


def compile_method(method: nn.Module, compile_fn: Any = None) -> list[str]:
    """``torch.compile`` what a training step calls: for each direct submodule of ``method`` (the backbone, heads,
    predictors, decoders and the EMA teachers), ``forward`` and the backbone entry points it has
    (``COMPILED_ENTRY_POINTS``). Each is bound to its module as a compiled method (so a deep copy rebinds to the
    copy rather than calling the original). Submodules holding SyncBatchNorm stay eager (a graph break at every
    norm layer): their entry points are bound through ``torch.compiler.disable``, so a compile of the whole step
    (``ddp_step``) runs them eagerly too; their names are returned. ``compile_fn``: ``torch.compile`` unless given
    (tests, profiles)."""
    import types

    compile_fn = compile_fn or torch.compile
    eager = []
    for name, module in method.named_children():
        sync_bn = any(isinstance(m, nn.SyncBatchNorm) for m in module.modules())
        if sync_bn:
            eager.append(name)
        for entry in COMPILED_ENTRY_POINTS:
            fn = getattr(type(module), entry, None)
            if fn is None or not callable(fn):
                continue
            wrapped = torch.compiler.disable(fn) if sync_bn else compile_fn(fn)
            setattr(module, entry, types.MethodType(wrapped, module))
    return eager


def ddp_step(method: nn.Module, device: torch.device, compile: bool = False, compile_fn: Any = None,
             bucket_cap_mb: float = 25.0) -> nn.Module:
    """The step of a DDP run: ``StepModule(method)`` in DistributedDataParallel (``bucket_cap_mb`` per gradient
    bucket); with ``compile``, the DDP-wrapped module itself goes through ``compile_fn`` (``torch.compile``).

    Why the wrapper: a compiled graph's backward is one autograd node, so all its gradients become ready together
    at its end and DDP's all-reduce cannot start before. Dynamo's DDPOptimizer (``torch._dynamo.config.optimize_ddp
    = "ddp_optimizer"``, set here) cuts each graph captured inside DDP's forward at DDP's bucket boundaries (the
    first bucket 1 MB), so the late subgraphs' buckets all-reduce while the early ones still compute. Compiled
    whole, the step is one graph (student, loss, the all-gather, the teacher under no_grad) cut along the buckets
    of all its parameters; where it breaks (a torch.Generator argument), the per-submodule compiles of
    ``compile_method`` run and are cut per bucket too. DDP's own forward runs eagerly (dynamo skips it). Expect
    one recompile at step 1 for methods whose step reads ``progress.step`` (it becomes symbolic). DDP searches for
    unused parameters only when the method asks (``find_unused_parameters``): every method uses all its trainable
    parameters in every step (DINO/SwAV freeze layers with a zero gradient that stays in the graph)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if compile:
        import torch._dynamo

        torch._dynamo.config.optimize_ddp = "ddp_optimizer"  # DDP reads the mode when it is built, dynamo per frame
    find_unused = bool(getattr(method, "find_unused_parameters", False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # broadcast_buffers' rename in newer torch
        stepper: nn.Module = DDP(StepModule(method), device_ids=[device.index] if device.type == "cuda" else None,
                                 broadcast_buffers=False, find_unused_parameters=find_unused,
                                 bucket_cap_mb=bucket_cap_mb)
    if compile:
        stepper = (compile_fn or torch.compile)(stepper)
    return stepper


def use_channels_last(setting: str, is_cnn: bool, device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """train.channels_last resolved: "on"/"off" as given; "auto" for CNNs on CUDA, and on a CPU in bf16 (oneDNN's
    bf16 convolutions: +30 % images/s for SimCLR on the small CNN at batch 256, ``benchmarks/train_throughput.py
    --repeats 5``; per-epoch losses within 0.002 of the contiguous layout's on seeds 0-2)."""
    if setting != "auto":
        return setting == "on"
    return is_cnn and (device.type == "cuda" or amp_dtype is not None)


def build_training(config: PretrainConfig, data: TrainingData, device: torch.device, world: int,
                   is_main: bool) -> TrainingParts:
    """Method, precision (bf16 autocast on CUDA under ``auto``; opt-in on a CPU), channels_last
    (``use_channels_last``),
    SyncBatchNorm under DDP on CUDA, optimizer with norm/bias exclusion (and DINOv2's per-layer lr multipliers),
    warm-up + cosine schedule (and DINOv2's cosine weight decay), opt-in
    ``torch.compile`` of what the step calls, and the DDP wrapper (compiled too under ``train.compile``:
    ``ddp_step``)."""
    t = config.train
    method = build_method_for(config, data.image_size, data.in_chans)
    resolved = resolve_train(config)
    amp_dtype = autocast_dtype(t.precision, device)
    if amp_dtype is not None and device.type == "cpu" and is_main and not cpu_has_native_bf16():
        warnings.warn("train.precision='bf16' on a CPU without native bf16 (AVX512-BF16/AMX): oneDNN emulates it, "
                      "slower than fp32; use precision='auto' or 'fp32' here")
    channels_last = use_channels_last(t.channels_last, getattr(method.backbone, "kind", "cnn") == "cnn", device,
                                      amp_dtype)
    sync_bn = False
    if world > 1 and method.sync_batchnorm:
        if device.type == "cuda":
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
            sync_bn = True
        elif is_main:
            warnings.warn("SyncBatchNorm needs CUDA; on CPU each process normalises with its own batch statistics")
    method.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    teacher_params = [p for m in method.teacher_modules() for p in m.parameters()]
    # layer decay and the patch-embedding multiplier scale the student backbone's groups (teachers are excluded)
    groups = param_groups(method, resolved.weight_decay, exclude=teacher_params, layer_decay=resolved.layer_decay,
                          patch_embed_lr_mult=resolved.patch_embed_lr_mult)
    if not method.recipe.exclude_bias_norm_from_lars:
        for g in groups:
            g["lars_exclude"] = False
    optimizer = build_optimizer(resolved.optimizer, groups, resolved.lr, resolved.weight_decay, resolved.momentum,
                                resolved.betas)
    steps_per_epoch = data.num_train // t.batch_size
    total_steps, warmup_steps = schedule_steps(t.epochs, steps_per_epoch, resolved.warmup_epochs)
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps, resolved.weight_decay, resolved.weight_decay_end)
    if t.compile:
        eager = compile_method(method)
        if eager and is_main:
            warnings.warn(f"train.compile: {eager} hold SyncBatchNorm, which breaks a compiled graph at every norm "
                          "layer; they run eagerly (the rest of the method is compiled)")
    stepper = ddp_step(method, device, compile=t.compile) if world > 1 else StepModule(method)
    return TrainingParts(method, stepper, optimizer, scheduler, resolved, amp_dtype, channels_last, sync_bn,
                         steps_per_epoch, total_steps, warmup_steps)


def describe(config: PretrainConfig, data: TrainingData, parts: TrainingParts, device: torch.device,
             world: int) -> dict[str, Any]:
    """The run's ``info`` record (checkpoints and summary carry it; ``workbench.trained`` rebuilds the backbone
    from it): method, backbone name and options, data, image size, channels, mean/std and the training setup."""
    c, chans = config, data.in_chans
    mean = tuple(c.data.mean) * (chans if len(c.data.mean) == 1 else 1)
    std = tuple(c.data.std) * (chans if len(c.data.std) == 1 else 1)
    return {
        "method": c.method, "backbone": c.model.backbone, "backbone_options": dict(c.model.options),
        "data": {"name": c.data.name, "options": c.data.loader_kwargs()},
        "image_size": data.image_size, "in_chans": chans, "mean": list(mean), "std": list(std),
        "feature_dim": int(parts.method.backbone.feature_dim), "num_classes": len(data.class_names),
        "class_names": list(data.class_names), "preset": augment_config(c, data.image_size).preset,
        "num_train": data.num_train, "num_test": data.num_test,
        "steps_per_epoch": parts.steps_per_epoch, "total_steps": parts.total_steps,
        "warmup_steps": parts.warmup_steps, "epochs": c.train.epochs, "world_size": world, "device": str(device),
        "precision": "bf16" if parts.amp_dtype else "fp32", "channels_last": parts.channels_last,
        "sync_batchnorm": parts.sync_bn, "train": parts.resolved.to_dict(),
        "lr_rule": "lr = base_lr * batch_size / 256 (global batch)",
    }
