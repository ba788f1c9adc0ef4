"""Data sets as uint8 image tensors [N, C, H, W] with int64 labels, class names and (where known) factors.

``load(name, split, **options)``; ``known_datasets()`` lists the names: ``shapes`` (embedded,
procedural), ``fashion-mnist`` (IDX files; Debian's dataset-fashion-mnist), ``cifar10``, ``cifar100``,
``stl10`` (torchvision), ``folder`` (a directory of images) and ``webdataset`` (tar shards). Pretraining can
stream ``folder`` and ``webdataset`` instead of holding them in memory (``workbench.data.stream``).
"""
from workbench.data import fashion_mnist, folder, shapes, shards, stream, torchvision_sets  # noqa: F401  (register)
from workbench.data.base import ImageDataset, channel_stats, known_datasets, load, register, resize_uint8

__all__ = ["ImageDataset", "channel_stats", "known_datasets", "load", "register", "resize_uint8"]
