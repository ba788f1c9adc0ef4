"""Backbones from outside the workbench: any timm model (also from the Hugging Face hub) or a torchvision ResNet,
randomly initialised, with the library's pretrained weights, or with weights from a local file.

A spec is a backbone name with a library prefix; it goes wherever a short name goes (``model.backbone`` of a
config, ``--backbone`` of ``workbench pretrain``, ``build_backbone``) and, with pretrained weights, wherever a run
goes (``workbench.trained.load_trained``)::

    timm:<model_name>        timm.create_model(model_name): "timm:resnet18", "timm:vit_small_patch14_dinov2.lvd142m"
    hf-hub:<org>/<repo>      a timm model on the Hugging Face hub: "hf-hub:timm/vit_small_patch14_reg4_dinov2.lvd142m"
    torchvision:<resnet>     torchvision.models.<resnet>: "torchvision:resnet50", "torchvision:wide_resnet50_2"

Options (a plain dict, as for the short names): ``pretrained`` (timm: True = the weights of the name's tag, fetched
from the hub into its cache; torchvision: True = the DEFAULT weights, or a weights name such as "IMAGENET1K_V2"),
``weights`` (a local ``.safetensors`` or torch state-dict file, e.g. one ``workbench export`` wrote), and the
library's own keyword arguments: for timm anything the model class takes (``drop_path_rate``, ``reg_tokens``,
``global_pool``...), checked against it on the meta device when the config is made; for torchvision
``small_stem``. The image size and channels come from the data (training) or the model's own configuration.
Without network a download fails with :class:`WeightsNotAvailable`, which says how to get the file instead.

timm ``VisionTransformer`` models become :class:`~workbench.models.backbones.ViT` (MAE, I-JEPA, DINO multi-crop,
attention maps, register tokens); every other timm model becomes :class:`TimmBackbone` (a CNN, or a token model
such as EVA / DINOv3 with patch tokens and attention maps).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from workbench.config import ConfigError, from_dict
from workbench.models.backbones import (SPEC_FAMILIES, Backbone, Features, ResNet, SpecFamily, ViT,
                                        capture_attention)

SPEC_FORMS = ("timm:<model_name>", "hf-hub:<org>/<repo>", "torchvision:<resnet>")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                       "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
# timm keyword arguments the workbench sets itself (or that would change what the backbone is)
TIMM_RESERVED = {"num_classes": "the backbone has no classifier (num_classes=0)",
                 "in_chans": "it comes from the data (or load_backbone(in_chans=...))",
                 "img_size": "it comes from the data (DataConfig.image_size, or load_backbone(image_size=...))",
                 "features_only": "the backbone returns pooled features and tokens",
                 "pretrained_cfg": "use pretrained=true or weights=PATH",
                 "pretrained_cfg_overlay": "use pretrained=true or weights=PATH",
                 "checkpoint_path": "use weights=PATH", "cache_dir": "set HF_HOME / TORCH_HOME instead"}


class WeightsNotAvailable(FileNotFoundError):
    """Pretrained weights could not be fetched (no network, no cached copy): the message says how to get them."""


def is_spec(name: Any) -> bool:
    """True for ``timm:...``, ``hf-hub:...`` and ``torchvision:...`` backbone names."""
    return isinstance(name, str) and name.startswith(("timm:", "hf-hub:", "torchvision:"))


def split_spec(name: str) -> tuple[str, str]:
    """A spec -> (library, the library's model name): ("timm", "resnet18"), ("timm", "hf-hub:org/repo"),
    ("torchvision", "resnet50"). ConfigError for anything else or an empty model name."""
    if not is_spec(name):
        raise ConfigError(f"{name!r} is not a backbone spec; use one of {list(SPEC_FORMS)}")
    library, _, model = name.partition(":")
    if library == "hf-hub":
        library, model = "timm", name
    if not model or model.endswith(":") or (model.startswith("hf-hub:") and "/" not in model):
        raise ConfigError(f"backbone spec {name!r} names no model; use one of {list(SPEC_FORMS)}")
    return library, model


# -- options -------------------------------------------------------------------------------------------------
def _check_weights_file(owner: str, weights: Any) -> None:
    if weights is None:
        return
    if not isinstance(weights, str) or not weights:
        raise ConfigError(f"{owner}.weights={weights!r} must be the path of a local weights file (or None)")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"{owner}.weights={weights!r}: no such file; pass a local .safetensors or torch "
                          "state-dict file (e.g. what `workbench export RUN` wrote), or pretrained=true to download")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ConfigError(f"{owner}.weights={weights!r}: unknown file type {path.suffix!r}; allowed: "
                          f"{list(WEIGHT_SUFFIXES)} (safetensors, or a torch state dict)")


@dataclass(frozen=True)
class TimmOptions:
    """Options of a ``timm:`` / ``hf-hub:`` backbone: ``pretrained`` (the weights of the name's tag from the hub),
    ``weights`` (a local file; excludes ``pretrained``), ``kwargs`` (timm's own keyword arguments of the model,
    given flat in the options dict, e.g. ``{"drop_path_rate": 0.1, "reg_tokens": 4}``)."""

    pretrained: bool = False
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.pretrained, bool):
            raise ConfigError(f"TimmOptions.pretrained={self.pretrained!r} must be true or false")
        _check_weights_file("TimmOptions", self.weights)
        if self.pretrained and self.weights:
            raise ConfigError("TimmOptions: pass pretrained=true (download) or weights=PATH (a local file), not both")
        bad = sorted(set(self.kwargs) & set(TIMM_RESERVED))
        if bad:
            raise ConfigError(f"timm option(s) {bad} cannot be set: " + "; ".join(f"{k}: {TIMM_RESERVED[k]}"
                                                                             for k in bad))


@dataclass(frozen=True)
class TorchvisionOptions:
    """Options of a ``torchvision:`` ResNet: ``pretrained`` (true = DEFAULT weights, or a weights name such as
    "IMAGENET1K_V2"), ``weights`` (a local file; excludes ``pretrained``), ``small_stem`` (3x3 stride-1 conv, no
    max-pool; None = small stem for random weights at <= 64 px, else the ImageNet stem. True with pretrained
    weights keeps every pretrained layer but conv1, which starts random)."""

    pretrained: bool | str = False
    weights: str | None = None
    small_stem: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pretrained, (bool, str)) or self.pretrained == "":
            raise ConfigError(f"TorchvisionOptions.pretrained={self.pretrained!r} must be true, false or a "
                              "torchvision weights name such as 'IMAGENET1K_V2'")
        _check_weights_file("TorchvisionOptions", self.weights)
        if self.pretrained and self.weights:
            raise ConfigError("TorchvisionOptions: pass pretrained (download) or weights=PATH (a local file), "
                              "not both")
        if self.small_stem is not None and not isinstance(self.small_stem, bool):
            raise ConfigError(f"TorchvisionOptions.small_stem={self.small_stem!r} must be true, false or None (auto)")


@dataclass(frozen=True)
class _TimmArch:
    """What a timm model is, read from a copy built on the meta device (no memory, no weights)."""

    cls: str
    params: tuple[str, ...]      # keyword arguments the model class takes
    any_kwargs: bool             # the class takes **kwargs
    vit: bool                    # a plain timm VisionTransformer (-> workbench ViT)
    tokens: bool                 # a token model (patch tokens after prefix tokens)
    patch_size: int | None
    classifiers: tuple[str, ...]


def _meta_build(model_name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """``timm.create_model`` on the meta device (falls back to the CPU for a model that cannot build there)."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
    except (NotImplementedError, RuntimeError) as e:
        if "meta" not in str(e).lower():
            raise
        return timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)


@functools.lru_cache(maxsize=64)
def _timm_arch(model_name: str, kwargs_json: str) -> _TimmArch:
    import inspect

    import timm
    from timm.models.vision_transformer import VisionTransformer

    kwargs = json.loads(kwargs_json)
    if not model_name.startswith("hf-hub:") and not timm.is_model(model_name):
        arch = model_name.split(".")[0]
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        raise ConfigError(f"timm has no model {model_name!r}" + (f"; did you mean {close}?" if close else "")
                          + " (list them with timm.list_models('pattern*'))")
    try:
        model = _meta_build(model_name, kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise ConfigError(f"timm model {model_name!r} rejected options {kwargs}: {e}") from None
        bare = _meta_build(model_name, {})
        sig = inspect.signature(type(bare).__init__)
        allowed = sorted(p for p in sig.parameters if p not in ("self", "device", "dtype") and p not in TIMM_RESERVED
                         and sig.parameters[p].kind not in (inspect.Parameter.VAR_KEYWORD,
                                                            inspect.Parameter.VAR_POSITIONAL))
        unknown = sorted(set(kwargs) - set(allowed)) or [str(e).rsplit("'", 2)[-2]]
        raise ConfigError(f"timm model {model_name!r} ({type(bare).__name__}) has no option(s) {unknown}; allowed "
                          f"options: {['pretrained', 'weights'] + allowed}") from None
    except ConfigError:
        raise
    except (AssertionError, ValueError, KeyError, RuntimeError) as e:
        if "Invalid pretrained tag" in str(e):
            tags = timm.list_pretrained(model_name.split(".")[0] + ".*")
            raise ConfigError(f"timm has no weights tag {model_name!r}; tags of this model: {tags}") from None
        raise ConfigError(f"timm model {model_name!r} rejected options {kwargs}: {type(e).__name__}: {e}") from None
    except OSError as e:  # an hf-hub: model's config could not be fetched
        raise WeightsNotAvailable(_offline_advice(f"the config of hub model {model_name!r}", e)) from None
    sig = inspect.signature(type(model).__init__)
    tokens = hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed") and hasattr(model, "blocks")
    patch = model.patch_embed.patch_size if hasattr(model, "patch_embed") else None
    patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch is not None else None
    classifiers = (model.pretrained_cfg or {}).get("classifier") or ()
    return _TimmArch(type(model).__name__, tuple(sig.parameters),
                     any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()),
                     type(model) is VisionTransformer, tokens, patch if tokens else None,
                     (classifiers,) if isinstance(classifiers, str) else tuple(classifiers))


def _arch(model_name: str, kwargs: Mapping[str, Any]) -> _TimmArch:
    try:
        key = json.dumps(dict(kwargs), sort_keys=True)
    except TypeError:
        raise ConfigError(f"timm options {dict(kwargs)} must be plain JSON values (numbers, strings, lists, "
                          "true/false/null)") from None
    return _timm_arch(model_name, key)


def external_options(name: str, options: Mapping[str, Any]) -> TimmOptions | TorchvisionOptions:
    """The options dataclass of spec ``name`` from the plain dict ``options`` (validated: the model exists, timm
    keyword arguments are ones its model class takes and build on the meta device, a weights file exists)."""
    library, model = split_spec(name)
    if not isinstance(options, Mapping):
        raise ConfigError(f"backbone {name!r}: options must be a mapping, got {options!r}")
    if library == "timm":
        flat = dict(options)
        opts = TimmOptions(flat.pop("pretrained", False), flat.pop("weights", None), flat)
        _arch(model, opts.kwargs)
        return opts
    if model not in TORCHVISION_RESNETS:
        close = difflib.get_close_matches(model, TORCHVISION_RESNETS, n=3)
        raise ConfigError(f"torchvision:{model} is not a torchvision ResNet; choose one of "
                          f"{list(TORCHVISION_RESNETS)}" + (f" (did you mean {close}?)" if close else ""))
    allowed = [f.name for f in dataclasses.fields(TorchvisionOptions)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"backbone {name!r} has no option(s) {unknown}; allowed options: {allowed}")
    try:
        opts = from_dict(TorchvisionOptions, options)
    except ConfigError as e:
        raise ConfigError(f"backbone {name!r}: {e}") from None
    if isinstance(opts.pretrained, str):
        import torchvision

        names = [w.name for w in torchvision.models.get_model_weights(model)]
        if opts.pretrained not in names + ["DEFAULT"]:
            raise ConfigError(f"backbone {name!r}: pretrained={opts.pretrained!r} is not a weights name of {model}; "
                              f"choose one of {names + ['DEFAULT']} (or true)")
    return opts


def external_kind(name: str, options: Mapping[str, Any]) -> str:
    """``"vit"`` for a timm token model (VisionTransformer, EVA, ...), else ``"cnn"``; built on the meta device."""
    library, model = split_spec(name)
    if library == "torchvision":
        return "cnn"
    return "vit" if _arch(model, external_options(name, options).kwargs).tokens else "cnn"


def external_patch_size(name: str, options: Mapping[str, Any]) -> int | None:
    """The patch size of a timm token model (None for a CNN)."""
    library, model = split_spec(name)
    if library == "torchvision":
        return None
    return _arch(model, external_options(name, options).kwargs).patch_size


def without_weights(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` of spec ``name`` without ``pretrained``/``weights``: the architecture alone, to rebuild a model
    whose weights come from elsewhere (a checkpoint; the random-init baseline)."""
    return {k: v for k, v in dict(options).items() if k not in ("pretrained", "weights")} if is_spec(name) \
        else dict(options)


@dataclass(frozen=True)
class BackboneSpec:
    """How a spec backbone was built: ``name``, ``options`` (flat, as given), ``image_size``, ``in_chans``.
    Kept on the backbone as ``backbone.spec`` (export, random-init baseline)."""

    name: str
    options: dict[str, Any]
    image_size: int
    in_chans: int

    @property
    def library(self) -> str:
        return split_spec(self.name)[0]

    @property
    def model_name(self) -> str:
        return split_spec(self.name)[1]

    def architecture(self) -> dict[str, Any]:
        return without_weights(self.name, self.options)

    def timm_kwargs(self) -> dict[str, Any]:
        """``timm.create_model(self.model_name, **kwargs)`` arguments that build this architecture (no weights)."""
        return timm_kwargs(self.model_name, self.architecture(), self.image_size, self.in_chans)


def timm_kwargs(model_name: str, kwargs: Mapping[str, Any], image_size: int | None, in_chans: int) -> dict[str, Any]:
    """The keyword arguments the workbench passes to ``timm.create_model``: the user's, no classifier, the
    channels, and the image size where the model class takes one (ViTs; CNNs take any size)."""
    out = dict(kwargs, num_classes=0, in_chans=in_chans)
    if image_size is not None and "img_size" in _arch(model_name, kwargs).params:
        out["img_size"] = image_size
    return out


# -- a timm model that is not a plain VisionTransformer ------------------------------------------------------------
class TimmBackbone(Backbone):
    """Any timm model (num_classes=0) as a backbone: pooled features from timm's own ``forward_head(pre_logits=True)``
    [B, D]; spatial tokens from ``forward_features``: a CNN's last feature map (NCHW or NHWC) flattened, or a
    token model's patch tokens after its ``num_prefix_tokens`` prefix tokens (kind ``"vit"``, with attention maps
    [B, heads, T, T] when it has a class token)."""

    def __init__(self, model: nn.Module, image_size: int, in_chans: int):
        super().__init__()
        self.model, self.image_size, self.in_chans = model, int(image_size), int(in_chans)
        self.feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self.nhwc = str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC")
        tokens = hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed") and hasattr(model, "blocks")
        self.kind = "vit" if tokens else "cnn"
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        if tokens:
            embed = model.patch_embed
            self.grid = tuple(int(g) for g in embed.grid_size)
            self.patch_size = int(embed.patch_size[0])
            self.num_patches = self.grid[0] * self.grid[1]
            self.has_class_token = getattr(model, "cls_token", None) is not None
            self.num_layers = len(model.blocks)
            self.num_heads = int(getattr(getattr(model.blocks[0], "attn", None), "num_heads", 0))

    def forward_features(self, x: torch.Tensor) -> Features:
        out = self.model.forward_features(x)
        pooled = self.model.forward_head(out, pre_logits=True)
        if out.ndim == 3:
            return Features(pooled, out[:, self.num_prefix_tokens:], self.grid)
        fmap = out.permute(0, 3, 1, 2) if self.nhwc else out
        return Features(pooled, fmap.flatten(2).transpose(1, 2), tuple(fmap.shape[2:]))

    def _needs_vit(self, what: str) -> None:
        raise ValueError(f"{what} needs a timm VisionTransformer (vit_*, deit3_*, *_dinov2 ...); this backbone is a "
                         f"timm {type(self.model).__name__}. Joint-embedding methods (simclr, byol, ...) work with it")

    def forward_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        self._needs_vit("encoding a subset of patches (MAE, I-JEPA)")

    def embed_any_size(self, x: torch.Tensor) -> torch.Tensor:
        self._needs_vit("multi-crop of other sizes (DINO, SwAV)")

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer softmax attention [B, heads, T, T] (T = prefix tokens + patches) of a token model."""
        if self.kind != "vit" or not self.has_class_token:
            raise ValueError(f"timm {type(self.model).__name__} has no CLS attention to show; the patch-similarity "
                             "and PCA views work for it")
        return capture_attention(self.model, lambda: self.model.forward_features(x))


# -- weights -----------------------------------------------------------------------------------------------------
def _offline_advice(what: str, error: BaseException) -> str:
    return (f"could not fetch {what}: {type(error).__name__}: {str(error)[:300]}. Without network: on a machine "
            f"online, run the same call once (timm/Hugging Face cache it under ~/.cache/huggingface, torchvision "
            f"under ~/.cache/torch) and copy that cache here (HF_HOME / TORCH_HOME point elsewhere; HF_HUB_OFFLINE=1 "
            f"skips the network retries), or save the weights to a file and pass weights=PATH "
            f"(.safetensors or a torch state dict)")


def _fetch(what: str, load: Callable[[], Any]) -> Any:
    """Run a download; a missing network / file becomes WeightsNotAvailable with advice, a tag without weights a
    ConfigError, weights that do not fit the model a ValueError."""
    try:
        return load()
    except ConfigError:
        raise
    except RuntimeError as e:
        text = " ".join(str(e).split())
        if "No pretrained weights exist" in text or "Invalid pretrained" in text:
            raise ConfigError(f"{what}: {text}") from None
        if "loading state_dict" in text:
            raise ValueError(f"{what} do not fit the model built with these options: {text[:800]}") from None
        raise WeightsNotAvailable(_offline_advice(what, e)) from e
    except Exception as e:  # network / hub errors (OSError, httpx, urllib, hub's LocalEntryNotFoundError ...)
        raise WeightsNotAvailable(_offline_advice(what, e)) from e


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: safetensors, or a torch state dict (also nested under "state_dict" or
    "model"; a "module." prefix is removed) through timm's reader. Anything else is a ValueError."""
    from timm.models import load_state_dict

    state = load_state_dict(str(Path(path).expanduser()), use_ema=False)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = sorted(state)[:6] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{path} is not a state dict of tensors (top level: {keys}); a workbench checkpoint loads "
                         "with workbench.trained.load_trained(run), or export its backbone with `workbench export`")
    return dict(state)


def _build_timm(model_name: str, opts: TimmOptions, image_size: int | None, in_chans: int) -> Backbone:
    import timm
    from timm.data import resolve_model_data_config

    arch = _arch(model_name, opts.kwargs)
    kw = timm_kwargs(model_name, opts.kwargs, image_size, in_chans)
    if opts.weights:
        state = read_state_dict(opts.weights)
        for c in arch.classifiers:  # a classifier's weights are dropped, as timm does for num_classes=0
            state.pop(c + ".weight", None)
            state.pop(c + ".bias", None)
        overlay = {"state_dict": state, "num_classes": 0, "source": "", "label_offset": 0}
        try:
            model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kw)
        except RuntimeError as e:
            raise ValueError(f"weights file {opts.weights} does not fit timm model {model_name!r} with options "
                             f"{opts.kwargs}: {' '.join(str(e).split())[:800]}") from None
    elif opts.pretrained:
        model = _fetch(f"the pretrained weights of timm model {model_name!r}",
                       lambda: timm.create_model(model_name, pretrained=True, **kw))
    else:
        model = timm.create_model(model_name, pretrained=False, **kw)
    if arch.vit:
        bb: Backbone = ViT(vit=model)
    else:
        size = image_size or int(resolve_model_data_config(model)["input_size"][-1])
        bb = TimmBackbone(model, size, in_chans)
    data = resolve_model_data_config(model)
    bb.data_mean, bb.data_std = tuple(data["mean"]), tuple(data["std"])
    return bb


def _load_resnet_state(bb: ResNet, state: dict[str, torch.Tensor], what: str, small_stem: bool | None) -> None:
    """Load torchvision ResNet weights into ``bb.net``: classifier dropped, conv1 adapted to other channel counts
    (timm's adapt_input_conv), or left random under an explicit small stem."""
    from timm.models import adapt_input_conv

    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    w, conv = state.get("conv1.weight"), bb.net.conv1
    if w is not None and w.shape != conv.weight.shape:
        if w.shape[2:] != conv.weight.shape[2:]:
            if small_stem:
                warnings.warn(f"{what}: small_stem=True replaces the {tuple(w.shape[2:])} stem conv; conv1 starts "
                              "random, every other layer is loaded", stacklevel=3)
                state.pop("conv1.weight")
            else:
                raise ValueError(f"{what}: conv1 is {tuple(w.shape)} but the model's stem conv is "
                                 f"{tuple(conv.weight.shape)}; pass small_stem={w.shape[-1] == 3} to match the weights")
        else:
            state["conv1.weight"] = adapt_input_conv(conv.weight.shape[1], w)
    missing, unexpected = bb.net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "conv1.weight" and "conv1.weight" not in state and small_stem)]
    if missing or unexpected:
        raise ValueError(f"{what} do not fit torchvision {bb.arch}: missing keys {missing[:8]}, unexpected keys "
                         f"{unexpected[:8]}")


def _build_torchvision(model_name: str, opts: TorchvisionOptions, image_size: int | None, in_chans: int) -> Backbone:
    size = image_size or 224
    has_weights = bool(opts.pretrained or opts.weights)
    small = opts.small_stem if opts.small_stem is not None else (size <= 64 and not has_weights)
    bb = ResNet(model_name, size, in_chans, small)
    if opts.weights:
        _load_resnet_state(bb, read_state_dict(opts.weights), f"weights file {opts.weights}", opts.small_stem)
    elif opts.pretrained:
        import torchvision

        enum = torchvision.models.get_model_weights(model_name)
        weights = enum.DEFAULT if opts.pretrained is True else enum[opts.pretrained]
        state = _fetch(f"the {weights} weights of torchvision {model_name}",
                       lambda: weights.get_state_dict(progress=False))
        _load_resnet_state(bb, dict(state), f"the {weights} weights", opts.small_stem)
    bb.data_mean, bb.data_std = IMAGENET_MEAN, IMAGENET_STD
    return bb


def build_external(name: str, image_size: int | None = None, in_chans: int = 3, **options: Any) -> Backbone:
    """The backbone of spec ``name`` for ``image_size`` px images (None: the model's own size, e.g. 518 for the
    DINOv2 ViTs, 224 for most others) with ``in_chans`` channels, with ``options`` (see the module docstring).

    The backbone carries ``spec`` (a :class:`BackboneSpec`) and ``data_mean``/``data_std`` (the model's own
    normalisation: timm's data config, ImageNet's for torchvision).
    """
    library, model_name = split_spec(name)
    opts = external_options(name, options)
    if library == "timm":
        bb = _build_timm(model_name, opts, image_size, in_chans)
    else:
        bb = _build_torchvision(model_name, opts, image_size, in_chans)
    bb.spec = BackboneSpec(name, dict(options), int(bb.image_size), int(bb.in_chans))
    return bb


_FAMILY = SpecFamily(SPEC_FORMS, external_options, external_kind, external_patch_size, build_external)
SPEC_FAMILIES.update({"timm:": _FAMILY, "hf-hub:": _FAMILY, "torchvision:": _FAMILY})
