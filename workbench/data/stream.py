"""Streaming sources: a training split read image by image at full size instead of decoded whole into memory.

Pretraining streams a data set (``workbench.train.batches``: DataLoader workers decode each image and take its
random resized crops, the colour ops run batched on the device) when ``stream=True``, or under ``stream="auto"``
when the in-memory copy would exceed ``STREAM_ABOVE_BYTES`` (N x C x size^2 uint8 bytes, the same rule on any
machine, so a resumed run makes the same choice). ``load()`` always decodes into memory.

A source is an indexable list of images (``FileList`` over a folder; ``workbench.data.shards.ShardSet`` over
WebDataset tar shards, read in order) that knows its split, class names, training ``size``, ``channels`` and
corrupt-file policy, and can decode any subset the way the in-memory loader does (centre square at ``size``) for
the kNN monitor and the normalisation statistics. Its memory is the file list alone: paths are one UTF-8 blob
with offsets and labels one int64 array, so forked DataLoader workers share them without copy-on-write growth.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from workbench.data.base import STREAM_ABOVE_BYTES, ImageDataset, check_size, check_stream_options
from workbench.data.folder import DEFAULT_SIZE, CorruptImagesError, decode_square, list_folder, open_image

def decoded_bytes(n: int, channels: int, size: int) -> int:
    """Bytes of ``n`` images decoded in memory as uint8 [n, channels, size, size] (the in-memory path's copy)."""
    return int(n) * int(channels) * int(size) ** 2


def wants_stream(stream: Any, n: int, channels: int, size: int) -> bool:
    """The streaming choice: ``stream`` True/False as given; "auto" streams when ``decoded_bytes`` exceeds
    ``STREAM_ABOVE_BYTES``."""
    if stream == "auto":
        return decoded_bytes(n, channels, size) > STREAM_ABOVE_BYTES
    return bool(stream)


def decode_full(source: str | Path | bytes, mode: str) -> torch.Tensor | str:
    """One image at full size as uint8 [C, H, W] (``mode`` "RGB" or "L"), or the reason it cannot be read."""
    try:
        im = open_image(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source, mode)
        arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:                       # PIL raises many types for bad files; report them all
        return f"{type(e).__name__}: {e}"
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def decode_squares(items: Sequence[Any], size: int, mode: str, workers: int) -> list[np.ndarray | str]:
    """``folder``'s in-memory decode (centre square resized to ``size``, [H, W, C]) of many paths or byte strings
    on a thread pool; a reason string where one cannot be read."""
    def one(item: Any) -> np.ndarray | str:
        return decode_square(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item, size, mode)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, items))


def stack_squares(decoded: list[np.ndarray | str], names: Sequence[str], labels: Sequence[int],
                  class_names: list[str], name: str, split: str, skip_corrupt: bool) -> ImageDataset:
    """An ImageDataset from ``decode_squares`` output with the folder loader's policy: unreadable items raise one
    CorruptImagesError listing them, or (``skip_corrupt``) are left out and listed in ``skipped``."""
    bad = [(str(n), why) for n, why in zip(names, decoded) if isinstance(why, str)]
    if bad and not skip_corrupt:
        raise CorruptImagesError(bad)
    good = [(arr, int(lab)) for arr, lab in zip(decoded, labels) if not isinstance(arr, str)]
    if not good:
        raise ValueError(f"{name!r}: none of the {len(decoded)} images of split {split!r} could be read")
    images = torch.from_numpy(np.stack([a for a, _ in good])).permute(0, 3, 1, 2).contiguous()
    return ImageDataset(images, torch.tensor([lab for _, lab in good], dtype=torch.int64), class_names, name, split,
                        skipped=bad)


@dataclass
class StreamSource:
    """What the streaming path reads (subclasses: ``FileList``, ``ShardSet``): ``size`` the training image size
    (kNN and statistics subsets, the model's input size), ``channels`` 1 or 3, the corrupt-file policy, the
    number of DataLoader ``workers`` and where JPEGs are decoded (``decode`` "cpu" or "cuda")."""

    name: str
    split: str
    class_names: list[str]
    size: int = DEFAULT_SIZE
    channels: int = 3
    skip_corrupt: bool = False
    workers: int = 8
    decode: str = "cpu"
    random_access: bool = field(default=True, init=False)

    @property
    def mode(self) -> str:
        """PIL mode images are converted to."""
        return "RGB" if self.channels == 3 else "L"

    @property
    def num_workers(self) -> int:
        """DataLoader worker processes: ``workers``, at most the machine's CPU count."""
        return min(self.workers, os.cpu_count() or 1)

    def __len__(self) -> int:
        raise NotImplementedError

    def subset(self, index: torch.Tensor | Sequence[int]) -> ImageDataset:
        """Images at ``index`` decoded as the in-memory loader does (centre square at ``size``) with their labels."""
        raise NotImplementedError


@dataclass
class FileList(StreamSource):
    """The image files of one split of a folder (``folder``'s layouts: class subfolders, flat, ``train/`` +
    ``val/``|``test/``) as paths relative to ``root`` in one UTF-8 blob with offsets, and int64 labels."""

    root: str = ""
    blob: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8), repr=False)
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64), repr=False)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    @classmethod
    def from_files(cls, root: str | Path, files: Sequence[tuple[Path, int]], class_names: list[str],
                   **kw: Any) -> "FileList":
        """Pack ``(path, label)`` pairs under ``root``."""
        root = str(root)
        encoded = [os.path.relpath(p, root).encode() for p, _ in files]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), np.uint8).copy()
        labels = np.array([lab for _, lab in files], np.int64)
        return cls(class_names=class_names, root=root, blob=blob, offsets=offsets, labels=labels, **kw)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, i: int) -> str:
        """The full path of image ``i``."""
        rel = self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode()
        return os.path.join(self.root, rel)

    def subset(self, index: torch.Tensor | Sequence[int]) -> ImageDataset:
        idx = [int(i) for i in index]
        paths = [self.path(i) for i in idx]
        decoded = decode_squares(paths, self.size, self.mode, self.num_workers or 1)
        return stack_squares(decoded, paths, self.labels[idx].tolist(), self.class_names, self.name, self.split,
                             self.skip_corrupt)


# ----------------------------------------------------------------------------------------- opening by name
_OPENERS: dict[str, Callable[..., StreamSource]] = {}


def register_stream(name: str) -> Callable[[Callable[..., StreamSource]], Callable[..., StreamSource]]:
    """Decorator: ``fn(split, **loader_options) -> StreamSource`` opens data set ``name`` for streaming."""
    def deco(fn: Callable[..., StreamSource]) -> Callable[..., StreamSource]:
        _OPENERS[name] = fn
        return fn
    return deco


def streamable() -> list[str]:
    """Data set names that can be streamed."""
    return sorted(_OPENERS)


def open_source(name: str, split: str, **options: Any) -> StreamSource:
    """Data set ``name``'s ``split`` as a StreamSource, whatever its ``stream`` option says (``options``: the
    loader's, as ``workbench.data.load`` takes them)."""
    if name not in _OPENERS:
        raise ValueError(f"{name!r} cannot be streamed; streaming reads {streamable()}")
    return _OPENERS[name](split, **options)


def open_stream(name: str, split: str, **options: Any) -> StreamSource | None:
    """Data set ``name``'s ``split`` as a StreamSource when it is to be streamed (its ``stream`` option, see
    ``wants_stream``), else None (load it into memory)."""
    if name not in _OPENERS:
        if options.get("stream", "auto") is True:
            raise ValueError(f"{name!r} cannot be streamed (stream=True); streaming reads {streamable()}")
        return None
    source = open_source(name, split, **options)
    return source if wants_stream(options.get("stream", "auto"), len(source), source.channels, source.size) else None


@register_stream("folder")
def open_folder(split: str = "train", *, root: str | Path | None = None, size: int = DEFAULT_SIZE,
                channels: int = 3, test_fraction: float | None = None, seed: int = 0, skip_corrupt: bool = False,
                workers: int = 8, stream: Any = "auto", decode: str = "cpu") -> FileList:
    """The file list of ``folder``'s ``split`` (same options and layouts as ``load("folder", ...)``)."""
    check_size("folder", size)
    check_stream_options("folder", stream, decode, workers)
    if channels not in (1, 3):
        raise ValueError(f"'folder': channels={channels!r} is not supported; use 1 (grey) or 3 (RGB)")
    files, class_names, top = list_folder(root, split, test_fraction, seed)
    return FileList.from_files(top, files, class_names, name="folder", split=split, size=size, channels=channels,
                               skip_corrupt=skip_corrupt, workers=workers, decode=decode)
