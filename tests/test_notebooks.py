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

from workbench.experiments import notebook_parameters, read_parameters, run_notebook, training_run
from workbench.runs import Run, atomic_write_json

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


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
    assert s["knn_acc"] > s["knn_acc_random_init"], s  # pretraining beat its own random-init backbone
    assert s["knn_acc"] > 1.5 * _chance(run), s  # and is well above chance
    trained = training_run(run)
    assert trained is not None and trained.status["status"] == "completed"
    assert any(r.get("kind") == "epoch" for r in run.metrics())  # curves readable from the notebook run
    pictures = {p.name for p in run.path.glob("*") if p.suffix in (".png", ".html")}
    for view in ("augmentations", "patches", "embedding", "training"):
        assert any(name.startswith(view) for name in pictures), (view, pictures)


def check_pretrain(run: Run, tmp_path: Path) -> None:
    s = run.summary
    chance = _chance(run)
    assert s["knn_acc"] > 1.2 * chance and s["linear_acc"] > 1.2 * chance, s  # above chance
    assert {"knn_acc_random_init", "knn_acc_raw_pixels", "linear_acc_random_init"} <= set(s), s  # the baselines
    table = (run.path / "evaluation.csv").read_text()
    assert "knn_top1_k20" in table and "linear_top1" in table
    assert read_parameters(run)["parameters"]["method"] == "simclr"


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


SMALL_CNN = {"width": 16}
SMALL_HEAD = {"proj_hidden_dim": 512, "proj_output_dim": 128}

CASES: dict[str, Case] = {
    # the engine's CPU test sizes (tests/test_methods_train.py): small CNN at width 16, small heads, 2000 images
    "00_quickstart.ipynb": Case({"epochs": 2, "n_images": 2000, "n_eval": 2000, "batch_size": 128, "umap": "off",
                                 "backbone_options": SMALL_CNN,
                                 "method_options": {**SMALL_HEAD, "pred_hidden_dim": 512}},
                                check_quickstart),
    "pretrain.ipynb": Case({"epochs": 1, "n_images": 1000, "batch_size": 128, "metrics": "knn,linear",
                            "backbone_options": SMALL_CNN, "method_options": SMALL_HEAD}, check_pretrain),
    "compare_runs.ipynb": Case(_fake_runs, check_compare_runs),
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
    for cell in executed.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            assert "Error displaying widget" not in json.dumps(out.get("data", {}))
    assert run.summary, "the notebook recorded nothing (record_metrics)"
    shown = {k: round(v, 4) for k, v in run.summary.items() if isinstance(v, float) and "/" not in k}
    print(f"\n{name}: {run.status.get('seconds')} s, {json.dumps(shown)}")
    case.check(run, tmp_path)
