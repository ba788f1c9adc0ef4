"""Frozen-feature extraction for evaluation: batched, no-grad, autocast on CUDA, cached per run.

``extract_features(source, dataset)`` accepts a Backbone, a run (``Run`` or its folder), or one of the
baselines built by the same code path (``RawPixels``, ``random_init_like``). For a run the features are
cached under ``run/cache/`` keyed by (checkpoint file and its mtime/size, encoder kind, data set contents,
normalisation), so notebooks and repeated reports do not recompute them; a new checkpoint invalidates them.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from workbench.data.base import ImageDataset
from workbench.runs import Run, atomic_torch_save

CACHE_VERSION = 1


@dataclass
class FeatureSet:
    """Features of one data split: ``features`` float32 [N, D] (CPU), ``labels`` int64 [N] (-1 = unlabeled),
    ``factors`` name -> [N] (int64 discrete or float continuous), plus names and provenance in ``meta``."""

    features: torch.Tensor
    labels: torch.Tensor
    factors: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    factor_names: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.features.ndim != 2:
            raise ValueError(f"FeatureSet.features must be [N, D], got shape {tuple(self.features.shape)}")
        if self.labels.shape != (self.features.shape[0],):
            raise ValueError(f"FeatureSet.labels must have shape ({self.features.shape[0]},), "
                             f"got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def num_classes(self) -> int:
        """Number of classes: len(class_names) when known, else max label + 1."""
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def subset(self, index: torch.Tensor) -> "FeatureSet":
        """Rows ``index`` (int64 [M] or bool [N]) as a new FeatureSet."""
        return FeatureSet(self.features[index], self.labels[index], {k: v[index] for k, v in self.factors.items()},
                          list(self.class_names), dict(self.factor_names), dict(self.meta))


class RawPixels(nn.Module):
    """The raw-pixel baseline as an encoder: normalised images [B, C, H, W] -> flattened [B, C*H*W].

    Going through the same extraction, kNN and probe code as a backbone makes the comparison like for like.
    """

    kind = "raw"

    def __init__(self, image_size: int, in_chans: int):
        super().__init__()
        self.image_size, self.in_chans = image_size, in_chans
        self.feature_dim = in_chans * image_size * image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def random_init_like(backbone: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``backbone`` with freshly initialised weights (the random-init baseline), in eval mode.

    Every submodule with ``reset_parameters`` is reset under ``torch.manual_seed(seed)``; timm ViTs also get
    their own ``init_weights`` (CLS token, positions). The original backbone is not touched.
    """
    model = copy.deepcopy(backbone)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
        vit = getattr(model, "vit", None)
        if vit is not None and hasattr(vit, "init_weights"):
            vit.init_weights()
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


# -- normalisation ----------------------------------------------------------------------------------------
def normalize_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float [B, C, H, W] ``(x / 255 - mean) / std``; uses workbench.augment.normalize
    when the augment package provides it (the eval-time transform every part of the workbench shares)."""
    try:
        from workbench.augment import normalize as _normalize
    except ImportError:
        _normalize = None
    if _normalize is not None:
        return _normalize(images, mean, std)
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


def _channel_stats(values: Sequence[float] | float | None, channels: int, default: float, what: str) -> tuple:
    if values is None:
        return (default,) * channels
    if isinstance(values, (int, float)):
        return (float(values),) * channels
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ValueError(f"{what}={values} has {len(values)} entries for {channels}-channel images; "
                         f"pass one value per channel or a single value")
    return values


# -- resolving a source -----------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) -> CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def as_run(source: Any) -> Run | None:
    """A Run for a Run or a run folder path; None for anything else."""
    if isinstance(source, Run):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_dir():
            raise FileNotFoundError(f"run folder {path} does not exist; pass a run directory such as "
                                    f"runs/<time>-<method>-<data>-<id> (list them with `workbench runs`)")
        return Run(path)
    return None


def load_run_backbone(run: Run, checkpoint: str = "last") -> tuple[nn.Module, dict[str, Any]]:
    """(backbone in eval mode, info with mean/std/image_size/in_chans/...) of ``run``'s ``checkpoint``.

    Wraps ``workbench.train.load_pretrained`` with advice when the run has no such checkpoint.
    """
    path = run.checkpoint_path(checkpoint)
    if not path.exists():
        have = [p.stem for p in run.checkpoints()]
        status = run.status.get("status", "unknown")
        advice = (f"pass checkpoint= one of {have} (CLI: --checkpoint NAME)" if have else
                  f"the run (status {status!r}) has no checkpoints at all: pretrain it first "
                  f"(`workbench pretrain ...`) or resume it (`workbench pretrain --resume {run.path}`)")
        raise FileNotFoundError(f"cannot evaluate run {run.path}: checkpoint {checkpoint!r} not found at {path}; "
                                + advice)
    try:
        from workbench.train import load_pretrained
    except ImportError as e:  # the engine is a sibling package; say what is missing rather than fail obscurely
        raise ImportError(f"evaluating a run folder needs workbench.train.load_pretrained ({e}); "
                          "pass a Backbone to extract_features instead") from e
    backbone, info = load_pretrained(run, checkpoint)
    return backbone.eval(), dict(info)


# -- checks -----------------------------------------------------------------------------------------------
def check_compatible(encoder: nn.Module, dataset: ImageDataset, data_hint: str | None = None) -> None:
    """Raise a ValueError saying what to pass when the data's channels or size differ from the encoder's."""
    want_c = getattr(encoder, "in_chans", None)
    want_s = getattr(encoder, "image_size", None)
    have_c, have_h, have_w = dataset.images.shape[1:]
    name = data_hint or dataset.name or "the data set"
    problems, fixes = [], []
    if want_c is not None and have_c != want_c:
        problems.append(f"{have_c}-channel images but the backbone takes {want_c} channel(s)")
        fixes.append(f"channels={want_c}")
    if want_s is not None and (have_h != want_s or have_w != want_s):
        problems.append(f"{have_h}x{have_w} images but the backbone takes {want_s}x{want_s}")
        fixes.append(f"size={want_s}")
    if problems:
        opts = " ".join(fixes)
        raise ValueError(
            f"data set {name!r} ({dataset.split}) has " + " and ".join(problems) + ". Load it to match: "
            f"workbench.data.load({dataset.name or name!r}, split=..., {', '.join(fixes)}) "
            f"(CLI: `workbench evaluate RUN_DIR {opts} --data {dataset.name or name}`) where the loader takes "
            f"those options, or let evaluate() convert it: evaluate(..., adapt=True) (CLI: --adapt) resizes and "
            f"converts grey <-> RGB.")


def adapt_dataset(dataset: ImageDataset, in_chans: int, image_size: int) -> ImageDataset:
    """``dataset`` converted to ``in_chans`` channels (grey -> RGB by repetition, RGB -> grey by ITU-R 601 luma,
    otherwise an error) and resized to ``image_size`` (antialiased bilinear), uint8 [N, in_chans, s, s]."""
    import torch.nn.functional as F

    x = dataset.images
    c = x.shape[1]
    if c != in_chans:
        if c == 1:
            x = x.expand(-1, in_chans, -1, -1)
        elif in_chans == 1 and c == 3:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            raise ValueError(f"cannot convert {c}-channel images to {in_chans} channels (only grey <-> RGB)")
    if x.shape[-2:] != (image_size, image_size):
        out = []
        for i in range(0, x.shape[0], 4096):
            out.append(F.interpolate(x[i:i + 4096].float(), size=(image_size, image_size), mode="bilinear",
                                     antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8))
        x = torch.cat(out)
    return ImageDataset(x.contiguous(), dataset.labels, list(dataset.class_names), dataset.name, dataset.split,
                        dict(dataset.factors), dict(dataset.factor_names), list(dataset.skipped))


# -- cache ------------------------------------------------------------------------------------------------
def _digest_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(str((t.dtype, tuple(t.shape))).encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def dataset_fingerprint(dataset: ImageDataset) -> str:
    """Hash of a data set's name, split, images and labels: covers its loader options (size, n, seed ...)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{dataset.name}|{dataset.split}".encode())
    _digest_tensor(h, dataset.images)
    _digest_tensor(h, dataset.labels)
    return h.hexdigest()


def module_fingerprint(module: nn.Module) -> str:
    """Hash of a module's class and state dict (for caching features of a Backbone that has no run)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(module).__qualname__.encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        _digest_tensor(h, v)
    return h.hexdigest()


def _checkpoint_stamp(run: Run, checkpoint: str) -> dict[str, Any]:
    path = run.checkpoint_path(checkpoint)
    st = path.stat()
    return {"run": str(run.path.resolve()), "checkpoint": checkpoint, "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def cache_path(cache_dir: Path, key: dict[str, Any], label: str) -> Path:
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True, default=str).encode(), digest_size=10).hexdigest()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return Path(cache_dir) / f"features-{safe}-{digest}.pt"


def _load_cached(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a corrupt or foreign file is recomputed, never trusted
        return None


# -- extraction -------------------------------------------------------------------------------------------
@torch.no_grad()
def compute_features(encoder: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                     batch_size: int = 256, device: str | torch.device = "auto") -> torch.Tensor:
    """Encode uint8 images [N, C, H, W] in batches -> float32 [N, D] on the CPU.

    No grad, eval mode, bf16 autocast on CUDA; the encoder's device and train/eval mode are restored after.
    """
    dev = resolve_device(device)
    params = list(encoder.parameters()) + list(encoder.buffers())
    home = params[0].device if params else torch.device("cpu")
    was_training = encoder.training
    encoder.eval().to(dev)
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = normalize_images(images[start:start + batch_size].to(dev, non_blocking=True), mean, std)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                f = encoder(x)
            out.append(f.float().cpu())
    finally:
        encoder.to(home).train(was_training)
    if not out:
        dim = getattr(encoder, "feature_dim", 0)
        return torch.zeros(0, dim)
    return torch.cat(out)


def extract_features(source: Any, dataset: ImageDataset, *, checkpoint: str = "last", baseline: str | None = None,
                     mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
                     batch_size: int = 256, device: str | torch.device = "auto", cache: bool = True,
                     cache_dir: str | os.PathLike | None = None, seed: int = 0) -> FeatureSet:
    """Frozen features of ``dataset`` under ``source`` -> FeatureSet(features [N, D], labels, factors).

    source: a run (``Run`` or folder; its ``checkpoint`` is loaded with workbench.train.load_pretrained and
    its mean/std used), or an ``nn.Module`` encoder (a Backbone, ``RawPixels``; ``mean``/``std`` default to
    0.5/0.5 per channel). ``baseline``: None (the source itself), ``"random_init"`` (same architecture,
    fresh weights from ``seed``) or ``"raw_pixels"`` (normalised pixels, flattened).
    Cached as .pt under ``run/cache`` (or ``cache_dir``) when ``cache``; the key includes the checkpoint file's
    mtime and size and a hash of the data, so a new checkpoint or other data recompute.
    """
    if baseline not in (None, "random_init", "raw_pixels"):
        raise ValueError(f"baseline={baseline!r} is not allowed; use None, 'random_init' or 'raw_pixels'")
    run = as_run(source)
    info: dict[str, Any] = {}
    key: dict[str, Any] = {"v": CACHE_VERSION, "baseline": baseline,
                           "seed": seed if baseline == "random_init" else None}
    encoder: nn.Module | None = None
    if run is not None:
        # baselines load it too: its normalisation, and its architecture for random init
        encoder, info = load_run_backbone(run, checkpoint)
        key.update(_checkpoint_stamp(run, checkpoint))
        cache_root = Path(cache_dir) if cache_dir is not None else run.cache_dir
        label = f"{checkpoint}-{baseline or 'pretrained'}-{dataset.name}-{dataset.split}"
    elif isinstance(source, nn.Module):
        encoder = source
        cache_root = Path(cache_dir) if cache_dir is not None else None
        label = f"{type(source).__name__}-{baseline or 'model'}-{dataset.name}-{dataset.split}"
        if cache and cache_root is not None:
            key["module"] = module_fingerprint(source)
    else:
        raise TypeError(f"extract_features source must be a Run, a run folder or an nn.Module backbone, "
                        f"got {type(source).__name__}")
    chans = dataset.images.shape[1]
    mean_t = _channel_stats(mean if mean is not None else info.get("mean"), chans, 0.5, "mean")
    std_t = _channel_stats(std if std is not None else info.get("std"), chans, 0.5, "std")
    check_compatible(encoder, dataset)
    if baseline == "raw_pixels":
        encoder = RawPixels(dataset.images.shape[2], chans)
    elif baseline == "random_init":
        encoder = random_init_like(encoder, seed)

    path = None
    if cache and cache_root is not None:
        key.update({"data": dataset_fingerprint(dataset), "mean": mean_t, "std": std_t})
        path = cache_path(cache_root, key, label)
        hit = _load_cached(path)
        if hit is not None and hit.get("key") == json.dumps(key, sort_keys=True, default=str):
            return _feature_set(hit["features"], dataset, hit["meta"])
    feats = compute_features(encoder, dataset.images, mean_t, std_t, batch_size=batch_size, device=device)
    meta = {"source": str(run.path) if run is not None else type(source).__name__,
            "checkpoint": checkpoint if run is not None else None, "baseline": baseline or "pretrained",
            "data": dataset.name, "split": dataset.split, "n": len(dataset), "dim": int(feats.shape[1]),
            "mean": list(mean_t), "std": list(std_t)}
    if path is not None:
        atomic_torch_save({"features": feats, "meta": meta, "key": json.dumps(key, sort_keys=True, default=str)}, path)
    return _feature_set(feats, dataset, meta)


def _feature_set(features: torch.Tensor, dataset: ImageDataset, meta: dict[str, Any]) -> FeatureSet:
    return FeatureSet(features, dataset.labels.clone(), {k: v.clone() for k, v in dataset.factors.items()},
                      list(dataset.class_names), dict(dataset.factor_names), dict(meta))
