"""evaluate() and `workbench evaluate` end to end, on an in-memory backbone and on a tiny pretrained run: table,
baselines, summary.json, errors."""
from __future__ import annotations

import argparse
import json

import pytest

from tests.colours import DATA
from workbench.evaluation import evaluate
from workbench.evaluation.cli_commands import add_subcommands, main as cli_main


def test_evaluate_backbone_table_with_baselines(data, backbone):
    table = evaluate(backbone, data=data, metrics="knn,linear,kmeans,factors", baselines=True, device="cpu",
                     options={"knn_ks": (10,)})
    assert list(table.columns) == ["model", "name", "value", "split", "settings"]
    assert set(table["model"]) == {"pretrained", "random_init", "raw_pixels"}
    wide = table.pivot_table(index="name", columns="model", values="value")
    assert {"knn_top1_k10", "linear_top1", "kmeans_nmi", "kmeans_ari", "factor_colour_accuracy",
            "factor_pos_x_r2", "factor_label_accuracy"} <= set(wide.index)
    # the colour of the square is linearly readable from raw pixels
    assert wide.loc["linear_top1", "raw_pixels"] > 0.9
    assert wide.loc["factor_colour_accuracy", "raw_pixels"] == pytest.approx(wide.loc["linear_top1", "raw_pixels"])
    assert (table["split"] == "test").all()


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
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert {r["name"] for r in rows} == {"knn_top1_k10", "knn_top1_k20", "knn_top1_k200"}
    stages = [line.split("): ", 1)[1] for line in captured.err.splitlines() if "pretrained (1/1): " in line]
    assert stages == ["features", "knn", "done"]  # progress on stderr, the JSON rows alone on stdout
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
