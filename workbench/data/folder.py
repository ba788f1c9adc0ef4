"""``folder``: a directory of images, with class subfolders (``root/<class>/**/*.png``) or flat (unlabelled), or
split folders ``root/train/`` and ``root/val/`` (or ``test/``) holding either.

Each image is centre-cropped to a square and resized to ``size`` px. Files that cannot be decoded are
listed together in one :class:`CorruptImagesError` (or skipped, and returned in ``dataset.skipped``, when
the caller passes ``skip_corrupt=True``); nothing is dropped silently.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from workbench.data.base import DataError, ImageDataset, check_size, check_stream_options, register

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DEFAULT_SIZE = 64  # px, the image size of a folder (or shards) when none is given


class CorruptImagesError(DataError):
    """Some image files could not be decoded; ``files`` holds (path, reason) for each."""

    def __init__(self, files: list[tuple[str, str]]):
        self.files = files
        shown = "; ".join(f"{p} ({why})" for p, why in files[:20])
        more = f"; ... and {len(files) - 20} more" if len(files) > 20 else ""
        super().__init__(f"{len(files)} image file(s) could not be read: {shown}{more}",
                         "fix or remove them, or pass skip_corrupt=True to leave them out (data.options.skip_corrupt="
                         "true on the command line; the skipped files are then listed in dataset.skipped and in the "
                         "run's status.json)")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def open_image(source: str | Path | BinaryIO, mode: str) -> Any:
    """A decoded ``PIL.Image.Image`` converted to ``mode`` ("RGB" or "L") from a path or file object; raises what PIL
    raises."""
    from PIL import Image

    with Image.open(source) as im:
        im.load()
        return im.convert(mode)


def decode_square(source: str | Path | BinaryIO, size: int, mode: str) -> np.ndarray | str:
    """[H, W, C] uint8 array (centre square, resized to ``size``), or the reason the file cannot be read."""
    from PIL import Image

    try:
        im = open_image(source, mode)
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
        if side != size:
            im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
        arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:                       # PIL raises many types for bad files; report them all
        return f"{type(e).__name__}: {e}"
    return arr[:, :, None] if arr.ndim == 2 else arr


def _has_images(folder: Path) -> bool:
    """Whether ``folder`` holds an image file anywhere below it (stops at the first)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES for f in filenames):
            return True
    return False


def _class_layout(root: Path) -> tuple[list[Path], list[Path]]:
    """(class subfolders holding images, image files at the top level) of ``root``; both at once is an error."""
    entries = sorted(p for p in root.iterdir() if _visible(p))
    class_dirs = [p for p in entries if p.is_dir() and _has_images(p)]
    top_files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if class_dirs and top_files:
        raise ValueError(f"'folder': {root} mixes class subfolders ({', '.join(p.name for p in class_dirs[:5])}) with "
                         f"images at its top level ({', '.join(p.name for p in top_files[:5])}); move the loose images "
                         "into a class folder, or point root= at a folder of one kind")
    return class_dirs, top_files


SPLIT_FOLDERS = {"train": ("train",), "test": ("val", "test")}


def split_folder(root: Path, split: str) -> Path | None:
    """The folder of ``split`` when ``root`` holds split folders (only ``train/``, ``val/``, ``test/`` with
    ``train/`` among them): ``train/`` for 'train', ``val/`` (else ``test/``) for 'test'; None when it does not."""
    subdirs = {p.name for p in root.iterdir() if p.is_dir() and _visible(p)}
    if "train" not in subdirs or not subdirs <= {"train", "val", "test"}:
        return None
    for name in SPLIT_FOLDERS[split]:
        if name in subdirs:
            return root / name
    raise FileNotFoundError(f"'folder': {root} has a train/ folder but no val/ or test/ folder for split {split!r}")


def list_folder(root: str | Path | None, split: str, test_fraction: float | None = None,
                seed: int = 0) -> tuple[list[tuple[Path, int]], list[str], Path]:
    """The (file, label) pairs of ``split`` under ``root``, the class names, and the folder they were found in.

    Layouts: class subfolders (labels by sorted folder name), flat (labels -1), or split folders ``train/`` +
    ``val/`` (or ``test/``), each with either layout (the classes are train/'s; the 'test' split reads val/, else
    test/). Without split folders, ``test_fraction`` puts a seeded share of the files in 'test' (None: every
    split is the whole folder).
    """
    if root is None:
        raise ValueError("'folder' needs root=<directory of images> (got root=None)")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"'folder': root={str(root)!r} is not a directory")
    if test_fraction is not None and not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise ValueError(f"'folder': test_fraction={test_fraction!r} must be a number in (0, 1), or None to use "
                         "every image in both splits")
    folder, class_names = root, None
    sub = split_folder(root, split)
    if sub is not None:
        if test_fraction is not None:
            raise ValueError(f"'folder': test_fraction={test_fraction!r} does not apply: {root} has its own train/ "
                             "and val/ (or test/) folders; leave test_fraction unset")
        folder = sub
        if split != "train":
            train_dirs, _ = _class_layout(root / "train")
            class_names = [p.name for p in train_dirs]
    class_dirs, top_files = _class_layout(folder)
    if class_names is None:
        class_names = [p.name for p in class_dirs]
    missing = sorted({p.name for p in class_dirs} - set(class_names))
    if missing:
        raise ValueError(f"'folder': {folder} has class folder(s) {missing} that {root / 'train'} does not have; "
                         f"the classes are train/'s: {class_names}")
    if class_dirs:
        files = [(f, class_names.index(d.name)) for d in class_dirs for f in _images_under(d)]
    else:
        class_names = []
        files = [(f, -1) for f in top_files]
    if not files:
        raise DataError(f"'folder': no image files under {root} (looked for {sorted(IMAGE_SUFFIXES)})",
                        "point root= at the folder that holds the images (or their class subfolders)")
    if test_fraction is not None:
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        n_test = max(1, round(len(files) * test_fraction))
        keep = sorted(order[:n_test]) if split == "test" else sorted(order[n_test:])
        files = [files[i] for i in keep]
    return files, class_names, folder


@register("folder")
def load_folder(split: str = "train", *, root: str | Path | None = None, size: int = DEFAULT_SIZE,
                channels: int = 3, test_fraction: float | None = None, seed: int = 0, skip_corrupt: bool = False,
                workers: int = 8, stream: bool | str = "auto", decode: str = "cpu") -> ImageDataset:
    """Images under ``root`` as uint8 [N, channels, size, size], decoded on ``workers`` threads.

    Layouts (``list_folder``): class subfolders give labels (sorted folder names), a flat folder labels -1, and
    ``train/`` + ``val/`` (or ``test/``) folders are the two splits. Otherwise, without ``test_fraction`` every
    split is the whole folder; with it, a seeded shuffle puts that share in 'test'. ``stream`` and ``decode``
    choose how pretraining reads the train split (``workbench.data.stream``: streamed through DataLoader workers
    when ``stream`` is true, or "auto" and the decoded split would exceed 2 GiB; JPEGs decoded by PIL or, with
    ``decode="cuda"``, on the training GPU); this function always decodes into memory.
    """
    check_size("folder", size)
    if channels not in (1, 3):
        raise ValueError(f"'folder': channels={channels!r} is not supported; use 1 (grey) or 3 (RGB)")
    check_stream_options("folder", stream, decode, workers)
    files, class_names, _ = list_folder(root, split, test_fraction, seed)
    mode = "RGB" if channels == 3 else "L"
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoded = list(pool.map(lambda item: decode_square(item[0], size, mode), files))
    bad = [(str(path), why) for (path, _), why in zip(files, decoded) if isinstance(why, str)]
    if bad and not skip_corrupt:
        raise CorruptImagesError(bad)
    good = [(arr, label) for arr, (_, label) in zip(decoded, files) if not isinstance(arr, str)]
    if not good:
        raise DataError(f"'folder': none of the {len(files)} image files under {root} could be read "
                        f"(first: {bad[0][0]}: {bad[0][1]})", "check that the files are images PIL can open")
    images = torch.from_numpy(np.stack([arr for arr, _ in good])).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in good], dtype=torch.int64)
    return ImageDataset(images, labels, class_names, "folder", split, skipped=bad)
