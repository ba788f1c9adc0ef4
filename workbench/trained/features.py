"""Frozen features of a trained model (or a baseline built from it), cached with its run.

``extract_features(source, dataset)`` accepts every source :func:`load_trained` accepts, and the baselines that
every report sets beside it go through the same path: ``"random_init"`` (the same architecture, fresh weights)
and ``"raw_pixels"`` (normalised pixels, flattened). Features of a run are cached under ``run/cache/`` keyed by
the checkpoint file (mtime and size), the data's contents, the normalisation, the device type and the pass's
arithmetic (fp32, or TF32 matmuls on CUDA), so notebooks
and repeated reports do not recompute them; raw pixels are never cached (they are the data itself). A backbone
spec (``timm:...``), which has no run folder, caches in ``user_cache_dir()`` keyed by its weights' contents.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.augment import channel_values
from workbench.data.base import ImageDataset
from workbench.device import resolve_device
from workbench.models.encode import encode
from workbench.runs import atomic_torch_save
from workbench.trained.source import Trained, load_trained, random_init_like

CACHE_VERSION = 2
CACHE_MIN_SECONDS = 2.0  # feature passes faster than this are recomputed, not stored
BASELINES = ("random_init", "raw_pixels")


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

    def prefix(self, dims: int) -> "FeatureSet":
        """The first ``dims`` feature dimensions [N, dims] as a new FeatureSet (a Matryoshka representation's
        nested size); ``meta["prefix_dims"]`` records it."""
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= self.dim:
            raise ValueError(f"prefix dims={dims!r} must be an integer in [1, {self.dim}] (the feature size)")
        return FeatureSet(self.features[:, :dims], self.labels, dict(self.factors), list(self.class_names),
                          dict(self.factor_names), {**self.meta, "prefix_dims": dims})

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


# -- data that fits the backbone ----------------------------------------------------------------------------
def as_dataset(data: ImageDataset | torch.Tensor) -> ImageDataset:
    """An ImageDataset as it is, or uint8 images [N, C, H, W] as an unlabelled one (labels -1)."""
    if isinstance(data, ImageDataset):
        return data
    if isinstance(data, torch.Tensor):
        return ImageDataset(data, torch.full((data.shape[0],), -1, dtype=torch.int64), [], "images", "images")
    raise TypeError(f"expected an ImageDataset or uint8 images [N, C, H, W], got {type(data).__name__}")


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


# -- cache --------------------------------------------------------------------------------------------------
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
    """Hash of a module's class and state dict (the cache key of a backbone that has no checkpoint file)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(module).__qualname__.encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        _digest_tensor(h, v)
    return h.hexdigest()


def _source_stamp(trained: Trained) -> dict[str, Any]:
    """What identifies the weights: the checkpoint file (path, mtime, size), else the module's contents."""
    if trained.checkpoint is not None:
        st = trained.checkpoint.stat()
        return {"checkpoint": str(trained.checkpoint.resolve()), "mtime_ns": st.st_mtime_ns, "size": st.st_size}
    return {"module": module_fingerprint(trained.backbone)}


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


# -- extraction ---------------------------------------------------------------------------------------------
def extract_features(source: Any, dataset: ImageDataset | torch.Tensor, *, checkpoint: str = "last",
                     baseline: str | None = None, mean: Sequence[float] | float | None = None,
                     std: Sequence[float] | float | None = None, batch_size: int = 256,
                     device: str | torch.device = "auto", cache: bool = True,
                     cache_dir: str | os.PathLike | None = None, seed: int = 0) -> FeatureSet:
    """Frozen features of ``dataset`` (an ImageDataset, or uint8 images [N, C, H, W]) under ``source`` ->
    FeatureSet(features [N, D], labels, factors).

    source: anything :func:`load_trained` accepts; its recorded mean/std normalise the images unless ``mean``/
    ``std`` are given (a bare module: 0.5/0.5). ``baseline``: None (the source itself), ``"random_init"`` (same
    architecture, fresh weights from ``seed``) or ``"raw_pixels"``. Cached under the run's ``cache/`` (or
    ``cache_dir``) when ``cache`` and the pass took at least ``CACHE_MIN_SECONDS`` (what a moment recomputes is
    not worth its disk: a quickstart's four feature sets would be 8 MB); a new checkpoint, other data,
    normalisation or device type recompute.
    """
    if baseline not in (None, *BASELINES):
        raise ValueError(f"baseline={baseline!r} is not allowed; use None, 'random_init' or 'raw_pixels'")
    trained = load_trained(source, checkpoint)
    dataset = as_dataset(dataset)
    check_compatible(trained.backbone, dataset)
    chans = dataset.images.shape[1]
    rec_mean, rec_std = trained.stats(chans)
    mean_t = channel_values(mean, chans, "mean") if mean is not None else rec_mean
    std_t = channel_values(std, chans, "std") if std is not None else rec_std
    encoder = trained.backbone
    if baseline == "raw_pixels":
        encoder = RawPixels(dataset.images.shape[2], chans)
    elif baseline == "random_init":
        encoder = random_init_like(encoder, seed)

    root = Path(cache_dir) if cache_dir is not None else trained.cache_dir
    path = None
    if cache and root is not None and baseline != "raw_pixels":
        key = {"v": CACHE_VERSION, "baseline": baseline, "seed": seed if baseline == "random_init" else None,
               **_source_stamp(trained), "data": dataset_fingerprint(dataset), "mean": mean_t, "std": std_t,
               "device": resolve_device(device).type, "precision": _pass_precision(resolve_device(device))}
        stem = trained.checkpoint.stem if trained.checkpoint is not None else type(trained.backbone).__name__
        path = cache_path(root, key, f"{stem}-{baseline or 'pretrained'}-{dataset.name}-{dataset.split}")
        hit = _load_cached(path)
        if hit is not None and hit.get("key") == json.dumps(key, sort_keys=True, default=str):
            return _feature_set(hit["features"], dataset, hit["meta"])
    started = time.perf_counter()
    feats = encode(encoder, dataset.images, mean_t, std_t, batch_size=batch_size, device=device)
    took = time.perf_counter() - started
    meta = {"source": str(trained.run.path) if trained.run is not None else trained.source,
            "checkpoint": str(trained.checkpoint) if trained.checkpoint is not None else None,
            "baseline": baseline or "pretrained", "data": dataset.name, "split": dataset.split, "n": len(dataset),
            "dim": int(feats.shape[1]), "mean": list(mean_t), "std": list(std_t)}
    if path is not None and took >= CACHE_MIN_SECONDS:
        atomic_torch_save({"features": feats, "meta": meta, "key": json.dumps(key, sort_keys=True, default=str)},
                          path)
    return _feature_set(feats, dataset, meta)


def _pass_precision(device: torch.device) -> str:
    """The arithmetic of a feature pass, part of the cache key: fp32, or fp32 with TF32 matmuls on CUDA when the
    process allows them (``workbench.device.configure_cuda``, set by a training run in the same process)."""
    tf32 = device.type == "cuda" and torch.get_float32_matmul_precision() != "highest"
    return "fp32-tf32" if tf32 else "fp32"


def _feature_set(features: torch.Tensor, dataset: ImageDataset, meta: dict[str, Any]) -> FeatureSet:
    return FeatureSet(features, dataset.labels.clone(), {k: v.clone() for k, v in dataset.factors.items()},
                      list(dataset.class_names), dict(dataset.factor_names), dict(meta))
