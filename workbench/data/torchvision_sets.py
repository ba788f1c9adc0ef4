"""``cifar10``, ``cifar100`` and ``stl10`` through torchvision, converted once to uint8 [N, 3, H, W].

Files are read from ``root`` in torchvision's layout; ``download=True`` lets torchvision fetch them
there on a machine that is online.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from workbench.data.base import ImageDataset, check_n, check_size, finish, register


def _open(name: str, make: Callable[[], Any], root: str | Path | None, download: bool) -> Any:
    """Build a torchvision data set, turning its 'not found' into an error that says where and how."""
    if root is None:
        raise ValueError(f"{name!r} needs root=<folder> (torchvision's layout), with download=True to fetch it there")
    try:
        return make()
    except RuntimeError as e:
        if "not found" not in str(e).lower() and "corrupted" not in str(e).lower():
            raise
        raise FileNotFoundError(
            f"{name!r} files not found (or corrupt) under {Path(root)} ({e}); pass download=True to fetch them "
            "there with torchvision on a machine that is online, or point root= at a folder that holds them"
        ) from e


def _from_hwc(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(data, dtype=np.uint8).transpose(0, 3, 1, 2)))


def _cifar(name: str, split: str, root: str | Path | None, n: int | None, size: int | None,
           download: bool) -> ImageDataset:
    """CIFAR-10 or CIFAR-100 (fine labels) ``split``: uint8 [N, 3, 32, 32] (or ``size`` px), first ``n`` images."""
    from torchvision.datasets import CIFAR10, CIFAR100

    check_size(name, size)
    check_n(name, n)
    cls = {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    tv = _open(name, lambda: cls(str(root), train=split == "train", download=download), root, download)
    ds = ImageDataset(_from_hwc(tv.data), torch.as_tensor(tv.targets, dtype=torch.int64), list(tv.classes),
                      name, split)
    return finish(ds, n, size)


@register("cifar10")
def load_cifar10(split: str = "train", *, root: str | Path | None = None, n: int | None = None,
                 size: int | None = None, download: bool = False) -> ImageDataset:
    """CIFAR-10 ``split``: uint8 [N, 3, 32, 32] (or ``size`` px), first ``n`` images."""
    return _cifar("cifar10", split, root, n, size, download)


@register("cifar100")
def load_cifar100(split: str = "train", *, root: str | Path | None = None, n: int | None = None,
                  size: int | None = None, download: bool = False) -> ImageDataset:
    """CIFAR-100 ``split`` (fine labels): uint8 [N, 3, 32, 32] (or ``size`` px), first ``n`` images."""
    return _cifar("cifar100", split, root, n, size, download)


@register("stl10")
def load_stl10(split: str = "train", *, root: str | Path | None = None, n: int | None = None,
               size: int | None = None, download: bool = False, unlabeled: bool | str = False) -> ImageDataset:
    """STL-10 ``split``: uint8 [N, 3, 96, 96] (or ``size`` px). ``unlabeled=True`` appends the 100k unlabelled
    images to the train split (label -1); ``unlabeled="only"`` returns just those."""
    from torchvision.datasets import STL10

    check_size("stl10", size)
    check_n("stl10", n)
    if unlabeled not in (False, True, "only"):
        raise ValueError(f"'stl10': unlabeled={unlabeled!r} must be False, True or 'only'")
    if unlabeled and split != "train":
        raise ValueError(f"'stl10': unlabeled={unlabeled!r} applies to split='train' only (got split={split!r})")
    tv_split = {False: split, True: "train+unlabeled", "only": "unlabeled"}[unlabeled]
    tv = _open("stl10", lambda: STL10(str(root), split=tv_split, download=download), root, download)
    labels = torch.as_tensor(np.asarray(tv.labels), dtype=torch.int64)
    ds = ImageDataset(torch.from_numpy(np.ascontiguousarray(tv.data)), labels, list(tv.classes), "stl10", split)
    return finish(ds, n, size)
