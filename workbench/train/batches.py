"""Where the engine's batches come from: one object per data path, the same interface for both.

``batches.epoch(epoch, start, generator)`` yields, for each step ``start, ..., steps_per_epoch - 1`` of the epoch,
``(images, views)``: this rank's uint8 source images (in memory; None when streamed) and their ``ViewBatch``.
Everything random in a step is addressable by (seed, epoch, rank, step), so a resumed run sees what an
uninterrupted one would:

- the epoch's order is ``epoch_order(seed, epoch)``, a permutation shared by all ranks; global batch i is
  ``order[i*B:(i+1)*B]`` and rank r takes its r-th share (``rank_batch``: what a DistributedSampler does, in
  the in-memory path's order, so both paths train on the same images step by step);
- crop boxes and flips come from a CPU generator seeded ``mix_seed(seed, rank, step, 2)``
  (``workbench.augment.sample_geometry``), colour parameters from the engine's generator seeded
  ``mix_seed(seed, rank, step, 1)`` (``finish_views``), which the step goes on using (masks).

``MemoryBatches``: images on the device, indexed there, cropped batched (``generate_views``).
``StreamBatches``: DataLoader workers decode each image at full size (PIL) and take its crops
(``crop_images``), then the colour ops run batched on the device. A folder (``FileList``) is read map-style, a
step's indices sent to a worker; WebDataset shards (``ShardSet``) are split per rank (the epoch's shard order
sliced ``rank::world``) and per worker (``webdataset.split_by_worker``), each worker cycling through its shards
through a seeded shuffle buffer until the epoch has ``steps_per_epoch`` batches (the epoch is nominal, as
webdataset's ``with_epoch``), batch k coming from worker ``k % workers``. With ``decode="cuda"`` the workers only
read bytes and JPEGs are decoded on the GPU (``torchvision.io.decode_jpeg``); any other file, or a JPEG the GPU
decoder rejects, is decoded by PIL on the CPU (the explicit fallback, counted in ``cpu_decoded``).

Unreadable images on the streaming path are found when decoded, never by a second pass over the data: the
image's place in its batch is taken by the next readable image of that batch (so every rank keeps its batch
size). At the epoch's last step (or the run's, with ``max_steps``) the files found are gathered over the
ranks; without ``skip_corrupt`` that step raises one ``CorruptImagesError`` listing them all (an epoch reads
every file, so the list is complete unless the run resumed mid-epoch: then it holds those met since); with it
they are added to ``skipped`` and named in a warning. A run stopped mid-epoch warns about those found so far.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from itertools import count, islice
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from workbench.augment import AugmentConfig, ViewBatch, crop_images, finish_views, generate_views, sample_geometry
from workbench.config import ConfigError
from workbench.data.folder import CorruptImagesError
from workbench.data.shards import ShardSet, webdataset_module
from workbench.data.stream import FileList, StreamSource, decode_full
from workbench.train.setup import TrainingData, mix_seed

COLOUR, GEOMETRY = 1, 2  # mix_seed's last argument: the step's colour and geometry random streams
SHUFFLE_BUFFER = 1000  # samples in each shard-reading worker's shuffle buffer


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The epoch's order of ``n`` items: int64 [n] on the CPU, the same on every rank."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))


def rank_batch(order: torch.Tensor, i: int, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s share of global batch ``i`` (``batch_size`` = global B): ``order[i*B + r*b : i*B + (r+1)*b]``
    with b = B / world; the shares of a batch are disjoint and cover it."""
    b = batch_size // world
    return order[i * batch_size + rank * b:i * batch_size + (rank + 1) * b]


class MemoryBatches:
    """The in-memory path: uint8 images [N, C, H, W] on the device; a step indexes its batch there and draws its
    views batched (``generate_views``)."""

    def __init__(self, images: torch.Tensor, aug: AugmentConfig, seed: int, rank: int, world: int, batch_size: int,
                 steps_per_epoch: int):
        self.images, self.aug, self.seed, self.rank, self.world = images, aug, seed, rank, world
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch

    def epoch(self, epoch: int, start: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ViewBatch]]:
        """(images uint8 [b, C, H, W], views) for the steps ``start ..`` of ``epoch`` (see the module doc)."""
        order = epoch_order(self.seed, epoch, self.images.shape[0]).to(self.images.device)
        geometry = torch.Generator()
        for i in range(start, self.steps_per_epoch):
            step = epoch * self.steps_per_epoch + i
            images = self.images[rank_batch(order, i, self.batch_size, self.rank, self.world)]
            generator.manual_seed(mix_seed(self.seed, self.rank, step, COLOUR))
            geometry.manual_seed(mix_seed(self.seed, self.rank, step, GEOMETRY))
            yield images, generate_views(images, self.aug, generator, geometry)


# ----------------------------------------------------------------------------------------- worker side
def fill_unreadable(images: list[torch.Tensor | str]) -> list[torch.Tensor]:
    """Each unreadable entry (a reason string) replaced by the next readable image of the batch (cyclically)."""
    good = [k for k, im in enumerate(images) if not isinstance(im, str)]
    return [im if not isinstance(im, str) else images[next((g for g in good if g > k), good[0])]
            for k, im in enumerate(images)]


def crop_batch(images: list[torch.Tensor | str], names: list[str], geometry_seed: int,
               aug: AugmentConfig) -> dict[str, Any]:
    """Crops of every view of a batch of full-size images (uint8 [C, H_b, W_b], or a reason string where one could
    not be read): {"crops": [uint8 [B, C, s, s] per view], "geometry": per-view crop/flip params, "bad": [(name,
    reason)]}, the geometry drawn from a CPU generator seeded ``geometry_seed`` (``sample_geometry``). When no
    image of the batch is readable, "crops" is None (the main process raises: nothing can stand in for them)."""
    bad = [(n, im) for n, im in zip(names, images) if isinstance(im, str)]
    if len(bad) == len(images):
        return {"crops": None, "geometry": None, "bad": bad}
    images = fill_unreadable(images)
    heights = torch.tensor([im.shape[-2] for im in images])
    widths = torch.tensor([im.shape[-1] for im in images])
    g = torch.Generator().manual_seed(geometry_seed)
    geometry = sample_geometry(len(images), heights, widths, aug, g, images[0].device)
    return {"crops": crop_images(images, geometry, aug), "geometry": geometry, "bad": bad}


def read_batch(step: int, geometry_seed: int, items: list[tuple[str, Any]], aug: AugmentConfig, mode: str,
               raw: bool) -> dict[str, Any]:
    """One step's batch from (name, path or bytes) items, in a worker: decoded by PIL and cropped
    (``crop_batch``), or (``raw``, for decoding on the GPU) the file bytes as uint8 [n] tensors."""
    out: dict[str, Any] = {"step": step, "seed": geometry_seed, "names": [n for n, _ in items]}
    if raw:
        from torchvision.io import read_file

        data, bad = [], []
        for name, src in items:
            try:
                data.append(read_file(src) if isinstance(src, str) else torch.frombuffer(bytearray(src), dtype=torch.uint8))
            except Exception as e:  # a file that vanished or cannot be opened
                bad.append((name, f"{type(e).__name__}: {e}"))
                data.append(torch.zeros(0, dtype=torch.uint8))
        return {**out, "data": data, "bad": bad}
    images = [decode_full(src, mode) if src is not None else "no image in the sample" for _, src in items]
    return {**out, **crop_batch(images, out["names"], geometry_seed, aug)}


class _FolderSteps(Dataset):
    """Map-style: item (step, geometry seed, indices) -> ``read_batch`` of those files."""

    def __init__(self, files: FileList, aug: AugmentConfig, raw: bool):
        self.files, self.aug, self.raw = files, aug, raw

    def __getitem__(self, item: tuple[int, int, list[int]]) -> dict[str, Any]:
        step, seed, idx = item
        items = [(p, p) for p in (self.files.path(i) for i in idx)]
        return read_batch(step, seed, items, self.aug, self.files.mode, self.raw)


class _StepSampler(Sampler):
    """Yields (step, geometry seed, this rank's indices) for the steps ``start ..`` of the epoch set last."""

    def __init__(self, n: int, seed: int, rank: int, world: int, batch_size: int, steps_per_epoch: int):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.epoch, self.start = 0, 0

    def __iter__(self) -> Iterator[tuple[int, int, list[int]]]:
        order = epoch_order(self.seed, self.epoch, self.n)
        for i in range(self.start, self.steps_per_epoch):
            step = self.epoch * self.steps_per_epoch + i
            idx = rank_batch(order, i, self.batch_size, self.rank, self.world).tolist()
            yield step, mix_seed(self.seed, self.rank, step, GEOMETRY), idx

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start


class _ShardSteps(IterableDataset):
    """One epoch of a rank's batches from WebDataset shards (see the module doc); batch k of the epoch comes from
    worker k % workers, and batches before ``start`` are read but not decoded (``{"skip": k}``)."""

    def __init__(self, shards: ShardSet, aug: AugmentConfig, raw: bool, seed: int, rank: int, world: int,
                 batch_size: int, steps_per_epoch: int, epoch: int, start: int):
        self.shards, self.aug, self.raw, self.seed, self.rank, self.world = shards, aug, raw, seed, rank, world
        self.local = batch_size // world
        self.steps_per_epoch, self.epoch, self.start = steps_per_epoch, epoch, start

    def node_shards(self) -> list[str]:
        """This rank's shards this epoch: the epoch's shard order sliced ``rank::world`` (wds.split_by_node's rule,
        with the engine's rank)."""
        order = epoch_order(self.seed, self.epoch, len(self.shards.shards)).tolist()
        return list(islice((self.shards.shards[j] for j in order), self.rank, None, self.world))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        wds = webdataset_module()
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        mine = list(wds.split_by_worker(self.node_shards()))
        bad: list[tuple[str, str]] = []

        def endless() -> Iterator[tuple[str, Any, int]]:
            while True:
                n = 0
                for sample in self.shards.samples(mine, on_error=lambda name, why: bad.append((name, why))):
                    n += 1
                    yield sample
                if n == 0:
                    raise ValueError(f"no readable sample in shards {mine}: {bad[:5]}")

        rng_seed = mix_seed(self.seed, self.epoch, self.rank, worker, 3)
        stream = wds.shuffle(SHUFFLE_BUFFER, initial=min(SHUFFLE_BUFFER, 100), seed=rng_seed)(endless())
        for j in count():
            k = j * workers + worker
            if k >= self.steps_per_epoch:
                return
            items = [next(stream) for _ in range(self.local)]
            if k < self.start:
                yield {"skip": k}
                continue
            step = self.epoch * self.steps_per_epoch + k
            batch = read_batch(step, mix_seed(self.seed, self.rank, step, GEOMETRY),
                               [(name, data) for name, data, _ in items], self.aug, self.shards.mode, self.raw)
            batch["bad"] = batch["bad"] + bad
            bad.clear()
            yield batch


# ----------------------------------------------------------------------------------------- main side
class StreamBatches:
    """The streaming path over a ``FileList`` or ``ShardSet`` (see the module doc). ``skipped`` collects the
    unreadable files left out under ``skip_corrupt``; ``cpu_decoded`` counts images the GPU decoder passed to PIL."""

    def __init__(self, source: StreamSource, aug: AugmentConfig, seed: int, rank: int, world: int, batch_size: int,
                 steps_per_epoch: int, end_step: int, device: torch.device,
                 skipped: list[tuple[str, str]] | None = None):
        self.source, self.aug, self.seed, self.rank, self.world = source, aug, seed, rank, world
        self.batch_size, self.steps_per_epoch, self.end_step, self.device = batch_size, steps_per_epoch, end_step, device
        self.raw = source.decode == "cuda"
        if self.raw and device.type != "cuda":
            raise ConfigError(f"data.options.decode='cuda' decodes JPEGs on the training GPU, but this run trains on "
                              f"{device}; use decode='cpu' (PIL in the DataLoader workers)")
        self.skipped = skipped if skipped is not None else []
        self.cpu_decoded = 0
        self._found: dict[str, str] = {}
        self.workers = source.num_workers
        self._loader: DataLoader | None = None
        if isinstance(source, ShardSet):
            if len(source.shards) < world:
                raise ConfigError(f"{len(source.shards)} shard(s) for {world} processes: every rank needs at least one "
                                  "shard; write more, smaller shards (write_shards(..., per_shard=...))")
            self.workers = min(self.workers, len(source.shards[rank::world]))
        else:
            self._sampler = _StepSampler(len(source), seed, rank, world, batch_size, steps_per_epoch)
            self._loader = DataLoader(_FolderSteps(source, aug, self.raw), batch_size=None, sampler=self._sampler,
                                      num_workers=self.workers, persistent_workers=self.workers > 0,
                                      pin_memory=device.type == "cuda")

    def _batches(self, epoch: int, start: int) -> Iterator[dict[str, Any]]:
        if self._loader is not None:
            self._sampler.epoch, self._sampler.start = epoch, start
            return iter(self._loader)
        steps = _ShardSteps(self.source, self.aug, self.raw, self.seed, self.rank, self.world, self.batch_size,
                            self.steps_per_epoch, epoch, start)
        return iter(DataLoader(steps, batch_size=None, num_workers=self.workers, pin_memory=self.device.type == "cuda"))

    def epoch(self, epoch: int, start: int, generator: torch.Generator) -> Iterator[tuple[None, ViewBatch]]:
        """(None, views) for the steps ``start ..`` of ``epoch``; unreadable files reported as the module doc says."""
        finished = False
        try:
            for batch in self._batches(epoch, start):
                if "skip" in batch:
                    continue
                step = batch["step"]
                self._note(batch["bad"])
                crops, geometry = self._crops(batch)
                if step - epoch * self.steps_per_epoch == self.steps_per_epoch - 1 or step == self.end_step - 1:
                    self._report()
                    finished = True
                generator.manual_seed(mix_seed(self.seed, self.rank, step, COLOUR))
                with self._colour_threads():
                    views = finish_views(crops, geometry, self.aug, generator)
                yield None, views
        finally:
            if not finished and self._found:  # stopped mid-epoch: say what was found so far
                warnings.warn(f"{len(self._found)} unreadable image(s) met before the run stopped: "
                              f"{sorted(self._found)[:20]}", RuntimeWarning)

    def _crops(self, batch: dict[str, Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """The batch's crops and geometry on the device (decoded there first when the workers sent bytes)."""
        if self.raw:
            batch = crop_batch(self._decode_on_device(batch["data"]), batch["names"], batch["seed"], self.aug)
            self._note(batch["bad"])
            if batch["crops"] is not None:
                return batch["crops"], batch["geometry"]
        if batch["crops"] is None:
            raise CorruptImagesError(sorted(self._found.items()))  # a whole batch unreadable
        crops = [c.to(self.device, non_blocking=True) for c in batch["crops"]]
        geometry = [{k: v.to(self.device, non_blocking=True) for k, v in g.items()} for g in batch["geometry"]]
        return crops, geometry

    @contextlib.contextmanager
    def _colour_threads(self) -> Iterator[None]:
        """On a CPU, the colour ops use the cores the workers leave (at least one intra-op thread): with every core
        taken by a worker, a second OpenMP thread in this process stalls on each barrier (measured on 2 busy cores:
        72 views/s with 2 threads, 4,100 with 1)."""
        if self.device.type != "cpu" or self.workers == 0:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - self.workers)))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _note(self, bad: list[tuple[str, str]]) -> None:
        for name, why in bad:  # the first reason given for a file is kept
            self._found.setdefault(name, why)

    def _decode_on_device(self, data: list[torch.Tensor]) -> list[torch.Tensor | str]:
        """Full-size uint8 [C, H, W] images on the GPU from file bytes: JPEGs through ``decode_jpeg(device=...)``
        in one call (one by one if that call fails); the rest, and JPEGs the GPU rejects, by PIL on the CPU."""
        from torchvision.io import ImageReadMode, decode_jpeg

        mode = ImageReadMode.RGB if self.source.channels == 3 else ImageReadMode.GRAY
        images: list[torch.Tensor | str | None] = [None] * len(data)
        jpegs = [k for k, d in enumerate(data) if d.numel() > 3 and d[:3].tolist() == [0xFF, 0xD8, 0xFF]]
        try:
            if jpegs:
                for k, im in zip(jpegs, decode_jpeg([data[k] for k in jpegs], mode=mode, device=self.device)):
                    images[k] = im
        except RuntimeError:
            for k in jpegs:
                try:
                    images[k] = decode_jpeg(data[k], mode=mode, device=self.device)
                except RuntimeError:
                    images[k] = None
        for k, im in enumerate(images):
            if im is None:  # the CPU fallback: not a JPEG, or one the GPU decoder cannot read
                cpu = decode_full(data[k].numpy().tobytes(), self.source.mode) if data[k].numel() else "unreadable"
                images[k] = cpu.to(self.device) if isinstance(cpu, torch.Tensor) else cpu
                self.cpu_decoded += 1
        return images  # type: ignore[return-value]

    def _report(self) -> None:
        """End of an epoch (or of the run): gather the unreadable files over the ranks, then raise or record them."""
        found = sorted(self._found.items())
        if self.world > 1:
            every: list[Any] = [None] * self.world
            dist.all_gather_object(every, found)
            found = sorted({n: r for part in every for n, r in part}.items())
        self._found = {}
        if not found:
            return
        if not self.source.skip_corrupt:
            raise CorruptImagesError(found)
        known = {n for n, _ in self.skipped}
        new = [(n, r) for n, r in found if n not in known]
        if new:
            self.skipped.extend(new)
            warnings.warn(f"skip_corrupt: {len(new)} unreadable image(s) left out (their places taken by other "
                          f"images of their batches): {[n for n, _ in new[:20]]}", RuntimeWarning)


def make_batches(data: TrainingData, aug: AugmentConfig, seed: int, rank: int, world: int, batch_size: int,
                 steps_per_epoch: int, end_step: int, device: torch.device) -> MemoryBatches | StreamBatches:
    """The batch source of ``data``: streamed when ``prepare_data`` chose a stream, else in memory."""
    if data.stream is not None:
        return StreamBatches(data.stream, aug, seed, rank, world, batch_size, steps_per_epoch, end_step, device,
                             data.skipped.setdefault("train", []))
    return MemoryBatches(data.train_images, aug, seed, rank, world, batch_size, steps_per_epoch)
