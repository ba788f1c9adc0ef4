"""Any source of a trained model -> one :class:`Trained`: the backbone and what describes it.

A source is a run folder (or ``Run``), a checkpoint file, an in-memory Method (or any module with a
``backbone``, e.g. a fine-tuned classifier), a bare backbone module, a ``(backbone, info)`` pair, or a Trained.
Everything above the engine (evaluation, inspection, widgets) gets its models here, so a run is resolved,
described and normalised the same way everywhere.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from workbench.augment import channel_values
from workbench.runs import Run
from workbench.train.checkpoint import read_checkpoint

# Normalisation of a source that records none (a bare module): images scaled to [-1, 1].
DEFAULT_MEAN, DEFAULT_STD = 0.5, 0.5


@dataclass
class Trained:
    """A backbone (eval mode, CPU) with its description.

    ``backbone_name``/``backbone_options``: how ``workbench.models.build_backbone`` rebuilds it (None for a
    foreign module); ``image_size``/``in_chans``: the input it takes; ``mean``/``std``: the normalisation it
    was trained with (None: unknown, :meth:`stats` then gives the defaults); ``data``: the data set it saw,
    ``{"name", "options"}``; ``run``/``checkpoint``: where it was loaded from; ``info``: the full record.
    """

    backbone: nn.Module
    backbone_name: str | None = None
    backbone_options: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    in_chans: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    data: dict[str, Any] | None = None
    method_name: str | None = None
    class_names: list[str] = field(default_factory=list)
    step: int | None = None
    epoch: int | None = None
    run: Run | None = None
    checkpoint: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None  # the in-memory Method (or classifier) the backbone came from, if any

    @property
    def source(self) -> str:
        """Where it came from, for tables and cache records: a checkpoint path or the module's class name."""
        if self.checkpoint is not None:
            return str(self.checkpoint)
        return type(self.module or self.backbone).__name__

    @property
    def kind(self) -> str:
        """``"vit"`` or ``"cnn"`` (the backbone's own ``kind``; CNN for foreign modules)."""
        return getattr(self.backbone, "kind", "cnn")

    def stats(self, channels: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel: the recorded ones, else ``DEFAULT_MEAN``/``DEFAULT_STD``."""
        c = channels or self.in_chans or len(self.mean or ()) or 3
        mean = channel_values(self.mean if self.mean is not None else DEFAULT_MEAN, c, "mean")
        std = channel_values(self.std if self.std is not None else DEFAULT_STD, c, "std")
        return mean, std

    def method(self) -> nn.Module:
        """The whole trained Method (heads, teachers, decoders; eval mode, CPU): the in-memory one, or rebuilt
        from the checkpoint. A bare backbone has none: ValueError."""
        if self.module is not None:
            return self.module.eval()
        if self.checkpoint is None:
            raise ValueError(f"a bare {type(self.backbone).__name__} has no method (heads, decoder); pass a run "
                             "folder, a checkpoint or the trained Method")
        from workbench.config import from_dict
        from workbench.train.config import PretrainConfig
        from workbench.train.setup import build_method_for

        ckpt = read_checkpoint(self.checkpoint)
        method = build_method_for(from_dict(PretrainConfig, ckpt["config"]), self.image_size, self.in_chans)
        method.load_state_dict(ckpt["method"])
        return method.eval()

    def dataset(self, split: str = "test"):
        """The ``split`` of the data set it was trained on, loaded with the recorded options (ImageDataset)."""
        if not self.data or not self.data.get("name"):
            raise ValueError(f"{self.source} records no training data set; pass the images to use")
        import workbench.data as data_pkg

        return data_pkg.load(self.data["name"], split=split, **dict(self.data.get("options") or {}))

    def random_init(self, seed: int = 0) -> nn.Module:
        """The same architecture with fresh weights (the random-init baseline), in eval mode."""
        return random_init_like(self.backbone, seed)


def random_init_like(backbone: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``backbone`` with freshly initialised weights (the random-init baseline), in eval mode.

    Every submodule with ``reset_parameters`` is reset under ``torch.manual_seed(seed)``; timm ViTs also get
    their own ``init_weights`` (CLS token, positions). The original backbone is not touched.
    """
    model = copy.deepcopy(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
        vit = getattr(model, "vit", None)
        if vit is not None and hasattr(vit, "init_weights"):
            vit.init_weights()
    return model.eval()


def _checkpoint_file(path: Path, checkpoint: str) -> tuple[Path, Run | None]:
    """(checkpoint file, its run) of a run folder or a checkpoint file; an error with advice when missing."""
    if path.is_file():
        return path, Run(path.parent.parent) if path.parent.name == "checkpoints" else None
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a run folder nor a checkpoint file; pass a run directory such "
                                "as runs/<time>-<method>-<data>-<id> (list them with `workbench runs`)")
    run = Run(path)
    linked = run.training_run
    if linked is not None and not run.checkpoints():
        run = linked  # a notebook run that trained into a sub-folder: its training run holds the checkpoints
    file = run.checkpoint_path(checkpoint)
    if not file.exists():
        have = [p.stem for p in run.checkpoints()]
        status = run.status.get("status", "unknown")
        advice = (f"pass checkpoint= one of {have} (CLI: --checkpoint NAME)" if have else
                  f"the run (status {status!r}) has no checkpoints at all: pretrain it first "
                  f"(`workbench pretrain ...`) or resume it (`workbench pretrain --resume {run.path}`)")
        raise FileNotFoundError(f"run {run.path}: checkpoint {checkpoint!r} not found at {file}; {advice}")
    return file, run


def _from_checkpoint(path: Path, checkpoint: str) -> Trained:
    from workbench.models.backbones import build_backbone

    file, run = _checkpoint_file(path, checkpoint)
    ckpt = read_checkpoint(file)
    info = dict(ckpt["info"])
    backbone = build_backbone(info["backbone"], image_size=info["image_size"], in_chans=info["in_chans"],
                              **info.get("backbone_options", {}))
    prefix = "backbone."
    backbone.load_state_dict({k[len(prefix):]: v for k, v in ckpt["method"].items() if k.startswith(prefix)})
    info.update(step=int(ckpt["step"]), epoch=int(ckpt["epoch"]))
    return Trained(backbone.eval(), info["backbone"], dict(info.get("backbone_options", {})), info["image_size"],
                   info["in_chans"], tuple(info["mean"]), tuple(info["std"]), info.get("data"), info.get("method"),
                   list(info.get("class_names", [])), info["step"], info["epoch"], run, file, info)


def _from_module(backbone: nn.Module, info: dict[str, Any], module: nn.Module | None = None) -> Trained:
    mean, std = info.get("mean"), info.get("std")
    return Trained(backbone.eval(), info.get("backbone"), dict(info.get("backbone_options", {})),
                   info.get("image_size", getattr(backbone, "image_size", None)),
                   info.get("in_chans", getattr(backbone, "in_chans", None)),
                   tuple(mean) if mean is not None else None, tuple(std) if std is not None else None,
                   info.get("data"), info.get("method", getattr(module, "name", None) or None),
                   list(info.get("class_names", [])), info.get("step"), info.get("epoch"), info=dict(info),
                   module=module)


def load_trained(source: Any, checkpoint: str = "last") -> Trained:
    """Resolve any source of a trained model to a :class:`Trained` (see the module docstring for the sources).

    ``checkpoint`` names the checkpoint of a run folder (``checkpoints/<name>.pt``). A notebook run that trained
    into a sub-folder is followed to that training run (``Run.training_run``).
    """
    if isinstance(source, Trained):
        return source
    if isinstance(source, (Run, str, os.PathLike)):
        return _from_checkpoint(Path(source.path if isinstance(source, Run) else source), checkpoint)
    if (isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], nn.Module)
            and isinstance(source[1], dict)):
        return _from_module(source[0], source[1])
    if isinstance(source, nn.Module):
        inner = getattr(source, "backbone", None)
        if isinstance(inner, nn.Module):  # a Method or a classifier: its backbone, and the module for method()
            return _from_module(inner, {}, module=source)
        return _from_module(source, {})
    raise TypeError(f"cannot load a trained model from a {type(source).__name__}; pass a run folder, a checkpoint "
                    "file, a Method, a backbone module or a (backbone, info) pair")
