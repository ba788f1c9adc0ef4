"""The streaming data path: split folders, file lists, the in-memory/streaming choice, views equal to the in-memory
path's for the same seed, crops from the full image, rank shares, exact resume, unreadable files, WebDataset shards
(per-rank and per-worker splitting), MAE / I-JEPA / DINO on streamed data, and memory over a 20k-JPEG folder."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from workbench.augment import make_preset
from workbench.config import ConfigError, apply_overrides
from workbench.data import load
from workbench.data.base import STREAM_ABOVE_BYTES
from workbench.data.folder import CorruptImagesError, list_folder
from workbench.data.stream import FileList, decode_full, open_source, open_stream, wants_stream
from workbench.runs import list_runs
from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain
from workbench.train.batches import MemoryBatches, StreamBatches, _ShardSteps, _StepSampler, epoch_order, rank_batch
from workbench.train.setup import prepare_data

CPU = torch.device("cpu")


def _folder(root: Path, per_class: int, size: tuple[int, int] = (16, 16), classes: tuple[str, ...] = ("a", "b"),
            fmt: str = "png", seed: int = 0) -> Path:
    """``per_class`` random images of ``size`` (h, w) in each class folder."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / c / f"{i:04d}.{fmt}")
    return root


def _stream_config(root: Path, out: Path, method: str = "simclr", name: str = "folder", **train) -> PretrainConfig:
    t = dict(epochs=2, batch_size=16, log_every=1, knn_every=0, progress="off", device="cpu")
    t.update(train)
    opts = {"proj_hidden_dim": 32, "proj_output_dim": 16} if method == "simclr" else {}
    backbone = ("vit_tiny", {"patch_size": 4, "depth": 2}) if method in ("mae", "ijepa") else ("small_cnn", {"width": 8})
    return PretrainConfig(method=method, method_options=opts, out=str(out),
                          data=DataConfig(name=name, root=str(root), image_size=16,
                                          options={"stream": True, "workers": 2}),
                          model=ModelConfig(backbone=backbone[0], options=backbone[1]), train=TrainConfig(**t))


# ---------------------------------------------------------------------------------------------- folders and lists
def test_split_folders_are_the_two_splits_with_train_classes(tmp_path):
    _folder(tmp_path / "d" / "train", 3, classes=("a", "b", "c"))
    _folder(tmp_path / "d" / "val", 2, classes=("b",))
    tr, te = load("folder", root=tmp_path / "d", size=8), load("folder", "test", root=tmp_path / "d", size=8)
    assert len(tr) == 9 and tr.class_names == ["a", "b", "c"]
    assert len(te) == 2 and te.class_names == ["a", "b", "c"] and te.labels.tolist() == [1, 1]  # b is train's 1
    with pytest.raises(ValueError, match="test_fraction"):
        load("folder", root=tmp_path / "d", test_fraction=0.2)
    _folder(tmp_path / "d" / "val", 1, classes=("z",))
    with pytest.raises(ValueError, match=r"\['z'\]"):
        load("folder", "test", root=tmp_path / "d")
    _folder(tmp_path / "e" / "train", 2)
    with pytest.raises(FileNotFoundError, match="no val/ or test/"):
        load("folder", "test", root=tmp_path / "e")
    _folder(tmp_path / "f" / "train", 2)  # a class called 'train' beside other classes is a class
    _folder(tmp_path / "f", 2, classes=("other",))
    assert load("folder", root=tmp_path / "f", size=8).class_names == ["other", "train"]


def test_file_list_is_packed_and_decodes_as_the_in_memory_loader(tmp_path):
    _folder(tmp_path, 5, size=(12, 20))
    src = open_source("folder", "train", root=tmp_path, size=8)
    files, names, _ = list_folder(tmp_path, "train")
    assert isinstance(src, FileList) and len(src) == 10 and src.class_names == names == ["a", "b"]
    assert [src.path(i) for i in range(10)] == [str(f) for f, _ in files]
    assert src.labels.tolist() == [lab for _, lab in files]
    # no Python object per file: one byte blob, one offset array, one label array
    assert src.blob.dtype == np.uint8 and src.offsets.dtype == np.int64 and src.offsets.shape == (11,)
    ref = load("folder", root=tmp_path, size=8)
    sub = src.subset([7, 2])
    assert torch.equal(sub.images, ref.images[[7, 2]]) and sub.labels.tolist() == ref.labels[[7, 2]].tolist()
    full = decode_full(src.path(0), "RGB")
    assert full.shape == (3, 12, 20) and full.dtype == torch.uint8


def test_stream_choice_is_automatic_by_decoded_size_with_an_override(tmp_path):
    n_fit = STREAM_ABOVE_BYTES // (3 * 224 * 224)
    assert not wants_stream("auto", n_fit, 3, 224) and wants_stream("auto", n_fit + 1, 3, 224)
    assert wants_stream(True, 10, 3, 8) and not wants_stream(False, 10 ** 9, 3, 224)
    _folder(tmp_path / "d", 20)
    assert open_stream("folder", "train", root=tmp_path / "d") is None  # 40 small images: in memory
    assert isinstance(open_stream("folder", "train", root=tmp_path / "d", stream=True), FileList)
    assert open_stream("shapes", "train") is None
    with pytest.raises(ValueError, match="cannot be streamed"):
        open_stream("shapes", "train", stream=True)
    for opts, field in (({"stream": "yes"}, "stream"), ({"decode": "gpu"}, "decode"), ({"workers": -1}, "workers")):
        with pytest.raises(ValueError, match=field):
            load("folder", root=tmp_path / "d", **opts)
    cfg = _stream_config(tmp_path / "d", tmp_path / "runs", batch_size=8)
    data = prepare_data(cfg, CPU, with_monitor=False)
    assert data.train_images is None and isinstance(data.stream, FileList) and data.num_train == 40
    assert data.image_size == 16 and data.in_chans == 3 and len(cfg.data.mean) == 3
    cfg.data.options["stream"] = "auto"
    assert prepare_data(cfg, CPU, with_monitor=False).train_images.shape == (40, 3, 16, 16)
    with pytest.raises(ConfigError, match="decode"):  # GPU decoding needs a CUDA run: no silent CPU fallback
        StreamBatches(replace(data.stream, decode="cuda"), make_preset("simclr", 16), 0, 0, 1, 8, 5, 10, CPU)


# ---------------------------------------------------------------------------------------------- same views
@pytest.mark.parametrize("preset", ["none", "simclr", "dino"])
def test_stream_and_memory_paths_give_the_same_views_for_the_same_seed(tmp_path, preset):
    """Images already at the view size: the same images per step, the same drawn parameters, the same views (exact
    for 'none'; otherwise the streamed crops are rounded to uint8 in the workers, so views agree to that rounding)."""
    _folder(tmp_path, 24, size=(32, 32))
    aug = make_preset(preset, 32, mean=(0.5,) * 3, std=(0.25,) * 3, **({"local_views": 2} if preset == "dino" else {}))
    memory = MemoryBatches(load("folder", root=tmp_path, size=32).images, aug, 3, 0, 1, 16, 3)
    stream = StreamBatches(open_source("folder", "train", root=tmp_path, size=32, workers=1), aug, 3, 0, 1, 16, 3,
                           6, CPU)
    pairs = list(zip(memory.epoch(1, 1, torch.Generator()), stream.epoch(1, 1, torch.Generator())))
    assert len(pairs) == 2  # steps 1 and 2 of epoch 1
    for (images, a), (none, b) in pairs:
        assert images.shape == (16, 3, 32, 32) and none is None and a.num_global == b.num_global
        assert [v.shape for v in a.views] == [v.shape for v in b.views]
        for pa, pb in zip(a.params, b.params):
            assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
        for va, vb in zip(a.views, b.views):
            diff = (va - vb).abs()
            if preset == "none":
                assert float(diff.max()) == 0.0
            else:  # 0.5/255 rounding, amplified by at most ~2x by jitter, over std 0.25: a few grey levels at most
                assert float(diff.max()) < 8 / 255 / 0.25 and float(diff.mean()) < 1 / 255 / 0.25


def test_streamed_crops_are_taken_from_the_full_image(tmp_path):
    """A wide image: the crop boxes range over its whole width (not a centre square), and each crop is torchvision's
    resized_crop of the full decoded image."""
    _folder(tmp_path, 8, size=(20, 60))
    aug = make_preset("mae", 16)
    src = open_source("folder", "train", root=tmp_path, size=16, workers=0)
    stream = StreamBatches(src, aug, 0, 0, 1, 16, 1, 1, CPU)
    (_, vb), = list(stream.epoch(0, 0, torch.Generator()))
    boxes = vb.params[0]["crop"]
    assert int((boxes[:, 1] + boxes[:, 3]).max()) <= 60 and int(boxes[:, 3].max()) > 20  # wider than the square
    assert bool(((boxes[:, 1] < 20) | (boxes[:, 1] + boxes[:, 3] > 40)).any())  # outside the centre square
    for k, i in enumerate(epoch_order(0, 0, 16).tolist()[:4]):
        full = decode_full(src.path(i), "RGB")
        ref = TF.resized_crop(full, *boxes[k].tolist(), [16, 16], antialias=True)
        ref = TF.horizontal_flip(ref) if vb.params[0]["flip"][k] else ref
        expect = (ref.float() / 255 - torch.tensor(aug.mean)[:, None, None]) / torch.tensor(aug.std)[:, None, None]
        torch.testing.assert_close(vb.views[0][k], expect, atol=1e-5, rtol=0)


def test_rank_shares_are_disjoint_and_cover_the_global_batch():
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    for i in range(2):
        shares = [rank_batch(order, i, 16, r, 4) for r in range(4)]
        assert torch.equal(torch.cat(shares), rank_batch(order, i, 16, 0, 1)) and all(len(s) == 4 for s in shares)
    samplers = [_StepSampler(40, 7, r, 2, 16, 2) for r in range(2)]
    for s in samplers:
        s.epoch, s.start = 3, 0
    steps = [list(s) for s in samplers]
    assert [x[0] for x in steps[0]] == [6, 7] and steps[0][0][1] != steps[1][0][1]  # step ids; per-rank seeds
    for (_, _, a), (_, _, b) in zip(*steps):
        assert not set(a) & set(b) and len(a) == len(b) == 8


# ---------------------------------------------------------------------------------------------- training
def test_resume_on_the_stream_path_gives_the_same_parameters(tmp_path):
    _folder(tmp_path / "d", 24)
    straight = pretrain(_stream_config(tmp_path / "d", tmp_path / "a", max_steps=5, deterministic=True))
    first = pretrain(_stream_config(tmp_path / "d", tmp_path / "b", max_steps=2, deterministic=True))
    assert first.status["step"] == 2
    resumed = pretrain(apply_overrides(_stream_config(tmp_path / "d", tmp_path / "b", deterministic=True),
                                       {"train.max_steps": 5}), resume=first.path)
    assert resumed.status["step"] == 5
    a, b = straight.load_checkpoint(), resumed.load_checkpoint()
    for k in a["method"]:
        torch.testing.assert_close(a["method"][k], b["method"][k], rtol=0, atol=1e-6)
    loss = [r["loss"] for r in straight.metrics() if r["kind"] == "step"]
    assert [r["loss"] for r in resumed.metrics() if r["kind"] == "step"] == pytest.approx(loss, abs=1e-5)


@pytest.mark.parametrize("method", ["mae", "ijepa"])
def test_masked_methods_train_on_streamed_data(tmp_path, method):
    _folder(tmp_path / "d", 8, size=(20, 24))
    run = pretrain(_stream_config(tmp_path / "d", tmp_path / "runs", method=method, epochs=1, batch_size=8))
    assert run.status["status"] == "completed" and run.status["step"] == 2
    assert all(np.isfinite(r["loss"]) for r in run.metrics() if r["kind"] == "step")


def test_unreadable_files_fail_the_epoch_in_one_error_or_are_skipped(tmp_path):
    _folder(tmp_path, 10)
    bad = sorted(str(tmp_path / "a" / f"zz{i}.png") for i in range(2))
    for p in bad:
        Path(p).write_bytes(b"not an image")
    aug = make_preset("simclr", 16)
    src = open_source("folder", "train", root=tmp_path, size=16, workers=2)  # 22 files, batch 4: 5 steps
    threads = torch.get_num_threads()
    got = []
    with pytest.raises(CorruptImagesError) as err:
        for _, vb in StreamBatches(src, aug, 0, 0, 1, 4, 5, 100, CPU).epoch(0, 0, torch.Generator()):
            got.append(vb)
    assert sorted(p for p, _ in err.value.files) == bad and len(got) == 4  # raised before the epoch's last step
    skipping = StreamBatches(replace(src, skip_corrupt=True), aug, 0, 0, 1, 4, 5, 100, CPU)
    with pytest.warns(RuntimeWarning, match="2 unreadable"):
        views = [vb for _, vb in skipping.epoch(0, 0, torch.Generator())]
    assert len(views) == 5 and all(v.views[0].shape[0] == 4 for v in views)  # every batch keeps its size
    assert sorted(p for p, _ in skipping.skipped) == bad
    assert torch.get_num_threads() == threads  # the colour stage's thread limit (cores the workers leave) is undone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(skipping.epoch(1, 0, torch.Generator()))  # found again next epoch: already recorded, no new warning
    assert len(skipping.skipped) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_jpeg_decoding_gives_the_cpu_path_views(tmp_path):
    """decode="cuda": workers send bytes, JPEGs are decoded by nvjpeg on the GPU, a PNG goes through the CPU
    fallback; the drawn parameters equal the CPU path's and the views agree to JPEG decoder differences."""
    _folder(tmp_path, 8, size=(40, 56), fmt="jpg")
    _folder(tmp_path, 1, size=(40, 56), classes=("c",), fmt="png")
    aug, cuda = make_preset("simclr", 32, mean=(0.5,) * 3, std=(0.25,) * 3), torch.device("cuda")
    src = open_source("folder", "train", root=tmp_path, size=32, workers=2)
    gpu = StreamBatches(replace(src, decode="cuda"), aug, 0, 0, 1, 17, 1, 1, cuda)
    cpu = StreamBatches(src, aug, 0, 0, 1, 17, 1, 1, cuda)
    (_, a), = list(gpu.epoch(0, 0, torch.Generator(device=cuda)))
    (_, b), = list(cpu.epoch(0, 0, torch.Generator(device=cuda)))
    assert gpu.cpu_decoded == 1 and all(v.is_cuda for v in a.views)
    for pa, pb in zip(a.params, b.params):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    for va, vb in zip(a.views, b.views):
        assert float((va - vb).abs().mean()) < 4 / 255 / 0.25


# ---------------------------------------------------------------------------------------------- webdataset
def _digest(images: torch.Tensor) -> list[str]:
    return sorted(hashlib.sha1(im.numpy().tobytes()).hexdigest() for im in images)


def test_webdataset_shards_split_per_rank_and_worker_resume_and_train(tmp_path):
    from workbench.cli import main
    from workbench.data.shards import open_shards, write_shards

    _folder(tmp_path / "src" / "train", 24, fmt="jpg")
    _folder(tmp_path / "src" / "val", 4, fmt="jpg")
    shards = write_shards(tmp_path / "src", tmp_path / "sh", per_shard=6)
    assert len(shards) == 8 + 2
    source = open_shards("train", root=tmp_path / "sh", size=16, workers=2)
    assert len(source) == 48 and source.counts == [6] * 8 and source.class_names == ["a", "b"]
    ref = load("folder", root=tmp_path / "src", size=16)
    sh = load("webdataset", root=tmp_path / "sh", size=16)
    assert _digest(sh.images) == _digest(ref.images) and sorted(sh.labels.tolist()) == sorted(ref.labels.tolist())
    # per node: the epoch's shard order sliced rank::world; per worker: webdataset.split_by_worker of that
    aug = make_preset("simclr", 16)
    nodes = [_ShardSteps(source, aug, False, 0, r, 2, 8, 3, 0, 0).node_shards() for r in range(2)]
    assert not set(nodes[0]) & set(nodes[1]) and sorted(nodes[0] + nodes[1]) == source.shards
    assert _ShardSteps(source, aug, False, 0, 0, 2, 8, 3, 1, 0).node_shards() != nodes[0]  # reshuffled per epoch
    batches = StreamBatches(source, aug, 0, 0, 1, 8, 6, 100, CPU)
    assert batches.workers == 2
    straight = [vb for _, vb in batches.epoch(0, 0, torch.Generator())]
    resumed = [vb for _, vb in batches.epoch(0, 4, torch.Generator())]
    assert len(straight) == 6 and len(resumed) == 2 and all(v.views[0].shape[0] == 8 for v in straight)
    for a, b in zip(straight[4:], resumed):
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))
    # the same folder as shards pretrains from the command line, with the kNN monitor on the val shards
    code = main(["pretrain", "--method", "simclr", "--data", "webdataset", "--epochs", "1", "--batch-size", "16",
                 "--out", str(tmp_path / "runs"), "--image-size", "16", f"data.root={tmp_path / 'sh'}",
                 "data.options.stream=true", "data.options.workers=2", "model.options.width=8", "train.progress=off",
                 "train.device=cpu", "method_options.proj_hidden_dim=32", "method_options.proj_output_dim=16"])
    assert code == 0
    (run,) = [r.path for r in list_runs(tmp_path / "runs")]
    epoch = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line][-1]
    assert '"knn_acc": 0' in epoch or '"knn_acc": 1' in epoch


# ---------------------------------------------------------------------------------------------- memory
def _rss_tree_mb(pid: int) -> float:
    """Proportional set size (MB) of ``pid`` and its children (shared pages split between them, not counted twice)."""
    total = 0.0
    pids = [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
        except FileNotFoundError:
            pass
    return total


@pytest.mark.slow
def test_memory_stays_bounded_over_an_epoch_of_20k_jpegs(tmp_path):
    """20,000 48-px JPEGs (decoded in memory they would take 138 MB; at 224 px 3 GB): an epoch streamed through 2
    workers, after a warm-up epoch, keeps the process tree's memory (PSS of the main process and its workers) within
    64 MB of what it was once the epoch started (measured: 0-42 MB). The preset is crop + flip only: memory, not
    colour, is tested."""
    rng = np.random.default_rng(0)
    tiles = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(64)]
    for c in range(4):
        (tmp_path / f"c{c}").mkdir()
    for i in range(20_000):
        tiles[i % 64].save(tmp_path / f"c{i % 4}" / f"{i:05d}.jpg", quality=80)
    # measured in a fresh interpreter: forked workers copy-on-write whatever heap the parent holds, and inside the
    # whole suite that heap (and so the growth) depends on every test run before, not on the number of images
    code = f"from tests.data.test_stream import _epoch_memory_mb; print(_epoch_memory_mb({str(tmp_path)!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    n, base, peak = json.loads(out.stdout.strip().splitlines()[-1])
    assert n == 78
    assert peak - base < 64, (base, peak)


def _epoch_memory_mb(root: str) -> str:
    """A warm-up epoch, then one streamed epoch over ``root`` with 2 workers: JSON [batches, tree memory once that
    epoch started, peak] (MB)."""
    src = open_source("folder", "train", root=root, size=48, workers=2)
    assert len(src) == 20_000 and src.blob.nbytes < 1_000_000  # the file list: under 1 MB
    batches = StreamBatches(src, make_preset("mae", 32), 0, 0, 1, 256, len(src) // 256, 10 ** 9, CPU)
    # a first epoch warms up what loads lazily once per process (measured: +70 MB on a cold first run, +7 MB on
    # the next), so the measured epoch shows only what grows with the images streamed
    sum(1 for _ in batches.epoch(0, 0, torch.Generator()))
    it = batches.epoch(1, 0, torch.Generator())
    next(it)  # workers started, first batches in flight
    base = _rss_tree_mb(os.getpid())
    peak, done = [base], threading.Event()

    def watch():
        while not done.is_set():
            peak.append(_rss_tree_mb(os.getpid()))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        n = 1 + sum(1 for _ in it)
    finally:
        done.set()
        watcher.join()
    return json.dumps([n, base, max(peak)])
