"""Every notebook under notebooks/: committed clean, and executed through papermill with small parameters.

Adding a notebook = one entry in CASES: the small parameters CI runs it with (a dict, or a function of the
test's tmp folder returning one) and a check of what it recorded (its run's summary.json and files).
A notebook without an entry fails ``test_every_notebook_has_a_case``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import nbformat
import pytest

from workbench.experiments import notebook_parameters, read_parameters, run_notebook
from workbench.runs import Run, atomic_write_json

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@dataclasses.dataclass(frozen=True)
class Case:
    """How CI executes one notebook: small parameters (dict or ``f(tmp_path) -> dict``) and a check of its run."""
    parameters: dict[str, Any] | Callable[[Path], dict[str, Any]]
    check: Callable[[Run, Path], None]
    timeout: float = 600  # per cell, seconds


# ---- checks ---------------------------------------------------------------------------------------------------

def _chance(run: Run) -> float:
    """1 / number of classes of the data the run was executed on (read from its recorded parameters)."""
    from workbench.data import load
    p = read_parameters(run)["parameters"]
    test = load(p["data"], split="test", size=p["image_size"], n=64)  # the class list does not depend on n
    return 1.0 / len(test.class_names)


def check_quickstart(run: Run, tmp_path: Path) -> None:
    s = run.summary
    # the quickstart's lesson, at its default recipe (seeds 0-2, README's table; `benchmarks/lessons.py quickstart`
    # reruns it: kNN +0.05 to +0.21 over raw pixels and +0.18 to +0.33 over random init; linear +0.37 to +0.50 and
    # +0.20 to +0.33). CI runs
    # seed 0, the seed with the thinnest kNN margin, so kNN over raw pixels is asserted without the 0.05
    assert s["knn_acc"] > s["knn_acc_raw_pixels"], s
    assert s["knn_acc"] > s["knn_acc_random_init"] + 0.1, s
    assert s["linear_acc"] > s["linear_acc_raw_pixels"] + 0.2, s
    assert s["linear_acc"] > s["linear_acc_random_init"] + 0.1, s
    trained = run.training_run  # the notebook run links the run it trained, by name (links.json)
    assert trained is not None and trained.status["status"] == "completed"
    assert any(r.get("kind") == "epoch" for r in trained.metrics())
    pictures = {p.name for p in run.path.glob("*") if p.suffix in (".png", ".html")}
    for view in ("augmentations", "patches", "embedding", "training"):
        assert any(name.startswith(view) for name in pictures), (view, pictures)
    check_small_and_shown(run)


RUN_FOLDER_BOUND = 5 * 2 ** 20  # bytes without checkpoints (issue 14: measured 37 MB before, 109 MB with raw pixels)


def check_small_and_shown(run: Run) -> None:
    """A notebook run folder stays small and its executed notebook shows every widget as a picture: no widget
    state, one shared plotly.js for its HTML pictures, an image/png output in every widget cell."""
    # feature caches are left out: what they hold depends on the machine's speed (a pass quicker than
    # CACHE_MIN_SECONDS is never stored, a slower one is, e.g. on a loaded CI machine); raw pixels never are
    files = [p for p in run.path.rglob("*") if p.is_file() and "checkpoints" not in p.parts]
    assert not [p for p in files if "cache" in p.parts and "raw_pixels" in p.name], files
    sizes = {p: p.stat().st_size for p in files if "cache" not in p.parts}
    listing = "\n".join(f"{n:>10}  {p.relative_to(run.path)}" for p, n in sorted(sizes.items(), key=lambda t: -t[1]))
    assert sum(sizes.values()) < RUN_FOLDER_BOUND, listing
    assert [p.name for p in sizes if p.name == "plotly.min.js"] == ["plotly.min.js"]  # one copy, shared
    for page in run.path.glob("*.html"):
        assert sizes[page] < 2 ** 20 and 'src="plotly.min.js"' in page.read_text()
    executed = nbformat.read(str(run.path / "notebook.ipynb"), as_version=4)
    widget_cells = [c for c in executed.cells if c.cell_type == "code" and "widgets." in c.source]
    assert widget_cells
    for cell in widget_cells:  # each shows its picture, readable without a kernel
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source


def check_pretrain(run: Run, tmp_path: Path) -> None:
    s = run.summary
    chance = _chance(run)
    assert s["knn_acc"] > 1.2 * chance and s["linear_acc"] > 1.2 * chance, s  # above chance
    assert {"knn_acc_random_init", "knn_acc_raw_pixels", "linear_acc_random_init"} <= set(s), s  # the baselines
    table = (run.path / "evaluation.csv").read_text()
    assert "knn_top1_k20" in table and "linear_top1" in table
    assert read_parameters(run)["parameters"]["method"] == "simclr"


def _recipe_sweep_parameters(tmp_path: Path) -> dict[str, Any]:
    """One knob with one alternative on one seed: two pretrain.ipynb runs of a few steps each, under a fixed
    points_dir (the paired rule is the same per seed; the 2-seed sweep is the notebook's own measurement)."""
    return {"base": {"method": "simclr", "backbone": "small_cnn", "backbone_options": SMALL_CNN,
                     "method_options": SMALL_HEAD, "data": "shapes", "image_size": 32, "n_images": 128, "epochs": 1,
                     "batch_size": 64, "optimizer": "adamw", "lr": 0.002, "warmup_epochs": 0.2, "precision": "fast",
                     "metrics": "knn,linear"},
            "variations": {"lr": [0.004]}, "seeds": [0], "points_dir": str(tmp_path / "points")}


def check_recipe_sweep(run: Run, tmp_path: Path) -> None:
    """Every point ran on every seed, the default once, and each verdict follows the paired per-seed rule."""
    import pandas as pd

    p = _recipe_sweep_parameters(tmp_path)
    s, seeds, margin = run.summary, p["seeds"], 0.01
    alternatives = sum(len(v) for v in p["variations"].values())
    assert s["sweep_points"] == 1 + alternatives and s["sweep_runs"] == (1 + alternatives) * len(seeds), s
    points = pd.read_csv(run.path / "points.csv", dtype={"value": str})
    assert len(points) == len(p["variations"]) * len(seeds) + alternatives * len(seeds)
    assert points.run.nunique() == s["sweep_runs"] and (points.status == "completed").all()
    for path in points.run.unique():  # each point is a recorded pretrain.ipynb run under points_dir
        point = Run(path)
        assert point.path.parent == tmp_path / "points" and point.summary["knn_acc"] > 0
    assert 0 < s["default_knn_acc"] <= 1 and 0 < s["default_linear_acc"] <= 1
    for knob, values in p["variations"].items():  # (plain values here: the table shows them with str())
        default = points[(points.knob == knob) & (points.value == str(p["base"][knob]))].set_index("seed")
        for value in values:
            mine = points[(points.knob == knob) & (points.value == str(value))].set_index("seed")
            change = mine.knn_acc - default.knn_acc.loc[mine.index]
            want = "better" if (change > margin).all() else "worse" if (change < -margin).all() else "within noise"
            assert s["verdicts"][f"{knob}={value}"]["knn_acc"] == want, (s, change)
            assert abs(s["changes_vs_default_knn"][f"{knob}={value}"] - change.mean()) < 1e-9
    assert (run.path / "recipe_sweep.csv").exists() and (run.path / "recipe_sweep.html").exists()


def _fake_runs(tmp_path: Path) -> dict[str, Any]:
    """Three recorded pretrain runs with curves and summaries (no training: the notebook only reads them)."""
    root = tmp_path / "runs"
    for i, (method, acc) in enumerate([("simclr", 0.61), ("byol", 0.74), ("vicreg", 0.52)]):
        run = Run.create(root, method, "shapes", name=f"run-{i}-{method}")
        atomic_write_json(run.path / "parameters.json", {"notebook": "pretrain", "parameters": {
            "method": method, "data": "shapes", "backbone": "small_cnn", "epochs": 2}})
        for step in range(5):
            run.log_metrics({"kind": "step", "step": step, "epoch": step // 3, "loss": 4.0 - step * (i + 1) * 0.1})
        run.update_summary({"knn_acc": acc})
        run.set_status("completed")
    return {"runs_dir": str(root), "metric": "knn_acc"}


def check_compare_runs(run: Run, tmp_path: Path) -> None:
    s = run.summary
    assert s["n_runs"] == 3, s  # the three given runs; the comparing notebook's own run is left out
    assert s["best_run"] == "run-1-byol" and s["best_knn_acc"] == pytest.approx(0.74)
    board = (run.path / "leaderboard.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in board[1:]] == ["run-1-byol", "run-0-simclr", "run-2-vicreg"]
    assert (run.path / "curves_loss.html").exists()


# ---- tutorials: each checks the one result its notebook teaches (margins measured, see each check) ------------

def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) < 1e30


def _pictures(run: Run) -> set[str]:
    return {p.name for p in run.path.glob("*") if p.suffix in (".png", ".html")}


def check_tutorial_augmentations(run: Run, tmp_path: Path) -> None:
    s = run.summary
    # without colour jitter, colour is far more decodable (the background tint: a linear probe) and it dominates
    # which images are neighbours (the shape's colour and the tint: weighted kNN with the factor as the label);
    # the shape's saturated colour stays linearly decodable from any features at this budget (~0.99), not checked
    assert s["background_colour_acc_without_jitter"] > s["background_colour_acc_with_jitter"] + COLOUR_PROBE_GAP, s
    assert s["background_colour_knn_without_jitter"] > s["background_colour_knn_with_jitter"] + TINT_KNN_GAP, s
    assert s["colour_knn_without_jitter"] > s["colour_knn_with_jitter"] + COLOUR_KNN_GAP, s
    assert s["colour_acc_without_jitter"] > 2 * s["colour_chance"], s
    assert all(_finite(s[k]) for k in ("shape_acc_with_jitter", "shape_acc_without_jitter", "shape_acc_random_init"))
    assert {"augmentations_with_colour_jitter.png", "augmentations_without_colour_jitter.png",
            "factor_probes.html"} <= _pictures(run)
    assert "colour" in (run.path / "factor_probes.csv").read_text()


def check_tutorial_contrastive(run: Run, tmp_path: Path) -> None:
    s = run.summary
    assert s["nt_xent_max_abs_diff"] < 1e-5 and s["nt_xent_grad_max_abs_diff"] < 1e-5, s  # same loss as the library
    assert s["loss_aligned_pairs"] < s["loss_random_pairs"] - 1.0, s
    assert abs(s["loss_collapsed"] - s["log_2b_minus_1"]) < 1e-4, s  # collapse scores chance, not a low loss
    # the short SimCLR run learned something: kNN well above chance. It is NOT asserted to beat its random init:
    # at these sizes the gain is small and seed-dependent (measured +0.053 / +0.005, seeds 0 / 1, width 32)
    assert s["knn_acc"] > 1.5 * _chance(run), s
    assert _finite(s["knn_gain_over_random_init"]) and _finite(s["knn_acc_raw_pixels"]), s
    assert run.training_run is not None and "training.html" in _pictures(run)
    # the knob runs: the main run's point plus one more temperature and one more batch size, each a kNN accuracy
    assert set(s["knob_knn_by_temperature"]) == {"0.2", "0.5"} and set(s["knob_knn_by_batch_size"]) == {"64", "128"}, s
    assert all(0.0 <= v <= 1.0 for d in (s["knob_knn_by_temperature"], s["knob_knn_by_batch_size"]) for v in d.values())
    assert s["knob_knn_by_temperature"]["0.2"] == s["knob_knn_by_batch_size"]["64"], s  # the same (main) run
    assert "knobs.html" in _pictures(run)


def check_tutorial_collapse(run: Run, tmp_path: Path) -> None:
    s = run.summary
    assert s["rankme_collapsed"] < RANKME_RATIO * s["rankme_working"], s  # without stop-gradient the rank falls
    assert s["loss_collapsed"] < s["loss_working"], s  # ... while the loss looks better
    assert s["collapse_warning_collapsed"] is True, s  # and the monitor's collapse rule fires
    # the held-out spectrum shows it: the collapsed embedding's top singular value holds more of the spread
    assert 0.0 < s["spectrum_top1_working"] < s["spectrum_top1_collapsed"] <= 1.0, s
    assert {"collapse_curves.html", "training_collapsing.html"} <= _pictures(run)


def check_tutorial_mae(run: Run, tmp_path: Path) -> None:
    s = run.summary
    assert s["heldout_loss"] < 0.5 * s["heldout_loss_at_init"], s
    assert s["heldout_loss"] < MAE_BASELINE_RATIO * s["heldout_mean_patch_loss"], s  # beats the best constant guess
    assert s["heldout_masked_patches"] > 0
    assert {"masks.png", "reconstructions.png", "reconstructions_at_init.png"} <= _pictures(run)


def check_tutorial_dino(run: Run, tmp_path: Path) -> None:
    s = run.summary
    keys = ("attention_share_trained", "attention_share_random_init", "attention_share_uniform",
            "attention_share_best_head_trained", "images_above_uniform_trained", "attention_share_heldout_head_trained",
            "attention_share_heldout_head_random_init", "attention_share_uniform_heldout")
    assert all(_finite(s[k]) and 0.0 <= s[k] <= 1.0 for k in keys), s
    # the object covers part of the image, and an untrained ViT spreads attention about uniformly over it
    assert 0.05 < s["attention_share_uniform"] < 0.5, s
    assert abs(s["attention_share_random_init"] - s["attention_share_uniform"]) < 0.03, s
    # after the short DINO run, more of the CLS attention falls on the object than uniform attention would put
    # there at this size; at the notebook's defaults (8x8 grid) benchmarks/lessons.py dino measured, on seeds 0-2,
    # a held-out head at 1.91x / 2.33x / 2.40x the uniform share and the mean over heads at 1.46x / 1.04x / 1.58x,
    # which the notebook's text reports
    assert s["attention_share_trained"] > s["attention_share_uniform"] + 0.005, s
    assert s["attention_share_heldout_head_trained"] > s["attention_share_uniform_heldout"] + 0.005, s
    # the ablation: every variant's target entropy lies in [0, log K] and its KL is >= 0; removing the sharpening
    # pushes the targets towards uniform, so their entropy ends above the full method's
    variants = ("DINO", "no centring", "no sharpening")
    for v in variants:
        assert 0.0 <= s[f"ablation_target_entropy/{v}"] <= s["log_k"] + 1e-4, (v, s)
        assert s[f"ablation_kl/{v}"] > -1e-4 and 0.0 <= s[f"ablation_attention_share/{v}"] <= 1.0, (v, s)
    assert s["ablation_target_entropy/no sharpening"] > s["ablation_target_entropy/DINO"], s
    # and removing the centring pushes them towards one-hot: entropy below the full method's
    assert s["ablation_target_entropy/no centring"] < s["ablation_target_entropy/DINO"], s
    assert {"attention.png", "ablation.html"} <= set(_pictures(run)), _pictures(run)


def check_tutorial_label_free(run: Run, tmp_path: Path) -> None:
    s = run.summary
    names = [r["name"] for r in read_parameters(run)["parameters"]["sweep_runs"]]
    assert s["n_runs"] == len(names) and s["runs"] == names, s
    for name in names:  # every run of the sweep was scored, with and without labels
        assert _finite(s[f"rankme/{name}"]) and s[f"rankme/{name}"] >= 1.0, (name, s)
        assert _finite(s[f"knn_acc/{name}"]) and 0.0 <= s[f"knn_acc/{name}"] <= 1.0, (name, s)
    assert _finite(s["spearman_rankme_knn"]) and -1.0 <= s["spearman_rankme_knn"] <= 1.0, s
    collapsed = [n for n in names if "without stop-gradient" in n]
    for name in collapsed:  # the deliberately collapsing run has the lowest rank of the sweep
        assert s[f"rankme/{name}"] == min(s[f"rankme/{n}"] for n in names), s
    for name in names:  # the new label-free columns were measured for every run
        assert _finite(s[f"w2_uniformity/{name}"]) and 0.0 <= s[f"w2_uniformity/{name}"] <= 2 ** 0.5 + 1e-6, s
        assert _finite(s[f"lidar/{name}"]) and s[f"lidar/{name}"] >= 1.0, s
    # section 3's claim, read back: with half the dimensions collapsed the classic uniformity moves by < 0.1,
    # W2 by > 0.5, and W2 grows with every further dimension lost
    lost, unif, w2 = s["collapse_lost_fraction"], s["collapse_uniformity"], s["collapse_w2_uniformity"]
    half = lost.index(0.5)
    assert abs(unif[half] - unif[0]) < 0.1 and w2[half] - w2[0] > 0.5, s
    assert all(b > a for a, b in zip(w2, w2[1:])), s
    assert {"rankme_vs_knn.html", "dimensional_collapse.html"} <= set(_pictures(run))


def check_tutorial_semi_supervised(run: Run, tmp_path: Path) -> None:
    s = run.summary
    assert s["num_labeled_1pct"] < s["num_labeled_10pct"], s
    for key in ("finetune_top1_1pct_pretrained", "finetune_top1_1pct_scratch", "finetune_top1_10pct_pretrained",
                "finetune_top1_10pct_scratch", "distill_top1", "distill_teacher_top1"):
        assert _finite(s[key]) and 0.0 <= s[key] <= 1.0, (key, s)
    # ten times the labels: far better, from either start (measured 0.55-0.67 vs 0.20-0.29)
    for start in ("pretrained", "scratch"):
        assert s[f"finetune_top1_10pct_{start}"] > s[f"finetune_top1_1pct_{start}"] + 0.15, s
    # the student, trained on the teacher's soft labels only, ends near its teacher (measured -0.026 to +0.024)
    assert abs(s["distill_top1"] - s["distill_teacher_top1"]) < 0.06, s
    # pretrained vs from scratch is recorded, not asserted, at this 2-epoch size; at the notebook's defaults
    # `python benchmarks/lessons.py semi_supervised` measured +0.089 / +0.091 / +0.119 at 1% and +0.206 / +0.140 /
    # +0.028 at 10% (seeds 0-2)
    assert _finite(s["finetune_gain_1pct"]) and _finite(s["finetune_gain_10pct"]), s
    assert "semi_supervised.html" in _pictures(run)


def check_tutorial_matryoshka(run: Run, tmp_path: Path) -> None:
    s = run.summary
    dims = s["dims"]
    assert dims == CASES["tutorial_08_matryoshka.ipynb"].parameters["matryoshka_dims"], s
    for key in ("knn_plain", "knn_matryoshka", "knn_random_init", "linear_plain", "linear_matryoshka",
                "linear_random_init"):
        assert len(s[key]) == len(dims) and all(_finite(v) and 0.0 <= v <= 1.0 for v in s[key]), (key, s)
    for key in ("rankme_plain", "rankme_matryoshka"):  # RankMe of the first m dims cannot exceed m
        assert all(_finite(r) and 1.0 <= r <= m + 1e-6 for r, m in zip(s[key], dims)), (key, s)
    # what the notebook prints is what it recorded
    assert s["knn_gain_smallest"] == pytest.approx(s["knn_matryoshka"][0] - s["knn_plain"][0]), s
    assert s["knn_gain_full"] == pytest.approx(s["knn_matryoshka"][-1] - s["knn_plain"][-1]), s
    table = (run.path / "prefix_scores.csv").read_text().splitlines()
    assert len(table) == 1 + 3 * len(dims)  # three models, one row per size each
    assert "accuracy_vs_dims.html" in _pictures(run)


def check_tutorial_hard_negatives(run: Run, tmp_path: Path) -> None:
    s = run.summary
    p = CASES["tutorial_11_hard_negatives.ipynb"].parameters
    assert s["runs"] == len(p["batch_sizes"]) * len(p["seeds"]) * 3 and s["pairs"] == s["runs"] // 3, s
    # MoCHi's synthetic points (random unit vectors, fixed seed): mixes of two hard keys are harder than the keys,
    # mixes with the anchor harder still (measured 0.220 / 0.270 / 0.495)
    assert s["cos_hardest_keys"] < s["cos_mixes"] < s["cos_mixes_with_anchor"], s
    for loss in ("ntxent", "dcl", "mochi_queue"):
        for b in p["batch_sizes"]:
            assert _finite(s[f"knn_{loss}_b{b}"]) and 0.0 <= s[f"knn_{loss}_b{b}"] <= 1.0, (loss, b, s)
    # which loss wins is recorded, not asserted: at the default sizes no loss reliably beat NT-Xent (seeds 0-2)
    assert 0 <= s["wins_dcl_over_ntxent"] <= s["pairs"] and 0 <= s["wins_mochi_queue_over_ntxent"] <= s["pairs"], s
    assert "knn_by_batch_size.html" in _pictures(run)


def check_frozen_backbones(run: Run, tmp_path: Path) -> None:
    s = run.summary
    # offline: the "pretrained" backbone is the architecture's random init, written to a local file and loaded back
    assert s["weights"] == "random" and s["frozen"] == "timm:vit_small_patch14_dinov2.lvd142m", s
    source = s["frozen_source"]  # "<spec> (<weights file>)"
    assert source.startswith(s["frozen"] + " (") and source.endswith("backbone.safetensors)"), s
    assert Path(source[len(s["frozen"]) + 2:-1]).exists() and s["frozen_image_size"] == 56, s
    for key in ("knn_acc", "linear_acc", "knn_acc_random_init", "knn_acc_raw_pixels", "frozen_knn_acc",
                "frozen_linear_acc"):
        assert _finite(s[key]) and 0.0 <= s[key] <= 1.0, (key, s)
    assert s["knn_acc"] > 1.2 * _chance(run), s  # the backbone trained here learned something
    header = (run.path / "comparison.csv").read_text().splitlines()[0]
    assert "frozen timm:vit_small_patch14_dinov2.lvd142m" in header and "trained here (simclr)" in header
    assert {"embedding_frozen.html", "embedding_here.html", "attention_frozen.png"} <= _pictures(run)


def check_tutorial_random_teachers(run: Run, tmp_path: Path) -> None:
    s = run.summary
    assert s["same_teacher"] is True, s  # one seed, one random teacher for both runs
    for key in ("knn_top1_k20_teacher", "linear_top1_teacher", "knn_top1_k20_student_with_augmentation",
                "linear_top1_student_with_augmentation"):
        assert _finite(s[key]) and 0.0 <= s[key] <= 1.0, (key, s)
    # without augmentation the student beats its own random teacher: mean of kNN and linear gains measured
    # +0.040 / +0.068 / +0.023 (seeds 0-2, these sizes; tests/methods/test_random_teacher.py); with augmentation
    # the outcome at this budget is mixed (seed 0: kNN +0.022, linear -0.078) and only recorded
    gain = (s["knn_top1_k20_gain_without_augmentation"] + s["linear_top1_gain_without_augmentation"]) / 2
    assert gain > 0.01, s
    assert "student_vs_teacher.html" in _pictures(run)


def check_tutorial_latent_vs_pixel(run: Run, tmp_path: Path) -> None:
    s = run.summary
    p = CASES["tutorial_09_latent_vs_pixel.ipynb"].parameters
    assert s["methods"] == p["methods"] == ["mae", "ijepa", "data2vec2", "nepa"], s
    dim = 192  # vit_tiny's width: RankMe of D-dim features lies in [1, D]
    for name in [*p["methods"], "random_init"]:
        for metric in ("knn", "linear"):
            assert _finite(s[f"{metric}_{name}"]) and 0.0 <= s[f"{metric}_{name}"] <= 1.0, (metric, name, s)
        assert _finite(s[f"rankme_{name}"]) and 1.0 <= s[f"rankme_{name}"] <= dim + 1e-6, (name, s)
    assert _finite(s["loss_mae"]) and s["loss_mae"] > 0, s  # MAE's masked-patch error on the shown images
    for name in ("ijepa", "data2vec2", "nepa"):  # each latent method's per-patch cosine and its constant guess
        for key in ("mean_cosine", "constant_cosine"):
            assert _finite(s[f"{key}_{name}"]) and -1.0 - 1e-6 <= s[f"{key}_{name}"] <= 1.0 + 1e-6, (key, name, s)
    # the written conclusion reads the same numbers: best latent method minus MAE, per probe
    for metric in ("knn", "linear"):
        best = s[f"best_latent_{metric}"]
        assert s[f"{metric}_{best}"] == max(s[f"{metric}_{m}"] for m in ("ijepa", "data2vec2", "nepa")), s
        assert s[f"best_latent_minus_mae_{metric}"] == pytest.approx(s[f"{metric}_{best}"] - s[f"{metric}_mae"]), s
    assert set(s["above_random_init"]) <= set(p["methods"]), s
    table = (run.path / "scores.csv").read_text().splitlines()
    assert table[0].startswith("model,target,knn,linear,rankme") and len(table) == 1 + 5, table
    assert {"scores.html", "predictions_mae.png", "predictions_ijepa.png", "predictions_data2vec2.png",
            "predictions_nepa.png"} <= _pictures(run)


# measured margins (see the report of each tutorial's CI runs)
COLOUR_PROBE_GAP = 0.08  # measured 0.135 / 0.177 (seeds 0 / 1)
TINT_KNN_GAP = 0.2  # measured 0.42 / 0.40
COLOUR_KNN_GAP = 0.03  # measured 0.063 / 0.077
RANKME_RATIO = 0.5  # measured 0.26 / 0.32 (seeds 0 / 1)
MAE_BASELINE_RATIO = 0.9  # measured 0.79 / 0.80 at 20 steps (CI runs 30)


SMALL_CNN = {"width": 16}
SMALL_HEAD = {"proj_hidden_dim": 512, "proj_output_dim": 128}

CASES: dict[str, Case] = {
    # the engine's CPU test sizes (tests/methods/test_training.py): small CNN at width 32, AdamW, 2000 images, 2 epochs
    # the default recipe (its lesson is asserted), without the UMAP view
    "00_quickstart.ipynb": Case({"umap": "off"}, check_quickstart),
    "pretrain.ipynb": Case({"epochs": 1, "n_images": 1000, "batch_size": 128, "metrics": "knn,linear",
                            "backbone_options": SMALL_CNN, "method_options": SMALL_HEAD}, check_pretrain),
    "compare_runs.ipynb": Case(_fake_runs, check_compare_runs),
    "recipe_sweep.ipynb": Case(_recipe_sweep_parameters, check_recipe_sweep),
    # offline: a 2-block DINOv2 ViT-S at random init through a local file, beside a small CNN trained for 1 epoch
    "frozen_backbones.ipynb": Case({"frozen": "timm:vit_small_patch14_dinov2.lvd142m", "frozen_options": {"depth": 2},
                                    "weights": "random", "frozen_image_size": 56, "n_images": 400, "epochs": 1,
                                    "batch_size": 64, "backbone_options": SMALL_CNN, "umap": "off"},
                                   check_frozen_backbones),
    # tutorials: CI sizes run each in about a minute on a 2-core CPU
    "tutorial_01_augmentations.ipynb": Case({"epochs": 3, "n_images": 2000, "n_eval": 1000},
                                            check_tutorial_augmentations),
    "tutorial_02_contrastive.ipynb": Case({"epochs": 2, "n_images": 2000, "n_eval": 1000, "knob_temperatures": [0.5],
                                           "knob_batch_sizes": [128]}, check_tutorial_contrastive),
    "tutorial_03_collapse.ipynb": Case({"epochs": 2, "n_images": 2000,
                                        "variants": {"SimSiam": {}, "no stop-gradient": {"stop_gradient": False}}},
                                       check_tutorial_collapse),
    "tutorial_04_mae.ipynb": Case({"epochs": 3, "n_images": 1280, "n_heldout": 200}, check_tutorial_mae),
    # 8 px patches (4x4 grid) and 2 blocks: the 8x8 grid of the defaults costs 4x
    "tutorial_05_dino_attention.ipynb": Case({"epochs": 2, "n_images": 1024, "n_eval": 200,
                                              "backbone_options": {"patch_size": 8, "depth": 2}},
                                              check_tutorial_dino),
    "tutorial_06_label_free.ipynb": Case({"n_images": 1500, "n_eval": 1000, "sweep_runs": [
        {"name": "simclr 1 epoch", "method": "simclr", "epochs": 1},
        {"name": "simclr 3 epochs", "method": "simclr", "epochs": 3},
        {"name": "simsiam without stop-gradient", "method": "simsiam", "epochs": 2,
         "options": {"stop_gradient": False}}]}, check_tutorial_label_free),
    # the four masked/latent predictors at the tiny method-test sizes (tests/methods/tiny_runs.py): 16 px, 2 blocks
    "tutorial_09_latent_vs_pixel.ipynb": Case({
        "methods": ["mae", "ijepa", "data2vec2", "nepa"], "image_size": 16, "n_images": 256, "n_eval": 256,
        "epochs": 1, "batch_size": 32, "backbone_options": {"patch_size": 4, "depth": 2}, "n_show": 3,
        "method_options": {"mae": {}, "ijepa": {}, "nepa": {},
                           "data2vec2": {"top_k_layers": 2, "num_masks": 2, "momentum": 0.99, "final_momentum": 0.999}}},
        check_tutorial_latent_vs_pixel),
    "tutorial_10_random_teachers.ipynb": Case({"epochs": 1, "n_images": 2000, "n_test": 500},
                                              check_tutorial_random_teachers),
    # 2 epochs of a width-16 CNN: the check reads the pipeline; the 3-seed gains come from benchmarks/lessons.py
    "tutorial_07_semi_supervised.ipynb": Case({"epochs": 2, "n_images": 4000, "n_test": 1000, "batch_size": 64,
                                               "backbone_options": {"width": 16}, "distill_min_steps": 50},
                                              check_tutorial_semi_supervised),
    "tutorial_08_matryoshka.ipynb": Case({"epochs": 1, "n_images": 1000, "n_eval": 500, "batch_size": 64,
                                          "backbone_options": {"width": 8}, "matryoshka_dims": [8, 16, 32, 64]},
                                         check_tutorial_matryoshka),
    "tutorial_11_hard_negatives.ipynb": Case({"batch_sizes": [32, 64], "seeds": [0], "n_images": 128, "n_eval": 100,
                                              "epochs": 1, "backbone_options": {"width": 8}},
                                             check_tutorial_hard_negatives),
}


# ---- tests ----------------------------------------------------------------------------------------------------

def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_every_notebook_has_a_case():
    names = {p.name for p in _notebooks()}
    assert names, "no notebooks found"
    assert names <= set(CASES), f"add a Case (small parameters + check) to CASES for {names - set(CASES)}"
    assert set(CASES) <= names, f"CASES names notebooks that do not exist: {set(CASES) - names}"


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebook_is_committed_clean(path: Path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert nb.metadata.get("language_info", {}).get("name") == "python"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i} carries outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged parameters"
    for line in tagged[0].source.splitlines():  # papermill's own parser skips a line holding two '='
        assert line.count("=") <= 1, f"{path.name}: parameters line {line!r} has a second '=' (in a comment?)"
    assert "widgets" not in nb.metadata and "widget" not in json.dumps(nb.metadata)  # no saved widget state
    spec = notebook_parameters(path)  # plain literals only (raises otherwise)
    case = CASES.get(path.name)
    if case is not None and isinstance(case.parameters, dict):
        assert set(case.parameters) <= set(spec), f"{path.name}: CI parameters not in its parameters cell"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_executes_and_records(name: str, tmp_path: Path):
    case = CASES[name]
    params = case.parameters(tmp_path) if callable(case.parameters) else dict(case.parameters)
    runs_dir = Path(params.get("runs_dir", tmp_path / "runs"))
    run = run_notebook(NOTEBOOKS / name, params, runs_dir=runs_dir, timeout=case.timeout)
    assert run.status["status"] == "completed"
    executed = nbformat.read(str(run.path / "notebook.ipynb"), as_version=4)
    assert "widgets" not in executed.metadata  # no widget state: widgets show static pictures under the runner
    for cell in executed.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            assert "Error displaying widget" not in json.dumps(out.get("data", {}))
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {})
    assert run.summary, "the notebook recorded nothing (record_metrics)"
    shown = {k: round(v, 4) for k, v in run.summary.items() if isinstance(v, float) and "/" not in k}
    print(f"\n{name}: {run.status.get('seconds')} s, {json.dumps(shown)}")
    case.check(run, tmp_path)
