"""evaluate() and `workbench evaluate` end to end on a tiny pretrained run: table, summary.json, cache, errors."""
from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

import workbench.trained.features as features_mod
from workbench.evaluation import evaluate
from workbench.trained import extract_features
from workbench.evaluation.cli_commands import add_subcommands, main as cli_main
from workbench.data.base import register
from workbench.runs import Run

from test_evaluate_features import colour_data


DATA = "eval-test-colours"


def _colours(split: str = "train", n: int = 256, size: int = 16, seed: int = 0, channels: int = 3):
    """A tiny data set (coloured squares, factors colour and pos_x), registered for this module so these tests do
    not depend on the other loaders; ``size``/``channels`` let the mismatch errors be exercised."""
    return colour_data(n, size=size, seed=seed + (0 if split == "train" else 1000), split=split, channels=channels)


@pytest.fixture(scope="module", autouse=True)
def _registered():
    """Register the tiny data set for this module only (other tests may list the known data sets)."""
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


def test_evaluate_run_writes_summary_and_table(tiny_run):
    table = evaluate(tiny_run, metrics="knn,linear,label_free,kmeans,factors", device="cpu",
                     options={"knn_ks": (10, 20), "alignment_images": 128})
    assert list(table.columns) == ["model", "name", "value", "split", "settings"]
    assert set(table["model"]) == {"pretrained", "random_init", "raw_pixels"}
    names = set(table[table["model"] == "pretrained"]["name"])
    assert {"knn_top1_k10", "knn_top1_k20", "linear_top1", "rankme", "std", "uniformity", "alignment",
            "kmeans_nmi", "kmeans_ari"} <= names
    assert any(n.startswith("factor_") for n in names)
    for side in ("pretrained", "random_init", "raw_pixels"):  # the same rows for every model
        assert set(table[table["model"] == side]["name"]) == names
    summary = tiny_run.summary
    lin = table[(table["model"] == "pretrained") & (table["name"] == "linear_top1")]["value"].item()
    assert summary["linear_top1"] == pytest.approx(lin)
    assert "raw_pixels/linear_top1" in summary and "random_init/knn_top1_k20" in summary
    assert summary["evaluation"][DATA]["checkpoint"] == "last"
    assert len(summary["evaluation"][DATA]["rows"]) == len(table)
    # raw pixels' dimension is C*H*W; the backbone's is its feature_dim
    raw = table[(table["model"] == "raw_pixels") & (table["name"] == "linear_top1")]["settings"].item()
    assert raw["dim"] == 3 * 16 * 16


def test_run_features_are_cached_and_invalidated_by_a_new_checkpoint(tiny_run, monkeypatch):
    test = _colours("test", n=64)
    calls = []
    real = features_mod.encode
    monkeypatch.setattr(features_mod, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    a = extract_features(tiny_run, test)
    b = extract_features(tiny_run, test)
    assert len(calls) == 1 and torch.equal(a.features, b.features)
    assert any(tiny_run.cache_dir.glob(f"features-last-pretrained-colours-test-*.pt"))
    ckpt = tiny_run.checkpoint_path("last")
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))  # "a new checkpoint"
    extract_features(tiny_run, test)
    assert len(calls) == 2


def test_transfer_and_mismatch_errors(tiny_run):
    with pytest.raises(ValueError, match=r"32x32 images but the backbone takes 16x16.*size=16"):
        evaluate(tiny_run, data=DATA, data_options={"size": 32, "n": 64}, metrics="knn", write_summary=False)
    with pytest.raises(ValueError, match=r"1-channel images but the backbone takes 3.*channels=3"):
        evaluate(tiny_run, data_options={"channels": 1}, metrics="knn", write_summary=False)
    table = evaluate(tiny_run, data=DATA, data_options={"n": 96, "seed": 5}, metrics="knn",
                     baselines=False, options={"knn_ks": (10,)})
    assert set(table["model"]) == {"pretrained"} and len(table) == 1
    # adapt=True converts grey 24 px data to what the backbone takes (RGB 16 px) instead of raising
    adapted = evaluate(tiny_run, data_options={"channels": 1, "size": 24, "n": 96}, metrics="knn", baselines=False,
                       adapt=True, write_summary=False, options={"knn_ks": (10,)})
    assert adapted["settings"].iloc[0]["adapted"] is True and 0.0 <= adapted["value"].iloc[0] <= 1.0
    with pytest.raises(FileNotFoundError, match=r"checkpoint 'best' not found.*one of \['last'"):
        evaluate(tiny_run, checkpoint="best")
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(tiny_run, metrics="knn,accuracy")


def test_cli_evaluate(tiny_run, capsys):
    parser = argparse.ArgumentParser(prog="workbench")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", str(tiny_run.path), "--metrics", "knn", "--json", "--no-baselines"])
    assert args.func(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"] for r in rows} == {"knn_top1_k10", "knn_top1_k20", "knn_top1_k200"}
    assert cli_main([str(tiny_run.path), "--checkpoint", "nope", "--metrics", "knn"]) == 2
    assert "checkpoint 'nope' not found" in capsys.readouterr().err
    # data options after the flags (--data-option) and right after RUN_DIR (positional)
    assert cli_main([str(tiny_run.path), "--metrics", "knn", "--json", "--no-baselines", "-o", "size=32"]) == 2
    assert "size=16" in capsys.readouterr().err
    assert cli_main([str(tiny_run.path), "n=64", "--metrics", "knn", "--json", "--no-baselines"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["settings"]["n_train"] == 64


def test_workbench_evaluate_is_callable(tiny_run):
    import workbench
    import workbench.evaluation.knn  # noqa: F401  (importing the subpackage must not shadow workbench.evaluate)

    table = workbench.evaluate(tiny_run, metrics="knn", baselines=False, write_summary=False,
                               options={"knn_ks": (10,)})
    assert table["name"].tolist() == ["knn_top1_k10"]
