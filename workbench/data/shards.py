"""``webdataset``: images in WebDataset tar shards (``root/*.tar``, or ``root/train/*.tar`` + ``root/val/*.tar``).

A sample is the tar members sharing a key: one image (``.jpg``, ``.png``, ``.webp`` ...) and, optionally, an
integer class ``.cls``; ``root/classes.txt`` (one name per line) names the classes. ``write_shards`` turns a
``folder`` into such shards (samples shuffled, so a shard mixes classes). ``load("webdataset", ...)`` decodes a
split into memory like ``folder`` does (centre square at ``size``); pretraining streams it (``ShardSet``: each
rank reads its share of the shards, each DataLoader worker its share of those, see ``workbench.train.batches``).
Needs the optional ``webdataset`` package (``pip install 'ssl-workbench[stream]'``).
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from workbench.data.base import ImageDataset, check_size, check_stream_options, register
from workbench.data.folder import DEFAULT_SIZE, list_folder, split_folder
from workbench.data.stream import StreamSource, decode_squares, register_stream, stack_squares

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff", "gif")


def webdataset_module():
    """The ``webdataset`` package, or an ImportError saying how to install it."""
    try:
        import webdataset
    except ImportError:
        raise ImportError("WebDataset shards need the webdataset package: pip install 'ssl-workbench[stream]' "
                          "(or pip install webdataset)") from None
    return webdataset


def count_samples(shard: str | Path) -> int:
    """Samples (keys with an image member) in one tar shard, from its headers alone (no image data is read)."""
    from webdataset.tariterators import base_plus_ext

    keys = set()
    with tarfile.open(shard, "r:") as tf:
        for member in tf:
            if member.isfile():
                key, ext = base_plus_ext(member.name)
                if key is not None and ext.lower() in IMAGE_KEYS:
                    keys.add(key)
    return len(keys)


def image_of(sample: dict[str, Any]) -> tuple[bytes | None, int]:
    """(image bytes, label) of a webdataset sample dict: its first image member and ``.cls`` (-1 without one)."""
    data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    cls = sample.get("cls")
    return data, int(cls.decode() if isinstance(cls, bytes) else cls) if cls is not None else -1


@dataclass
class ShardSet(StreamSource):
    """The tar shards of one split (sorted paths) and their sample counts; read in order (no random access)."""

    shards: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.random_access = False

    def __len__(self) -> int:
        return int(sum(self.counts))

    def samples(self, shards: Iterable[str] | None = None,
                on_error: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, bytes | None, int]]:
        """(name ``key@shard``, image bytes or None, label) of each sample of ``shards`` (default: all), in order,
        through ``webdataset.tarfile_to_samples``; an unreadable shard or member is passed to ``on_error(name,
        reason)`` (default: raised) and reading goes on with the next one."""
        wds = webdataset_module()

        def handler(exn: Exception) -> bool:
            if on_error is None:
                return False  # re-raise
            where = next((a for a in reversed(exn.args) if isinstance(a, str) and a.endswith(".tar")), "shard")
            on_error(str(where), f"{type(exn).__name__}: {exn}")
            return True

        urls = [{"url": u} for u in (self.shards if shards is None else shards)]
        for sample in wds.tarfile_to_samples(handler=handler)(iter(urls)):
            data, label = image_of(sample)
            yield f"{sample.get('__key__')}@{sample.get('__url__')}", data, label

    def subset(self, index: torch.Tensor | Sequence[int]) -> ImageDataset:
        """Samples at positions ``index`` of the shards read in order (reading stops after the last one wanted)."""
        wanted = sorted({int(i) for i in index})
        keep = set(wanted)
        names, datas, labels = [], [], []
        last = wanted[-1] if wanted else -1
        for pos, (name, data, label) in enumerate(self.samples()):
            if pos > last:
                break
            if pos in keep:
                names.append(name)
                datas.append(data if data is not None else b"")
                labels.append(label)
        decoded = decode_squares(datas, self.size, self.mode, self.num_workers or 1)
        return stack_squares(decoded, names, labels, self.class_names, self.name, self.split, self.skip_corrupt)


def _read_classes(root: Path) -> list[str]:
    path = root / "classes.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


@register_stream("webdataset")
def open_shards(split: str = "train", *, root: str | Path | None = None, size: int = DEFAULT_SIZE, channels: int = 3,
                skip_corrupt: bool = False, workers: int = 8, stream: Any = "auto", decode: str = "cpu") -> ShardSet:
    """The shards of ``split`` under ``root``: ``train/`` and ``val/`` (or ``test/``) folders of ``*.tar``, or the
    ``*.tar`` files of ``root`` itself (then there is no 'test' split)."""
    if root is None:
        raise ValueError("'webdataset' needs root=<folder of .tar shards> (got root=None); write shards from an image "
                         "folder with workbench.data.shards.write_shards(folder, out)")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"'webdataset': root={str(root)!r} is not a directory")
    check_size("webdataset", size)
    check_stream_options("webdataset", stream, decode, workers)
    if channels not in (1, 3):
        raise ValueError(f"'webdataset': channels={channels!r} is not supported; use 1 (grey) or 3 (RGB)")
    folder = split_folder(root, split)
    if folder is None:
        if split != "train":
            raise FileNotFoundError(f"'webdataset': {root} holds no val/ or test/ folder of shards for split {split!r}")
        folder = root
    shards = sorted(str(p) for p in folder.glob("*.tar"))
    if not shards:
        raise ValueError(f"'webdataset': no .tar shards in {folder}; point root= at the folder of shards (or of "
                         "train/ and val/ shard folders)")
    return ShardSet(name="webdataset", split=split, class_names=_read_classes(root), size=size, channels=channels,
                    skip_corrupt=skip_corrupt, workers=workers, decode=decode, shards=shards,
                    counts=[count_samples(s) for s in shards])


@register("webdataset")
def load_webdataset(split: str = "train", *, root: str | Path | None = None, size: int = DEFAULT_SIZE,
                    channels: int = 3, skip_corrupt: bool = False, workers: int = 8, stream: Any = "auto",
                    decode: str = "cpu") -> ImageDataset:
    """Every sample of ``split`` decoded into memory as uint8 [N, channels, size, size] (centre square, as
    ``folder``). ``stream`` and ``decode`` choose how pretraining reads the train split (``workbench.data.stream``)."""
    source = open_shards(split, root=root, size=size, channels=channels, skip_corrupt=skip_corrupt, workers=workers,
                         stream=stream, decode=decode)
    return source.subset(range(len(source)))


def write_shards(source: str | Path, out: str | Path, per_shard: int = 1000, seed: int = 0) -> list[str]:
    """Write the image folder ``source`` (``folder``'s layouts) as WebDataset shards under ``out``: the file bytes
    as they are (``<key>.<ext>``) with ``<key>.cls`` labels, samples in a seeded shuffle, ``per_shard`` per tar;
    ``train/`` and ``val/`` folders when ``source`` has split folders; ``classes.txt``. Returns the shard paths."""
    wds = webdataset_module()
    source, out = Path(source), Path(out)
    splits = [("train", "train"), ("test", "val")] if split_folder(source, "train") is not None else [("train", "")]
    written: list[str] = []
    class_names: list[str] = []
    for split, sub in splits:
        files, names, _ = list_folder(source, split)
        class_names = class_names or names
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        folder = out / sub if sub else out
        folder.mkdir(parents=True, exist_ok=True)
        with wds.ShardWriter(str(folder / "shard-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
            for n, i in enumerate(order):
                path, label = files[i]
                ext = path.suffix.lower().lstrip(".")
                sink.write({"__key__": f"{n:09d}", ext: path.read_bytes(), "cls": str(label).encode()})
        written += sorted(str(p) for p in folder.glob("*.tar"))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in class_names))
    return written

