"""Any source of a trained model -> one :class:`Trained`: the backbone and what describes it.

A source is a run folder (or ``Run``), a checkpoint file, an in-memory Method (or any module with a
``backbone``, e.g. a fine-tuned classifier), a bare backbone module, a ``(backbone, info)`` pair, a Trained, or a
backbone spec with pretrained weights: ``"timm:vit_small_patch14_dinov2.lvd142m"``, ``"hf-hub:<org>/<repo>"``,
``"torchvision:resnet50"`` (:func:`load_backbone` takes options: local weights, random init, image size).
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
from workbench.models.reinit import random_init_like
from workbench.runs import Run
from workbench.train.checkpoint import check_identity, read_checkpoint

# Normalisation of a source that records none (a bare module): images scaled to [-1, 1].
DEFAULT_MEAN, DEFAULT_STD = 0.5, 0.5


@dataclass
class Trained:
    """A backbone (eval mode, CPU) with its description.

    ``backbone_name``/``backbone_options``: how ``workbench.models.build_backbone`` rebuilds it (None for a
    foreign module); ``image_size``/``in_chans``: the input it takes; ``mean``/``std``: the normalisation it
    was trained with (None: unknown, :meth:`stats` then gives the defaults); ``data``: the data set it saw,
    ``{"name", "options"}``; ``run``/``checkpoint``: where it was loaded from; ``info``: the full record;
    ``spec``: the backbone spec it was built from (``load_backbone``; then mean/std/image size are the model's own).
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
    spec: str | None = None

    @property
    def source(self) -> str:
        """Where it came from, for tables and cache records: a checkpoint path, the spec (and weights file), or
        the module's class name."""
        if self.checkpoint is not None:
            return str(self.checkpoint)
        if self.spec is not None:
            weights = self.backbone_options.get("weights")
            return f"{self.spec} ({weights})" if weights else self.spec
        return type(self.module or self.backbone).__name__

    @property
    def cache_dir(self) -> Path | None:
        """Where its features (and 2-D embeddings) are cached: the run's ``cache/``; for a spec the user cache
        (``user_cache_dir()``, entries keyed by the weights' contents); None for an in-memory module."""
        if self.run is not None:
            return self.run.cache_dir
        return user_cache_dir() if self.spec is not None else None

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
            what = f"the pretrained backbone {self.spec}" if self.spec else f"a bare {type(self.backbone).__name__}"
            raise ValueError(f"{what} has no method (heads, decoder); pass a run folder, a checkpoint or the "
                             "trained Method")
        from workbench.config import from_dict
        from workbench.models.external import without_weights
        from workbench.train.config import ModelConfig, PretrainConfig
        from workbench.train.setup import build_method_for

        ckpt = read_checkpoint(self.checkpoint)
        config = copy.deepcopy(ckpt["config"])
        model = config.get("model") or {}
        if "backbone" in model:  # the weights come from the checkpoint: no download, no weights file needed
            model["options"] = without_weights(model["backbone"], model.get("options") or {})
        run_config = from_dict(PretrainConfig, config)
        if "backbone" in model:  # the options the weights were trained with (a run recorded before a method's
            # model_options existed must not gain them now: e.g. a NEPA run on the plain ViT)
            run_config.model = ModelConfig(model["backbone"], without_weights(model["backbone"], self.backbone_options))
        method = build_method_for(run_config, self.image_size, self.in_chans)
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
    from workbench.models.external import without_weights

    file, run = _checkpoint_file(path, checkpoint)
    ckpt = read_checkpoint(file)
    if run is not None:  # a checkpoint inside a run folder must be that run's (config.json, run id)
        check_identity(ckpt, run, file)
    info = dict(ckpt["info"])
    backbone = build_backbone(info["backbone"], image_size=info["image_size"], in_chans=info["in_chans"],
                              **without_weights(info["backbone"], info.get("backbone_options", {})))
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


# Where features of spec backbones are cached (they have no run folder): $WORKBENCH_CACHE, else
# $XDG_CACHE_HOME/ssl-workbench, else ~/.cache/ssl-workbench.
CACHE_ENV = "WORKBENCH_CACHE"


def user_cache_dir() -> Path:
    """The cache folder of backbones without a run folder (spec backbones): ``$WORKBENCH_CACHE``, else
    ``$XDG_CACHE_HOME/ssl-workbench``, else ``~/.cache/ssl-workbench``. Entries are keyed by the weights'
    contents and the data, so one folder serves every model; delete it to reclaim the space."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ssl-workbench"


def load_backbone(spec: str, *, image_size: int | None = None, in_chans: int = 3, **options: Any) -> Trained:
    """A backbone from outside the workbench as a :class:`Trained`: ``spec`` is ``"timm:<model_name>"``,
    ``"hf-hub:<org>/<repo>"`` or ``"torchvision:<resnet>"`` (``workbench.models.external``).

    options: ``pretrained=True`` (the library's weights; downloaded where online, else WeightsNotAvailable with
    advice), ``weights="file.safetensors"`` (a local file: safetensors or a torch state dict), neither (random
    init), and the library's keyword arguments (timm's, e.g. ``reg_tokens=4``; torchvision's ``small_stem``).
    ``image_size`` None: the model's own (e.g. 518 px for DINOv2). mean/std are the model's own (timm's data
    config; ImageNet's for torchvision). ``load_trained(spec)`` is ``load_backbone(spec, pretrained=True)``.
    """
    from workbench.models.external import build_external

    backbone = build_external(spec, image_size, in_chans, **options)
    mean, std = tuple(backbone.data_mean), tuple(backbone.data_std)
    if len(mean) != backbone.in_chans:  # the model's stats are per RGB channel; other channel counts: their mean
        mean = (sum(mean) / len(mean),) * backbone.in_chans
        std = (sum(std) / len(std),) * backbone.in_chans
    info = {"backbone": spec, "backbone_options": dict(options), "image_size": backbone.image_size,
            "in_chans": backbone.in_chans, "mean": list(mean), "std": list(std),
            "feature_dim": int(backbone.feature_dim), "kind": getattr(backbone, "kind", "cnn")}
    return Trained(backbone.eval(), spec, dict(options), backbone.image_size, backbone.in_chans, mean, std,
                   info=info, spec=spec)


def load_trained(source: Any, checkpoint: str = "last") -> Trained:
    """Resolve any source of a trained model to a :class:`Trained` (see the module docstring for the sources).

    ``checkpoint`` names the checkpoint of a run folder (``checkpoints/<name>.pt``). A notebook run that trained
    into a sub-folder is followed to that training run (``Run.training_run``). A backbone spec
    (``"timm:..."``, ``"hf-hub:..."``, ``"torchvision:..."``) that is not an existing path loads with its
    pretrained weights (:func:`load_backbone`).
    """
    from workbench.models.external import is_spec

    if isinstance(source, Trained):
        return source
    if isinstance(source, str) and is_spec(source) and not Path(source).exists():
        return load_backbone(source, pretrained=True)
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
                    "file, a Method, a backbone module, a (backbone, info) pair or a backbone spec such as "
                    "'timm:vit_small_patch14_dinov2.lvd142m'")
