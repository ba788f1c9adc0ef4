"""Fixtures shared by more than one test folder.

- ``blobs_data`` (tests/train, tests/methods): a tiny labelled in-memory data set for engine tests (no dependence
  on a loader's speed).
- ``data``, ``backbone``, ``tiny_run`` (tests/trained, tests/evaluation): the coloured squares of
  ``tests.colours``, a width-8 small CNN at initialisation, and one epoch of SimCLR on them. tests/trained/
  test_trained.py keeps its own module-level ``tiny_run`` (BYOL on ``shapes``), which takes precedence there.
"""
from __future__ import annotations

import os

import pytest
import torch

from tests.colours import DATA, _colours, colour_data
from workbench.data.base import register
from workbench.models import build_backbone
from workbench.runs import Run


def _blobs(split: str = "train", n: int = 128, size: int = 16, seed: int = 0):
    """4 classes of coloured squares at random places on noise: uint8 [n, 3, size, size]."""
    from workbench.data.base import ImageDataset

    g = torch.Generator().manual_seed(seed * 2 + (0 if split == "train" else 1))
    labels = torch.randint(0, 4, (n,), generator=g)
    colours = torch.tensor([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]], dtype=torch.float32)
    img = 60 + 30 * torch.randn(n, 3, size, size, generator=g)
    half = size // 2
    ys = torch.randint(0, size - half + 1, (n,), generator=g)
    xs = torch.randint(0, size - half + 1, (n,), generator=g)
    rows = torch.arange(size)
    inside = (((rows[None, :] >= ys[:, None]) & (rows[None, :] < ys[:, None] + half))[:, :, None]
              & ((rows[None, :] >= xs[:, None]) & (rows[None, :] < xs[:, None] + half))[:, None, :])
    img = torch.where(inside[:, None], colours[labels][:, :, None, None].expand(-1, -1, size, size), img)
    return ImageDataset(img.clamp(0, 255).to(torch.uint8), labels, ["red", "green", "blue", "yellow"],
                        "engine_blobs", split)


def pytest_configure(config) -> None:
    """Under pytest-xdist (``-n N``, on by default in pyproject.toml) each worker gets its share of the cores, so
    N workers each running torch on every core do not oversubscribe the machine; subprocesses (notebook kernels,
    CLI runs) inherit the setting through OMP_NUM_THREADS."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _cache_every_feature_pass(monkeypatch, tmp_path_factory):
    """Tests see the feature cache at work on tiny sets (in use only passes over ~2 s are stored) and never
    write to the user's cache folder."""
    from workbench.trained import features

    monkeypatch.setattr(features, "CACHE_MIN_SECONDS", 0.0)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "user-cache"))


@pytest.fixture
def blobs_data():
    """Registers the ``engine_blobs`` data set (options: n, size, seed) for the duration of a test."""
    from workbench.data import base

    base._REGISTRY["engine_blobs"] = _blobs
    yield "engine_blobs"
    base._REGISTRY.pop("engine_blobs", None)


# ---------------------------------------------------------------------------------------------- coloured squares
@pytest.fixture(scope="module")
def data():
    return colour_data(400, seed=0), colour_data(200, seed=1, split="test")


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("small_cnn", image_size=16, in_chans=3, width=8).eval()


@pytest.fixture(scope="module")
def _registered():
    """Register the tiny data set for the requesting module only (other tests may list the known data sets)."""
    from workbench.data import base

    register(DATA)(_colours)
    yield
    base._REGISTRY.pop(DATA, None)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, _registered) -> Run:
    """One epoch of SimCLR on 256 16-px images with a width-8 small CNN (a few seconds on a CPU)."""
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain

    out = tmp_path_factory.mktemp("runs")
    cfg = PretrainConfig(method="simclr", data=DataConfig(name=DATA, options={"n": 256}),
                         model=ModelConfig(backbone="small_cnn", options={"width": 8}),
                         method_options={"proj_hidden_dim": 64, "proj_output_dim": 32},
                         train=TrainConfig(epochs=1, batch_size=64, knn_every=0, progress="off", device="cpu"),
                         out=str(out))
    run = pretrain(cfg)
    assert run.status["status"] == "completed"
    return run
