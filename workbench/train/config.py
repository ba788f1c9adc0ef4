"""Pretraining configs: data, model, training loop, and the whole-run ``PretrainConfig``.

Every field is a plain value so a config maps to and from JSON (config.json of a run), papermill parameters
and CLI ``key=value`` overrides (``workbench.config.apply_overrides``). Optimizer fields left ``None`` are
filled from the method's ``recipe`` when the run starts (``resolve_train``); the learning rate is a **base
learning rate per 256 images**, scaled linearly with the (global) batch size: ``lr_used = lr * batch_size / 256``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from workbench.config import ConfigError, check_choice, check_range
from workbench.methods.base import OPTIMIZERS, check_schedule_fields

PRECISIONS = ("auto", "fast", "bf16", "fp32")
PROGRESS = ("auto", "on", "off")
CHANNELS_LAST = ("auto", "on", "off")


@dataclass
class DataConfig:
    """Which data set to pretrain on: ``workbench.data.load(name, split, **options)`` (+ ``root``, ``size``,
    ``download`` when set). ``mean``/``std``: per-channel normalisation; None = computed from the training
    images when the run starts (recorded in the run)."""

    name: str = "shapes"
    root: str | None = None
    image_size: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    download: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None

    def __post_init__(self) -> None:
        o = "DataConfig"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"{o}.name={self.name!r} must be a data set name such as 'shapes'")
        if self.image_size is not None:
            if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 8:
                raise ConfigError(f"{o}.image_size={self.image_size!r} must be an integer >= 8 (or None: the data "
                                  "set's own size)")
        if not isinstance(self.options, dict):
            raise ConfigError(f"{o}.options={self.options!r} must be a mapping of loader options (e.g. {{'n': 2000}})")
        for k in ("split", "size", "root", "download"):
            if k in self.options:
                hint = {"split": "the engine loads both splits itself", "size": "use DataConfig.image_size",
                        "root": "use DataConfig.root", "download": "use DataConfig.download"}[k]
                raise ConfigError(f"{o}.options[{k!r}] is not allowed: {hint}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, (int, float)) for x in v):
                    raise ConfigError(f"{o}.{name}={v!r} must be a list of numbers (one per channel) or None")
                setattr(self, name, [float(x) for x in v])
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConfigError(f"{o}.std={self.std!r} must be positive")

    def loader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``workbench.data.load`` (besides name and split)."""
        kw = dict(self.options)
        if self.root is not None:
            kw["root"] = self.root
        if self.image_size is not None:
            kw["size"] = self.image_size
        if self.download:
            kw["download"] = True
        return kw


@dataclass
class ModelConfig:
    """Backbone name (``workbench.models.known_backbones()``) and its options, a plain dict of the fields of the
    backbone's options dataclass (``width``; ``small_stem``; ``patch_size``, ``depth``, ``drop_path_rate``),
    validated when the config is made (``workbench.models.backbones.backbone_options``). A spec such as
    ``timm:resnet18`` or ``torchvision:resnet50`` takes ``pretrained``, ``weights`` and the library's own keyword
    arguments (``workbench.models.external``)."""

    backbone: str = "small_cnn"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from workbench.models.backbones import backbone_options, known_backbones
        from workbench.models.external import is_spec

        if not is_spec(self.backbone):  # timm:/hf-hub:/torchvision: specs are checked by backbone_options
            check_choice("ModelConfig", "backbone", self.backbone, known_backbones())
        if not isinstance(self.options, dict):
            raise ConfigError(f"ModelConfig.options={self.options!r} must be a mapping (e.g. {{'width': 32}})")
        for k in ("image_size", "in_chans"):
            if k in self.options:
                raise ConfigError(f"ModelConfig.options[{k!r}] is not allowed: it comes from the data "
                                  "(set DataConfig.image_size to resize)")
        try:
            backbone_options(self.backbone, self.options)
        except ConfigError as e:
            raise ConfigError(f"model.options: {e}") from None

    @property
    def is_vit(self) -> bool:
        from workbench.models.backbones import backbone_kind

        return backbone_kind(self.backbone, self.options) == "vit"


@dataclass
class TrainConfig:
    """The training loop. ``optimizer``/``lr``/``weight_decay``/``warmup_epochs``/``betas`` left None come from
    the method's recipe; ``lr`` is per 256 images (scaled linearly with ``batch_size``, the global batch).

    precision "auto": bf16 autocast on CUDA, fp32 on a CPU ("bf16" opts in there: about twice fp32's speed on CPUs
    with native bf16, see ``workbench.device.autocast_dtype`` for what it changes; "fast": bf16 where it is native,
    fp32 where it would be emulated). channels_last "auto": on for CNNs on CUDA, and in bf16 on a CPU.
    ``max_steps`` stops early (the schedule still spans ``epochs``), e.g. to resume later.
    Checkpoints: ``checkpoints/last.pt`` every ``checkpoint_every`` epochs, every ``checkpoint_steps`` steps (None:
    epoch ends only) and at the end; ``keep_checkpoints`` K > 0 also keeps the newest K of them as
    ``epoch-NNNN.pt`` / ``step-NNNNNNNN.pt`` (0: last.pt only).
    ``knn_every`` epochs a weighted kNN (k=``knn_k``, T=0.07) of backbone features on the test split against
    at most ``knn_max_train`` training images (and ``knn_max_test`` test images); 0 disables it.
    ``loggers``: where the run is also tracked, any of "tensorboard", "mlflow" (a list, or "tensorboard,mlflow";
    ``workbench.train.loggers``).
    DINOv2's optimisation recipe, for any method (None: the method's recipe, off for all but ``dinov2``):
    ``weight_decay_end`` makes the weight decay a cosine from ``weight_decay`` to it over the run (set it equal to
    ``weight_decay`` for a constant one); ``layer_decay`` in (0, 1] gives ViT block k of n (embeddings k=0, the rest
    n + 1) the lr ``lr * layer_decay ** (n + 1 - k)`` (1.0: off; ViT backbones only); ``patch_embed_lr_mult`` in
    (0, 1] scales the patch embedding's lr further. Only the student is optimized: EMA teachers are unaffected.
    """

    epochs: int = 10
    batch_size: int = 256
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    betas: list[float] | None = None
    momentum: float = 0.9
    clip_grad: float | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    channels_last: str = "auto"
    log_every: int = 10
    knn_every: int = 1
    knn_k: int = 20
    knn_max_train: int = 5000
    knn_max_test: int = 10000
    checkpoint_every: int = 1
    checkpoint_steps: int | None = None
    keep_checkpoints: int = 0
    max_steps: int | None = None
    deterministic: bool = False
    progress: str = "auto"
    loggers: list[str] | str = field(default_factory=list)
    weight_decay_end: float | None = None
    layer_decay: float | None = None
    patch_embed_lr_mult: float | None = None

    def __post_init__(self) -> None:
        o = "TrainConfig"
        check_schedule_fields(o, self.weight_decay_end, self.layer_decay, self.patch_embed_lr_mult)
        from workbench.train.loggers import LOGGERS
        if isinstance(self.loggers, str):
            self.loggers = [n.strip() for n in self.loggers.split(",") if n.strip()]
        if not isinstance(self.loggers, (list, tuple)) or not all(isinstance(n, str) for n in self.loggers):
            raise ConfigError(f"{o}.loggers={self.loggers!r} must be a list of logger names (or 'tensorboard,mlflow')")
        for n in self.loggers:
            if n not in LOGGERS:
                raise ConfigError(f"{o}.loggers: {n!r} is not a logger; choose from {list(LOGGERS)}")
        self.loggers = list(dict.fromkeys(self.loggers))
        for name in ("epochs", "batch_size", "log_every", "knn_k", "knn_max_train", "knn_max_test",
                     "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{o}.{name}={v!r} must be an integer >= 1")
        if not isinstance(self.knn_every, int) or isinstance(self.knn_every, bool) or self.knn_every < 0:
            raise ConfigError(f"{o}.knn_every={self.knn_every!r} must be an integer >= 0 (0 = no kNN monitor)")
        if self.optimizer is not None:
            check_choice(o, "optimizer", self.optimizer, OPTIMIZERS)
        if self.lr is not None:
            check_range(o, "lr", self.lr, 0.0, low_inclusive=False)
        if self.weight_decay is not None:
            check_range(o, "weight_decay", self.weight_decay, 0.0)
        if self.warmup_epochs is not None:
            check_range(o, "warmup_epochs", self.warmup_epochs, 0.0)
        if self.betas is not None:
            if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
                raise ConfigError(f"{o}.betas={self.betas!r} must be a pair [beta1, beta2] (AdamW)")
            for i, b in enumerate(self.betas):
                check_range(o, f"betas[{i}]", b, 0.0, 1.0, high_inclusive=False)
            self.betas = [float(b) for b in self.betas]
        check_range(o, "momentum", self.momentum, 0.0, 1.0, high_inclusive=False)
        if self.clip_grad is not None:
            check_range(o, "clip_grad", self.clip_grad, 0.0, low_inclusive=False)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"{o}.seed={self.seed!r} must be an integer >= 0")
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu", "cuda")
                                                   or self.device.startswith("cuda:")):
            raise ConfigError(f"{o}.device={self.device!r} is not allowed; choose 'auto', 'cpu', 'cuda' or 'cuda:N'")
        check_choice(o, "precision", self.precision, PRECISIONS)
        check_choice(o, "channels_last", self.channels_last, CHANNELS_LAST)
        check_choice(o, "progress", self.progress, PROGRESS)
        steps = self.checkpoint_steps
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ConfigError(f"{o}.checkpoint_steps={self.checkpoint_steps!r} must be an integer >= 1 (or None: "
                              "checkpoint at epoch ends only)")
        if (not isinstance(self.keep_checkpoints, int) or isinstance(self.keep_checkpoints, bool)
                or self.keep_checkpoints < 0):
            raise ConfigError(f"{o}.keep_checkpoints={self.keep_checkpoints!r} must be an integer >= 0 (0: keep "
                              "only checkpoints/last.pt)")
        if self.max_steps is not None:
            if not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool) or self.max_steps < 1:
                raise ConfigError(f"{o}.max_steps={self.max_steps!r} must be an integer >= 1 (or None: run all epochs)")


@dataclass
class PretrainConfig:
    """A whole pretraining run: method (+ its options), data, backbone, augmentation, loop, output folder.

    ``augment``: overrides of the method's default preset, ``{"preset": "byol", "jitter_p": 0.5, ...}`` (any
    ViewOps field applies to every view), or a full view list ``{"views": [{...}, ...], "num_global": 2}``.
    ``out``: the folder that holds run folders; ``name``: the run folder's name (default: time-method-data-id).
    """

    method: str = "simclr"
    method_options: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs"
    name: str | None = None

    def __post_init__(self) -> None:
        from workbench.config import from_dict
        from workbench.methods import make_method_config, method_class
        from workbench.models.external import is_spec

        o = "PretrainConfig"
        for fname, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
            v = getattr(self, fname)
            if isinstance(v, dict):
                setattr(self, fname, from_dict(cls, v))
            elif not isinstance(v, cls):
                raise ConfigError(f"{o}.{fname} must be a {cls.__name__} or a mapping of its fields, got {v!r}")
        cls = method_class(self.method)  # unknown method -> ConfigError listing the known
        make_method_config(self.method, self.method_options)  # unknown/invalid option -> ConfigError
        if not isinstance(self.augment, dict):
            raise ConfigError(f"{o}.augment={self.augment!r} must be a mapping of preset overrides "
                              "(e.g. {'preset': 'byol', 'jitter_p': 0.5})")
        if cls.requires_vit and not self.model.is_vit:
            raise ConfigError(f"method {self.method!r} needs a ViT backbone; model.backbone={self.model.backbone!r} "
                              f"is a CNN. Use model.backbone='vit_tiny' (or 'vit_small')")
        if cls.model_options and self.model.is_vit and not is_spec(self.model.backbone):
            # the paper's transformer (e.g. NEPA's RoPE, QK-norm, LayerScale) unless the run's options say otherwise
            self.model = ModelConfig(self.model.backbone, {**cls.model_options, **self.model.options})
        vit_only = {k: getattr(self.train, k) for k in ("layer_decay", "patch_embed_lr_mult")
                    if getattr(self.train, k) not in (None, 1.0)}
        if vit_only and not self.model.is_vit:
            k, v = next(iter(vit_only.items()))
            raise ConfigError(f"train.{k}={v} needs a ViT backbone (it scales the learning rate of its blocks / patch "
                              f"embedding); model.backbone={self.model.backbone!r} is a CNN. Use 'vit_tiny', "
                              f"'vit_small' or a timm: ViT, or set train.{k}=None")
        if self.train.batch_size < cls.min_batch_size:
            raise ConfigError(f"train.batch_size={self.train.batch_size} is too small for {self.method!r}: it needs "
                              f"at least {cls.min_batch_size} images per batch (it compares samples across the batch)")
        if self.model.is_vit and self.data.image_size is not None:
            from workbench.models.backbones import backbone_patch_size

            patch = backbone_patch_size(self.model.backbone, self.model.options)
            if patch and self.data.image_size % patch:
                good = [p for p in range(2, self.data.image_size + 1) if self.data.image_size % p == 0]
                raise ConfigError(f"model.options.patch_size={patch!r} does not divide data.image_size="
                                  f"{self.data.image_size}; choose one of {good}")
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError(f"{o}.out={self.out!r} must be a folder path")
        if self.name is not None and (not isinstance(self.name, str) or not self.name or "/" in self.name):
            raise ConfigError(f"{o}.name={self.name!r} must be a folder name without '/' (or None)")
        # the augmentation overrides must make a valid preset with the views the method needs (checked at a
        # nominal size; the run rebuilds it)
        cls.check_num_views(augment_config(self, self.data.image_size or 32).num_views)

    @property
    def method_class(self):
        from workbench.methods import method_class

        return method_class(self.method)


def augment_config(config: PretrainConfig, image_size: int, mean: tuple[float, ...] | None = None,
                   std: tuple[float, ...] | None = None):
    """The AugmentConfig a run uses: the method's preset (or ``augment["preset"]``) with the overrides."""
    from workbench.augment import make_preset
    from workbench.methods import make_method_config

    cls = config.method_class
    overrides = {**cls.augment_defaults(make_method_config(config.method, config.method_options)), **config.augment}
    preset = overrides.pop("preset", cls.preset)
    kw: dict[str, Any] = {}
    if mean is not None:
        kw["mean"], kw["std"] = tuple(mean), tuple(std)
    try:
        return make_preset(preset, image_size, **kw, **overrides)
    except ConfigError as e:
        raise ConfigError(f"PretrainConfig.augment: {e}") from None


@dataclass
class ResolvedTrain:
    """Optimizer settings after filling unset fields from the method's recipe, for one global batch size."""

    optimizer: str
    base_lr: float
    lr: float
    weight_decay: float
    warmup_epochs: float
    betas: tuple[float, float]
    momentum: float
    weight_decay_end: float | None = None
    layer_decay: float | None = None
    patch_embed_lr_mult: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def resolve_train(config: PretrainConfig) -> ResolvedTrain:
    """Fill None optimizer fields (DINOv2's schedule fields too) from the method's ``recipe``;
    ``lr = base_lr * batch_size / 256``. A layer decay of 1.0 resolves to None (off)."""
    t, recipe = config.train, config.method_class.recipe
    optimizer = t.optimizer or recipe.optimizer
    base_lr = float(t.lr if t.lr is not None else recipe.lr)
    wd = float(t.weight_decay if t.weight_decay is not None else recipe.weight_decay)
    warmup = float(t.warmup_epochs if t.warmup_epochs is not None else recipe.warmup_epochs)
    betas = tuple(t.betas if t.betas is not None else recipe.betas)
    momentum = float(t.momentum)
    wd_end = t.weight_decay_end if t.weight_decay_end is not None else recipe.weight_decay_end
    layer_decay = t.layer_decay if t.layer_decay is not None else recipe.layer_decay
    patch_mult = t.patch_embed_lr_mult if t.patch_embed_lr_mult is not None else recipe.patch_embed_lr_mult
    return ResolvedTrain(optimizer, base_lr, base_lr * t.batch_size / 256, wd, warmup,
                         (float(betas[0]), float(betas[1])), momentum,
                         None if wd_end is None else float(wd_end),
                         None if layer_decay is None or layer_decay == 1.0 else float(layer_decay), float(patch_mult))


def schedule_steps(epochs: int, steps_per_epoch: int, warmup_epochs: float) -> tuple[int, int]:
    """(total steps, warm-up steps); warm-up is clamped to at most half the run."""
    total = epochs * steps_per_epoch
    warm = min(int(math.ceil(warmup_epochs * steps_per_epoch)), total // 2)
    return total, warm
