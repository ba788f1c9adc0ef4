"""``fashion-mnist``: the real Fashion-MNIST (Zalando), read from its four IDX files.

Looked for, in order: the ``root`` you pass, torchvision's layout under it (``root/FashionMNIST/raw``),
and Debian's package (``apt-get install dataset-fashion-mnist`` -> /usr/share/datasets/fashion-mnist).
With ``download=True`` an online machine fetches it through torchvision into ``root``.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from workbench.data.base import DataError, ImageDataset, check_n, check_size, finish, register

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]


def search_dirs(root: str | Path | None) -> list[Path]:
    """Folders searched for the IDX files, in order."""
    dirs = []
    if root is not None:
        dirs += [Path(root), Path(root) / "FashionMNIST" / "raw"]
    return dirs + [Path(SYSTEM_DIR)]


def _present(folder: Path, name: str) -> Path | None:
    """The file ``name`` (gzipped) or its uncompressed twin in ``folder``, if either exists."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def find_files(split: str, root: str | Path | None) -> tuple[Path, Path] | None:
    """(images, labels) paths of ``split`` in the first folder holding both, else None."""
    for folder in search_dirs(root):
        images, labels = _present(folder, FILES[split][0]), _present(folder, FILES[split][1])
        if images is not None and labels is not None:
            return images, labels
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array of the shape its header gives."""
    opener = gzip.open if path.suffix == ".gz" else open
    fix = "delete it and fetch it again (or reinstall dataset-fashion-mnist)"
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is truncated or corrupt ({e})", fix) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is truncated or corrupt: not an unsigned-byte IDX file (magic "
                        f"{raw[:4].hex() or 'missing'}, expected 000008xx)", fix)
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = raw[4 + 4 * ndim:]
    if len(raw) < 4 + 4 * ndim or len(body) != int(np.prod(shape)):
        raise DataError(f"{path} is truncated or corrupt: its header says {shape} ({int(np.prod(shape))} bytes) "
                        f"but it holds {len(body)}", fix)
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


@register("fashion-mnist")
def load_fashion_mnist(split: str = "train", *, root: str | Path | None = None, n: int | None = None,
                       size: int | None = None, download: bool = False) -> ImageDataset:
    """Fashion-MNIST ``split`` as uint8 [N, 1, 28, 28] (or ``size`` px), first ``n`` images."""
    check_size("fashion-mnist", size)
    check_n("fashion-mnist", n)
    found = find_files(split, root)
    if found is None and download:
        if root is None:
            raise ValueError("'fashion-mnist': download=True needs root=<folder> to download into")
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=split == "train", download=True)
        found = find_files(split, root)
    if found is None:
        looked = "\n  ".join(str(d) for d in search_dirs(root))
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files {list(FILES[split])} not found; looked in:\n  {looked}\n"
            "Get them with `apt-get install dataset-fashion-mnist` (Debian; installs to "
            f"{SYSTEM_DIR}), or pass root=<folder holding the IDX files>, or download=True with root=<folder> "
            "on a machine that is online.")
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{found[0]} / {found[1]} are not a matching Fashion-MNIST pair: images {images.shape}, "
                         f"labels {labels.shape}")
    ds = ImageDataset(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)),
                      list(CLASS_NAMES), "fashion-mnist", split)
    return finish(ds, n, size)
