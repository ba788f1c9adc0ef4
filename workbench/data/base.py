"""The in-memory data set type and the loader registry behind ``workbench.data.load``.

Every loader returns an :class:`ImageDataset`: uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``
(-1 where unlabelled), plus class names and, where the generator knows them, factor labels. Images stay
uint8 so a whole data set fits on the training device and batches are indexed there.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

SPLITS = ("train", "test")


class DataError(ValueError):
    """A data set cannot be loaded as asked (unknown name or option, missing, corrupt or unreadable files); the
    message names what is wrong and ``hint`` (also its last line) how to fix it."""

    def __init__(self, message: str, hint: str | None = None):
        self.hint = hint
        super().__init__(message + (f"\nhint: {hint}" if hint else ""))


@dataclass
class ImageDataset:
    """uint8 images [N, C, H, W], int64 labels [N] (-1 = unlabelled), class names, and per-image factors.

    ``factors`` maps a factor name to a tensor [N] (int64 for categorical factors, float32 for continuous);
    ``factor_names`` gives the category names of the categorical ones. ``skipped`` lists (path, reason) of
    files a loader was asked to skip.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = ""
    split: str = "train"
    factors: dict[str, torch.Tensor] = field(default_factory=dict)
    factor_names: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            got = (f"{self.images.dtype} {tuple(self.images.shape)}" if isinstance(self.images, torch.Tensor)
                   else type(self.images).__name__)
            raise ValueError(f"ImageDataset.images must be a uint8 tensor [N, C, H, W]; got {got}")
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"ImageDataset.labels has shape {tuple(self.labels.shape)}; expected "
                             f"({self.images.shape[0]},), one label per image")
        for key, values in self.factors.items():
            if values.shape[0] != self.images.shape[0]:
                raise ValueError(f"ImageDataset.factors[{key!r}] has {values.shape[0]} entries for "
                                 f"{self.images.shape[0]} images")
        self.class_names = list(self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, split={self.split!r}, images={tuple(self.images.shape)}, "
                f"classes={self.num_classes}, factors={sorted(self.factors)})")

    @property
    def num_classes(self) -> int:
        """Number of classes: the class names, else the largest label + 1 (0 when unlabelled)."""
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self) and int(self.labels.max()) >= 0 else 0

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Side length of the (square) images."""
        return int(self.images.shape[-1])

    def subset(self, index: torch.Tensor | Sequence[int] | slice) -> "ImageDataset":
        """The images, labels and factors at ``index`` (a slice, an index list or a bool mask)."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index)
        return ImageDataset(self.images[index], self.labels[index], self.class_names, self.name, self.split,
                            {k: v[index] for k, v in self.factors.items()}, dict(self.factor_names),
                            list(self.skipped))


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 images [N, C, H, W] to [N, C, size, size] (chunked, rounded)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = [F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
           for i in range(0, images.shape[0], chunk)]
    return torch.cat(out) if out else images.new_zeros(0, images.shape[1], size, size)


def check_size(name: str, size: int | None, minimum: int = 8) -> None:
    """Raise ValueError unless the requested image ``size`` is an integer >= ``minimum`` (or None)."""
    if size is None:
        return
    if not isinstance(size, int) or isinstance(size, bool) or size < minimum:
        raise ValueError(f"{name!r}: size={size!r} is too small; image size must be an integer >= {minimum}")


def check_n(name: str, n: int | None) -> None:
    """Raise ValueError unless ``n`` (number of images to keep) is a positive integer or None."""
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"{name!r}: n={n!r} must be a positive number of images (or None for all)")


STREAM_ABOVE_BYTES = 2 * 1024 ** 3  # stream="auto" streams a split whose uint8 copy at the training size exceeds this


def check_stream_options(name: str, stream: Any, decode: Any, workers: Any) -> None:
    """Raise ValueError naming the option unless ``stream`` is "auto"/True/False, ``decode`` "cpu"/"cuda" and
    ``workers`` an integer >= 0 (the options of a data set that pretraining can stream, ``workbench.data.stream``)."""
    if not (stream == "auto" or isinstance(stream, bool)):
        raise ValueError(f"{name!r}: stream={stream!r} is not allowed; use 'auto' (stream when the decoded split "
                         f"exceeds {STREAM_ABOVE_BYTES // 2 ** 30} GiB), true or false")
    if decode not in ("cpu", "cuda"):
        raise ValueError(f"{name!r}: decode={decode!r} is not allowed; use 'cpu' (PIL in the DataLoader workers) or "
                         "'cuda' (torchvision.io.decode_jpeg on the training GPU)")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"{name!r}: workers={workers!r} must be an integer >= 0 (0: decode in the main process)")


def finish(ds: ImageDataset, n: int | None, size: int | None) -> ImageDataset:
    """Keep the first ``n`` images and resize to ``size`` (both optional): the common tail of every loader."""
    if n is not None and n < len(ds):
        ds = ds.subset(slice(0, n))
    if size is not None:
        ds.images = resize_uint8(ds.images, size)
    ds.images = ds.images.contiguous()
    return ds


_REGISTRY: dict[str, Callable[..., ImageDataset]] = {}


def register(name: str) -> Callable[[Callable[..., ImageDataset]], Callable[..., ImageDataset]]:
    """Decorator: make ``fn(split, **options)`` loadable as ``load(name, split, **options)``."""
    def deco(fn: Callable[..., ImageDataset]) -> Callable[..., ImageDataset]:
        _REGISTRY[name] = fn
        return fn
    return deco


def known_datasets() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted(_REGISTRY)


def loader_options(name: str) -> list[str]:
    """The keyword options the loader of ``name`` accepts (besides ``split``)."""
    fn = _REGISTRY[name]
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return []
    return sorted(p.name for p in params if p.name != "split" and p.kind in
                  (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))


def load(name: str, split: str = "train", **options: Any) -> ImageDataset:
    """Load data set ``name`` (see :func:`known_datasets`) for ``split`` ('train' or 'test').

    Options are passed to the loader; an option it does not take is an error listing the ones it does.
    """
    if name not in _REGISTRY:
        raise DataError(f"unknown data set {name!r}; known data sets: {', '.join(map(repr, known_datasets()))}",
                        "pick one of those names (or register a loader with workbench.data.register)")
    if split not in SPLITS:
        raise DataError(f"{name!r}: split={split!r} is not a split; use one of {list(SPLITS)}")
    accepted = loader_options(name)
    params = inspect.signature(_REGISTRY[name]).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise DataError(f"{name!r} does not take option(s) {unknown}; it accepts {accepted}")
    try:
        return _REGISTRY[name](split=split, **options)
    except DataError:
        raise
    except ValueError as e:  # a loader's own check: the same message, as the one error type callers catch
        raise DataError(str(e)) from e


def channel_stats(data: ImageDataset | torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images [N, C, H, W], in [0, 1] units.

    Sums are float64 and chunked, so 70k images need no more than one chunk of float memory. A std below 1e-3
    (a constant channel) is raised to 1e-3, so normalising with these statistics never divides by ~0.
    """
    images = data.images if isinstance(data, ImageDataset) else data
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64)
        total += x.sum(dim=(0, 2, 3)).cpu()
        total_sq += x.pow(2).sum(dim=(0, 2, 3)).cpu()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq / count - mean.pow(2)).clamp_min(0)
    return [float(v) / 255 for v in mean], [max(float(v) ** 0.5 / 255, 1e-3) for v in var]
