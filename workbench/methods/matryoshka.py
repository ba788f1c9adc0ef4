"""Matryoshka Representation Learning (Kusupati et al., 2022) for joint-embedding methods: the method's own loss at
nested prefixes of the backbone feature, so that its first m dimensions are a representation on their own.

Pseudo-code of the paper (its supervised loss, sum_m c_m CE(W_m z[:m], y)) with the method's loss in place of the
classifier, as written here::

    f1, f2 = f(x1), f(x2)                                 # backbone features [B, D], computed once per view
    loss = 0
    for m, c in zip(dims, weights):                       # nested sizes, e.g. 8, 16, ..., D; c_m = 1 (paper)
        loss += c * method_loss(f1[:, :m], f2[:, :m])     # the plain method, run on an m-dim backbone

Options, on any method in ``NESTABLE`` (e.g. ``method_options={"matryoshka_dims": [8, 16, 32, 64, 128, 256]}``):
``matryoshka_dims`` (strictly increasing, ending at the backbone's feature dim D, as the paper's sizes end at d)
and ``matryoshka_weights`` (the c_m, default all 1).

Where the prefixes are taken. Downstream, the workbench reads the *backbone* feature f (kNN, linear probe, RankMe;
the projector is thrown away), so that is what must be nested. Taking prefixes of the projector's output z (the
place a loss is usually computed) would nest z, which nothing evaluates, and leave f[:, :m] without any special
meaning. So the prefix is taken before the projector: at size m the projector reads f[:, :m] with the other D - m
inputs set to zero, i.e. its first linear layer computes W[:, :m] f[:, :m] + b. That is the paper's weight-tied
variant MRL-E (one head whose first layer is sliced per size) rather than one head per size: with EMA teachers
(BYOL, MoCo v3) and predictors, a head per size would multiply every head and teacher by len(dims). Every branch
sees the same m, teachers included (their backbones are copies of the nested one), so the term at m is exactly the
plain method on the m-dim representation; ``tests/methods/test_matryoshka.py`` checks the sum against that.

Cost. The backbone runs once per view and step: inside a step its output is reused for every size (the loss terms
share its autograd graph, one backward); only the heads run len(dims) times. Batch norm in a head normalises each
size's batch on its own. The engine's monitors read the full (size D) features.

Not nestable: DINO and SwAV update per-step state inside the loss (the teacher centre, the queue), which would
move once per size; MAE and I-JEPA predict patches, not a pooled feature; SimSiam's DirectPred likewise updates its
correlation estimate inside the step.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.config import ConfigError, check_range
from workbench.methods.base import Batch, Method, Progress, StepOutput, register_nesting

NESTABLE = ("simclr", "mocov3", "byol", "simsiam", "barlow_twins", "vicreg")
OPTIONS = ("matryoshka_dims", "matryoshka_weights")  # method options read here, not by the method's Config


@dataclass
class MatryoshkaConfig:
    """Nested sizes ``dims`` (strictly increasing) and their loss weights ``weights`` (c_m >= 0; None: all 1)."""

    dims: tuple[int, ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        o = "method_options"
        self.dims = tuple(self.dims)
        if not self.dims:
            raise ConfigError(f"{o}.matryoshka_dims must list at least one size, e.g. [8, 16, 32, 64]")
        for i, m in enumerate(self.dims):
            check_range(o, f"matryoshka_dims[{i}]", m, 1)
        if any(b <= a for a, b in zip(self.dims, self.dims[1:])):
            raise ConfigError(f"{o}.matryoshka_dims={list(self.dims)} must be strictly increasing, "
                              "e.g. [8, 16, 32, 64]")
        if self.weights is None:
            self.weights = (1.0,) * len(self.dims)
        self.weights = tuple(float(w) for w in self.weights)
        if len(self.weights) != len(self.dims):
            raise ConfigError(f"{o}.matryoshka_weights has {len(self.weights)} values for {len(self.dims)} "
                              f"matryoshka_dims; give one weight per size (or leave it unset: all 1)")
        for i, w in enumerate(self.weights):
            check_range(o, f"matryoshka_weights[{i}]", w, 0.0)
        if not any(self.weights):
            raise ConfigError(f"{o}.matryoshka_weights are all 0: at least one size must carry the loss")


def split_options(method: str, options: dict[str, Any] | None) -> tuple[dict[str, Any], MatryoshkaConfig | None]:
    """(the method's own options, the nesting config or None) from a run's ``method_options``."""
    own = dict(options or {})
    nest = {k[len("matryoshka_"):]: own.pop(k) for k in OPTIONS if k in own}
    if not nest:
        return own, None
    if "dims" not in nest:
        raise ConfigError("method_options.matryoshka_weights needs matryoshka_dims too (e.g. [8, 16, 32, 64])")
    if method not in NESTABLE:
        raise ConfigError(f"matryoshka_dims applies to the joint-embedding methods {list(NESTABLE)}, not {method!r}: "
                          "its step updates state that would move once per size, or it has no pooled feature loss")
    if method == "simsiam" and own.get("direct_pred"):
        raise ConfigError("matryoshka_dims does not combine with SimSiam's direct_pred: its correlation estimate "
                          "would be updated once per size; use the learned predictor (direct_pred=False)")
    from workbench.config import from_dict

    return own, from_dict(MatryoshkaConfig, nest)


def prefix(f: torch.Tensor, m: int) -> torch.Tensor:
    """The first ``m`` of the D dims of ``f`` [B, D], the other D - m set to zero (shape kept: [B, D])."""
    return f if m >= f.shape[1] else F.pad(f[:, :m], (0, f.shape[1] - m))


class NestedBackbone:
    """Put in front of a backbone's class by :func:`nest_backbone`: ``forward`` returns ``prefix(f, size)``
    while ``size`` is set (None: the plain feature), and while ``reuse`` holds a dict it runs the backbone once
    per input tensor. A deep copy (an EMA teacher) is nested too; state-dict keys are unchanged."""

    size: int | None = None
    reuse: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hit = self.reuse.get(id(x)) if self.reuse is not None else None
        if hit is not None and hit[0] is x:
            f = hit[1]
        else:
            f = super().forward(x)
            if self.reuse is not None:
                self.reuse[id(x)] = (x, f)
        return f if self.size is None else prefix(f, self.size)


@functools.cache
def _nested_class(cls: type[nn.Module]) -> type[nn.Module]:
    return type(cls.__name__, (NestedBackbone, cls), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})


def nest_backbone(backbone: nn.Module) -> nn.Module:
    """Make ``backbone`` (in place) a :class:`NestedBackbone` of its own class; returns it."""
    if not isinstance(backbone, NestedBackbone):
        backbone.__class__ = _nested_class(type(backbone))
    return backbone


class Matryoshka:
    """Put in front of a method's class by :func:`build`: its training step is the weighted sum of the method's
    own step at each nested size (``self.nesting``), the backbones reused across sizes."""

    nesting: MatryoshkaConfig

    @contextlib.contextmanager
    def _sizes(self) -> Iterator[Any]:
        nested = [m for m in self.modules() if isinstance(m, NestedBackbone)]  # the backbone and its EMA copies

        def use(m: int) -> None:
            for b in nested:
                b.size = m

        for b in nested:
            b.reuse = {}
        try:
            yield use
        finally:
            for b in nested:
                b.size, b.reuse = None, None

    def training_step(self, batch: Batch, progress: Progress) -> StepOutput:
        outs = []
        with self._sizes() as use:
            for m in self.nesting.dims:
                use(m)
                outs.append(super().training_step(batch, progress))
        loss = sum(c * o.loss for c, o in zip(self.nesting.weights, outs))
        logs = {**outs[-1].logs, **{f"loss_d{m}": o.loss.detach() for m, o in zip(self.nesting.dims, outs)}}
        return StepOutput(loss, outs[-1].features, logs)  # features of the full size D (the last)


@functools.cache
def _matryoshka_class(cls: type[Method]) -> type[Method]:
    return type(cls.__name__, (Matryoshka, cls), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                                   "__doc__": f"{cls.__doc__} Matryoshka: the loss at nested sizes."})


def build(cls: type[Method], backbone: nn.Module, config: Any, nesting: MatryoshkaConfig) -> Method:
    """Method ``cls`` around ``backbone`` trained with its loss at the nested sizes of ``nesting``."""
    d = backbone.feature_dim
    if nesting.dims[-1] != d:
        sizes = [2 ** k for k in range(3, d.bit_length()) if 2 ** k < d] + [d]
        raise ConfigError(f"method_options.matryoshka_dims={list(nesting.dims)} must end at the backbone's feature "
                          f"dim {d} (the full representation is one of the nested sizes), e.g. {sizes}")
    method = _matryoshka_class(cls)(nest_backbone(backbone), config)
    method.nesting = nesting
    return method


register_nesting(sys.modules[__name__])  # build_method / make_method_config apply the nesting options
