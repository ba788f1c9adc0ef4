"""The small base every SSL method builds on, the method registry, and cross-rank gathering.

A method owns a backbone (the encoder that evaluation reads) plus its heads and teachers, and turns a
batch of augmented views into a loss. The engine (workbench.train) owns everything else: optimizer,
schedules, precision, devices, checkpoints. Methods never loop over samples.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn as nn

from workbench.config import ConfigError, check_choice, check_range, from_dict
from workbench.models.backbones import Backbone


# The optimizers the engine builds (workbench.train.optim); a recipe or a TrainConfig names one of them.
OPTIMIZERS = ("lars", "adamw", "sgd")


def check_schedule_fields(owner: str, weight_decay_end: float | None, layer_decay: float | None,
                          patch_embed_lr_mult: float | None) -> None:
    """Validate DINOv2's optimisation fields (of a Recipe or a TrainConfig), naming the field and its range."""
    if weight_decay_end is not None:
        check_range(owner, "weight_decay_end", weight_decay_end, 0.0)
    if layer_decay is not None:
        check_range(owner, "layer_decay", layer_decay, 0.0, 1.0, low_inclusive=False)
    if patch_embed_lr_mult is not None:
        check_range(owner, "patch_embed_lr_mult", patch_embed_lr_mult, 0.0, 1.0, low_inclusive=False)


@dataclass(frozen=True)
class Recipe:
    """A method's default optimizer settings, used for the TrainConfig fields a run leaves unset.

    ``lr`` is a base learning rate per 256 images (the engine scales it with the global batch size);
    ``warmup_epochs`` of linear warm-up before the cosine decay; ``betas`` are AdamW's;
    ``exclude_bias_norm_from_lars``: biases and norm parameters take plain momentum steps, without LARS's
    trust-ratio adaptation (as solo-learn's LARS does). DINOv2's optimisation recipe (``workbench.train.optim``):
    ``weight_decay_end`` (a cosine from ``weight_decay`` to it over the run; None: constant), ``layer_decay``
    (ViT block k of depth n learns at ``layer_decay ** (n + 1 - k)`` times the lr; None: off) and
    ``patch_embed_lr_mult``. A method's ``recipe`` states only what differs from these defaults (LARS lr 0.3 per
    256, weight decay 1e-6, 10 warm-up epochs).
    """

    optimizer: str = "lars"
    lr: float = 0.3
    weight_decay: float = 1e-6
    warmup_epochs: float = 10
    betas: tuple[float, float] = (0.9, 0.999)
    exclude_bias_norm_from_lars: bool = True
    weight_decay_end: float | None = None
    layer_decay: float | None = None
    patch_embed_lr_mult: float = 1.0

    def __post_init__(self) -> None:
        o = "Recipe"
        check_schedule_fields(o, self.weight_decay_end, self.layer_decay, self.patch_embed_lr_mult)
        check_choice(o, "optimizer", self.optimizer, OPTIMIZERS)
        check_range(o, "lr", self.lr, 0.0, low_inclusive=False)
        check_range(o, "weight_decay", self.weight_decay, 0.0)
        check_range(o, "warmup_epochs", self.warmup_epochs, 0.0)
        if not isinstance(self.betas, tuple) or len(self.betas) != 2:
            raise ConfigError(f"{o}.betas={self.betas!r} must be a tuple (beta1, beta2) (AdamW)")
        for i, b in enumerate(self.betas):
            check_range(o, f"betas[{i}]", b, 0.0, 1.0, high_inclusive=False)
        if not isinstance(self.exclude_bias_norm_from_lars, bool):
            raise ConfigError(f"{o}.exclude_bias_norm_from_lars={self.exclude_bias_norm_from_lars!r} must be "
                              "true or false")

    def changes(self) -> dict[str, Any]:
        """The fields that differ from the defaults (what a method's recipe states)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}


@dataclass
class Progress:
    """Where training is: ``step`` of ``total_steps`` (0-based), ``epoch`` of ``total_epochs``.

    ``fraction`` in [0, 1] drives schedules (EMA momentum, DINO teacher temperature); ``generator`` is the
    engine's seeded torch.Generator on the training device, for masks drawn inside a step.
    """

    step: int = 0
    total_steps: int = 1
    epoch: int = 0
    total_epochs: int = 1
    steps_per_epoch: int = 1
    generator: torch.Generator | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))


@dataclass
class Batch:
    """One training batch: ``views`` float [B, C, h, w] each (normalised), ``num_global`` large crops first
    (DINO/SwAV multi-crop put local crops after them); ``images`` the un-augmented uint8 source [B, C, H, W]."""

    views: list[torch.Tensor]
    num_global: int = 2
    images: torch.Tensor | None = None


@dataclass
class StepOutput:
    """What a training step returns: the scalar ``loss`` to minimise; ``features`` = backbone features of the
    first view [B, D] (detached; the engine's RankMe / collapse monitors read them); ``logs`` = extra scalars."""

    loss: torch.Tensor
    features: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Method(nn.Module):
    """Base class. Subclasses set ``name``, ``Config`` (a dataclass of hyper-parameters with paper defaults),
    ``preset`` (default augmentation preset), ``recipe`` (default optimizer settings for TrainConfig fields
    left unset), ``num_views`` (views per image the loss needs), and implement ``training_step``; those with
    teachers implement ``update_teacher``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    preset: ClassVar[str] = "simclr"
    recipe: ClassVar[Recipe] = Recipe()
    num_views: ClassVar[int] = 2
    requires_vit: ClassVar[bool] = False
    min_batch_size: ClassVar[int] = 2
    sync_batchnorm: ClassVar[bool] = True
    # backbone options of the method's paper for the workbench's own ViTs (ViTOptions fields), merged under a run's
    # model.options by PretrainConfig, so the run records (and checkpoints rebuild) the model it trained
    model_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, backbone: Backbone, config: Any):
        super().__init__()
        if self.requires_vit and getattr(backbone, "kind", "cnn") != "vit":
            raise ConfigError(f"method {self.name!r} needs a ViT backbone (vit_tiny, vit_small), got a "
                              f"{type(backbone).__name__}; pass backbone='vit_tiny' or choose a joint-embedding method")
        self.backbone = backbone
        self.config = config

    @classmethod
    def check_num_views(cls, num_views: int) -> None:
        """Raise ConfigError when ``num_views`` views per image are fewer than the method needs."""
        if num_views < cls.num_views:
            raise ConfigError(f"{cls.name} needs {cls.num_views} views per image, got {num_views}; "
                              f"use the {cls.preset!r} preset")

    @classmethod
    def augment_defaults(cls, config: Any) -> dict[str, Any]:
        """Augmentation settings that this method's ``config`` needs beyond its preset, as ``make_preset`` keywords
        (a run's own ``augment`` overrides win): none, unless a method's option changes the views it reads."""
        return {}

    def views(self, batch: Batch) -> list[torch.Tensor]:
        """The first ``num_views`` views of ``batch``, each [B, C, h, w] (fewer is a ConfigError naming the preset)."""
        self.check_num_views(len(batch.views))
        return batch.views[:self.num_views]

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        raise NotImplementedError

    @torch.no_grad()
    def update_teacher(self, progress: Progress) -> None:
        """Called by the engine after each optimizer step (EMA teachers override this)."""

    def teacher_modules(self) -> list[nn.Module]:
        """Modules updated without gradients (excluded from the optimizer)."""
        return []


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameters and buffers (BN stats copied)."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    t_bufs, s_bufs = list(teacher.buffers()), list(student.buffers())
    if t_bufs:
        torch._foreach_copy_(t_bufs, s_bufs)


def cosine_momentum(base: float, progress: Progress, final: float = 1.0) -> float:
    """BYOL's schedule: base -> final along a half cosine over training."""
    import math

    return final - (final - base) * (math.cos(math.pi * progress.fraction) + 1) / 2


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] from all ranks along dim 0, keeping gradients (identity on one process).

    Torch's functional collective with autograd (``all_gather_single_autograd``: the backward reduce-scatters the
    gradient, each rank receiving the sum over ranks for its own rows); it traces under torch.compile, where the
    deprecated ``torch.distributed.nn.functional.all_gather`` raises."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        import torch.distributed._functional_collectives as fc

        return fc.all_gather_single_autograd(x.contiguous(), gather_dim=0, group=dist.group.WORLD)
    return x


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``x`` summed (``op="sum"``) or maxed (``"max"``) over the ranks, as a new tensor (``x`` itself on one
    process); a functional collective, so it traces under torch.compile. No gradient flows through it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        import torch.distributed._functional_collectives as fc

        return fc.all_reduce(x, op, group=dist.group.WORLD)
    return x


def mean_off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """Mean of the entries of ``m`` [T, S] off its main diagonal (pairs (t, s) with t != s), by arithmetic on the
    whole matrix: no boolean indexing, so no host sync and no data-dependent shape. Raises ValueError when there
    is no such entry (one view)."""
    t, s = m.shape
    pairs = t * s - min(t, s)
    if pairs == 0:
        raise ValueError("the loss needs at least two views (pairs of the same view are skipped)")
    return (m.sum() - torch.diagonal(m).sum()) / pairs


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def known_methods() -> list[str]:
    return sorted(METHODS)


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {known_methods()}")
    return METHODS[name]


_nesting: Any = None  # workbench.methods.matryoshka, registered on import (base importing it would be a cycle)


def register_nesting(module: Any) -> None:
    """Called by workbench.methods.matryoshka on import: the shared options that train a method at nested sizes
    (``split_options``, ``NESTABLE``, ``OPTIONS``, ``build``)."""
    global _nesting
    _nesting = module


def _split_nesting(name: str, options: dict[str, Any] | None) -> tuple[Any, Any]:
    """(the method's own options, the nesting config or None)."""
    return _nesting.split_options(name, options) if _nesting is not None else (options, None)


def make_method_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """The method's Config dataclass with ``options`` applied (unknown option -> error listing the known).

    The shared options ``matryoshka_dims`` / ``matryoshka_weights`` (workbench.methods.matryoshka) are checked here
    and left out of the Config; :func:`build_method` applies them."""
    cls = method_class(name)
    own, _ = _split_nesting(name, options)
    try:
        return from_dict(cls.Config, own)
    except ConfigError as e:
        known = [f.name for f in dataclasses.fields(cls.Config)]
        if _nesting is not None and name in _nesting.NESTABLE:
            known += list(_nesting.OPTIONS)
        raise ConfigError(f"method {name!r}: {e} (options of {name}: {known})") from None


def build_method(name: str, backbone: Backbone, options: dict[str, Any] | None = None) -> Method:
    """Instantiate method ``name`` around ``backbone`` with hyper-parameter ``options`` (with ``matryoshka_dims``:
    trained with its loss at those nested sizes of the backbone feature, see workbench.methods.matryoshka)."""
    config = make_method_config(name, options)
    _, nesting = _split_nesting(name, options)
    if nesting is not None:
        return _nesting.build(method_class(name), backbone, config, nesting)
    return method_class(name)(backbone, config)
