"""Runner, sweep, reproduce, run records and the experiment CLI, on a tiny deterministic notebook.

tests/experiments/notebooks/tiny.ipynb does no torch work: product = a * b, a seeded numpy draw, and it raises when
a * b == fail_on, so every outcome here is known in advance (hand-computed below).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from workbench.config import ConfigError
from workbench.experiments import (ENV_RUN_DIR, NotebookError, compare_summaries, current_run, notebook_parameters,
                                   read_parameters, record_metrics, reproduce, run_notebook, runs_table,
                                   set_current_run, sweep, validate_parameters)
from workbench.experiments.cli_commands import main as cli_main
from workbench.runs import Run, atomic_write_json, list_runs

TINY = Path(__file__).parent / "notebooks" / "tiny.ipynb"
NOISE_SEED0 = float(np.random.default_rng(0).normal())  # what the notebook records as "noise" for seed 0


def _notebook(tmp_path: Path, params_source: str, extra_params_cell: bool = False) -> Path:
    nb = nbformat.read(str(TINY), as_version=4)
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells[idx].source = params_source
    if extra_params_cell:
        nb.cells.append(nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}))
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_parameters_cell_is_parsed_with_types_and_defaults():
    spec = notebook_parameters(TINY)
    assert {n: (p.default, p.type_name) for n, p in spec.items()} == {
        "a": (1, "int"), "b": (2.0, "float"), "fail_on": (-1.0, "float"), "label": ("x", "str"), "seed": (0, "int"),
        "sleep": (0.0, "float")}


def test_bad_parameters_are_rejected_before_anything_runs(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError) as err:
        run_notebook(TINY, {"nope": 1, "a": "three"}, runs_dir=runs)
    msg = str(err.value)
    assert "unknown parameter 'nope'" in msg and "'a'='three' must be int" in msg
    for line in ("a: int = 1", "b: float = 2.0", "fail_on: float = -1.0", "label: str = 'x'", "seed: int = 0"):
        assert line in msg  # the error lists what the notebook accepts
    assert not runs.exists()  # validated before a run folder was made
    with pytest.raises(ConfigError, match="must be float"):
        validate_parameters(notebook_parameters(TINY), {"b": True})  # bool is not a number here
    with pytest.raises(ConfigError, match="set by the runner"):
        validate_parameters(notebook_parameters(TINY), {"run_dir": "x"})
    # an int where a float is expected is fine; CLI strings are coerced to the default's type
    assert validate_parameters(notebook_parameters(TINY), {"b": 3})["b"] == 3
    got = validate_parameters(notebook_parameters(TINY), {"a": "4", "b": "0.5", "label": "7"}, coerce_strings=True)
    assert (got["a"], got["b"], got["label"]) == (4, 0.5, "7")


def test_parameters_cell_must_be_plain_and_unique(tmp_path):
    with pytest.raises(ConfigError, match="plain literal"):
        notebook_parameters(_notebook(tmp_path, "a = 1\nb = float('2')"))
    with pytest.raises(ConfigError, match="only hold `name = value`"):
        notebook_parameters(_notebook(tmp_path, "a = 1\nimport os"))
    with pytest.raises(ConfigError, match="exactly one code cell tagged 'parameters'; found 2"):
        notebook_parameters(_notebook(tmp_path, "a = 1", extra_params_cell=True))


def test_run_records_parameters_notebook_and_summary(tmp_path):
    run = run_notebook(TINY, {"a": 3, "seed": 0}, runs_dir=tmp_path)
    assert run.status["status"] == "completed"
    assert run.summary["product"] == 6.0 and run.summary["noise"] == pytest.approx(NOISE_SEED0, abs=0)
    # the kernel runs this interpreter (the venv's python), not whatever `python` is on PATH
    assert Path(run.summary["python"]).resolve() == Path(sys.executable).resolve()
    rec = read_parameters(run)
    assert rec["notebook"] == "tiny" and rec["parameters"] == {"a": 3, "b": 2.0, "fail_on": -1.0, "label": "x",
                                                               "seed": 0, "sleep": 0.0}
    executed = nbformat.read(str(run.path / "notebook.ipynb"), as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert (run.path / "source.ipynb").read_bytes() == TINY.read_bytes()
    assert run.path.name.split("-")[2:4] == ["tiny", "notebook"]  # no method/data parameter -> notebook stem


def test_failure_is_recorded_with_the_failing_cell(tmp_path):
    with pytest.raises(NotebookError, match="failed in cell 3") as err:
        run_notebook(TINY, {"a": 2, "b": 3.0, "fail_on": 6.0}, runs_dir=tmp_path)
    status = err.value.run.status
    assert status["status"] == "failed" and status["ename"] == "ValueError"
    assert status["cell_index"] == 3  # index in the source notebook (markdown, parameters, imports, this)
    assert "raise ValueError" in status["cell_source"] and "asked to fail" in status["error"]
    assert (err.value.run.path / "notebook.ipynb").exists() and not err.value.run.summary


@pytest.mark.slow
def test_sweep_2x2_isolates_a_failure_and_resumes(tmp_path):
    grid = {"a": [1, 2], "b": [1.0, 3.0]}
    first = sweep(TINY, grid, runs_dir=tmp_path, jobs=2, parameters={"fail_on": 6.0}, name="t")
    assert len(first) == 4 and len(list_runs(tmp_path)) == 4
    by_point = {(r.a, r.b): r for r in first.itertuples()}
    assert by_point[(2, 3.0)].status == "failed" and "asked to fail" in by_point[(2, 3.0)].error
    for point in [(1, 1.0), (1, 3.0), (2, 1.0)]:
        assert by_point[point].status == "completed" and by_point[point].product == point[0] * point[1]
    assert not first["skipped"].any()
    assert all(read_parameters(p)["tag"] == "t" for p in first["run"])

    again = sweep(TINY, grid, runs_dir=tmp_path, jobs=1, parameters={"fail_on": 6.0})
    skipped = {(r.a, r.b): r.skipped for r in again.itertuples()}
    assert skipped == {(1, 1.0): True, (1, 3.0): True, (2, 1.0): True, (2, 3.0): False}
    assert set(again.loc[again.skipped, "run"]) == set(first.loc[first.status == "completed", "run"])
    assert len(list_runs(tmp_path)) == 5  # only the failed combination ran again (and failed again)


def test_sweep_validates_every_point_first(tmp_path):
    with pytest.raises(ConfigError, match="unknown parameter 'c'"):
        sweep(TINY, {"a": [1], "c": [1]}, runs_dir=tmp_path)
    with pytest.raises(ValueError, match="non-empty list"):
        sweep(TINY, {"a": []}, runs_dir=tmp_path)
    assert list_runs(tmp_path) == []


def test_reproduce_gives_the_same_metrics(tmp_path):
    original = run_notebook(TINY, {"a": 2, "b": 0.25, "seed": 3}, runs_dir=tmp_path)
    table = reproduce(original, tolerance=1e-12)
    assert list(table.metric) == ["noise", "product"]  # numeric metrics only
    assert table.within_tolerance.all() and (table.abs_diff == 0).all()
    new = Run(table.attrs["run"])
    assert new.path != original.path and new.status["status"] == "completed"
    assert read_parameters(new)["notebook"] == "tiny"  # recorded under the original notebook's name
    assert read_parameters(new)["parameters"] == read_parameters(original)["parameters"]

    # a summary that does not match is reported as outside the tolerance
    atomic_write_json(original.path / "summary.json", {**original.summary, "product": 0.75})
    again = reproduce(original, tolerance=0.1).set_index("metric")
    assert again.loc["product", "abs_diff"] == pytest.approx(0.25) and not again.loc["product", "within_tolerance"]
    assert again.loc["noise", "within_tolerance"]


def test_record_metrics_interactive_and_under_runner(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_RUN_DIR, raising=False)
    set_current_run(None)
    try:
        run = current_run(tmp_path, method="simclr", data="shapes", parameters={"epochs": 2})
        assert current_run(tmp_path) is run and "simclr-shapes" in run.path.name
        merged = record_metrics({"knn_acc": np.float32(0.5), "n": np.int64(3)})
        assert merged == {"knn_acc": 0.5, "n": 3} and type(merged["n"]) is int
        assert run.status["status"] == "completed"  # nothing else closes an interactive run
        assert read_parameters(run)["parameters"] == {"epochs": 2}
        other = Run.create(tmp_path, "m", "d")
        monkeypatch.setenv(ENV_RUN_DIR, str(other.path))
        assert current_run().path == other.path  # the runner's folder wins
        record_metrics({"x": 1.0})
        assert other.summary == {"x": 1.0} and other.status["status"] == "created"  # the runner closes it
        with pytest.raises(ValueError, match="non-empty dict"):
            record_metrics({})
    finally:
        set_current_run(None)


def _fake_run(root: Path, method: str, acc: float, status: str = "completed") -> Run:
    run = Run.create(root, method, "shapes")
    atomic_write_json(run.path / "parameters.json", {"notebook": "pretrain", "parameters": {
        "method": method, "data": "shapes", "backbone": "small_cnn", "epochs": 3}})
    run.update_summary({"knn_acc": acc, "note": "text"})
    run.set_status(status)
    return run


def test_runs_table_and_compare(tmp_path):
    a = _fake_run(tmp_path, "simclr", 0.4)
    b = _fake_run(tmp_path, "byol", 0.7)
    plain = Run.create(tmp_path, "vicreg", "cifar10", config={
        "method": "vicreg", "data": {"name": "cifar10"}, "model": {"backbone": "resnet18"}, "train": {"epochs": 5}})
    table = runs_table(tmp_path, sort_by="knn_acc")
    assert list(table.method) == ["byol", "simclr", "vicreg"]  # best first, a run without the metric last
    row = table.set_index("method").loc["vicreg"]
    assert (row.data, row.backbone, row.epochs, row.status) == ("cifar10", "resnet18", 5, "created")
    assert "note" not in table.columns  # only numeric summary entries become columns
    side = compare_summaries([a, b])
    assert list(side.columns) == [a.path.name, b.path.name] and side.loc["knn_acc"].tolist() == [0.4, 0.7]
    with pytest.raises(ValueError, match="cannot sort runs by 'missing'"):
        runs_table(tmp_path, sort_by="missing")
    assert plain.path.exists()


def test_cli_run_runs_and_lab(tmp_path, capsys):
    assert cli_main(["run", str(TINY), "-p", "a", "5", "-p", "b", "0.5", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "status:            completed" in out and "notebook.ipynb" in out
    (run,) = list_runs(tmp_path)
    assert run.summary["product"] == 2.5

    assert cli_main(["run", str(TINY), "-p", "a", "oops", "--dir", str(tmp_path)]) == 2
    assert "'a'='oops' must be int" in capsys.readouterr().err

    assert cli_main(["runs", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert run.path.name in out and "product" in out and "completed" in out
    assert cli_main(["runs", "--dir", str(tmp_path), "--compare", run.path.name]) == 0
    assert "2.5" in capsys.readouterr().out

    assert cli_main(["lab", "--dry-run", "--notebook-dir", str(tmp_path), "--no-browser"]) == 0
    cmd = capsys.readouterr().out
    assert "-m jupyter lab" in cmd and f"--ServerApp.root_dir={tmp_path.resolve()}" in cmd and "--no-browser" in cmd


def test_cli_sweep_parses_grid(tmp_path, capsys):
    code = cli_main(["sweep", str(TINY), "--grid", "a=1,2", "-p", "b", "1.5", "--dir", str(tmp_path)])
    assert code == 0
    products = sorted(r.summary["product"] for r in list_runs(tmp_path))
    assert products == [1.5, 3.0]
    assert "completed" in capsys.readouterr().out


def write_parameters(run: Run, parameters: dict) -> None:
    """A notebook run's parameters.json as the runner writes it."""
    from workbench.experiments.records import PARAMETERS_FILE
    atomic_write_json(run.path / PARAMETERS_FILE, {"notebook": "tutorial", "parameters": parameters})


def test_adopted_training_run_is_a_named_link_read_by_every_reader(tmp_path):
    from workbench.experiments import adopt_training_run, curves_frame
    nb_run = Run.create(tmp_path, "notebook", "shapes")
    write_parameters(nb_run, {"method": "not-read-when-a-config-exists"})
    train = Run.create(nb_run.path / "train", "simclr", "shapes",
                       config={"method": "simclr", "data": {"name": "shapes"}, "model": {"backbone": "small_cnn"},
                               "train": {"epochs": 2}})
    train.log_metrics({"kind": "step", "step": 1, "loss": 3.0})
    assert nb_run.training_run is None
    adopt_training_run(train, nb_run)
    assert json.loads((nb_run.path / "links.json").read_text()) == {"training_run": f"train/{train.path.name}"}
    assert nb_run.training_run.path == train.path
    assert not (nb_run.path / "metrics.jsonl").exists() and not (nb_run.path / "config.json").exists()  # no copies
    moved = tmp_path / "elsewhere"
    nb_run.path.rename(moved)  # the relative link survives moving the run folder
    row = runs_table([moved]).iloc[0]
    assert (row.method, row.data, row.backbone, row.epochs) == ("simclr", "shapes", "small_cnn", 2)
    assert curves_frame([moved], y="loss")["loss"].tolist() == [3.0]


def test_run_facts_of_a_notebook_run_without_training_come_from_its_parameters(tmp_path):
    nb_run = Run.create(tmp_path, "tutorial", "shapes")
    write_parameters(nb_run, {"method": "simsiam", "data": "shapes", "epochs": 3, "other": 1})
    row = runs_table([nb_run.path]).iloc[0]
    assert (row.method, row.data, row.backbone, row.epochs) == ("simsiam", "shapes", None, 3)


def test_headline_metrics_from_an_evaluation_table():
    import pandas as pd
    from workbench.experiments import headline_metrics
    table = pd.DataFrame([
        {"model": "pretrained", "name": "knn_top1_k20", "value": 0.8, "split": "test", "settings": {}},
        {"model": "pretrained", "name": "knn_top1_k10", "value": 0.7, "split": "test", "settings": {}},
        {"model": "random_init", "name": "knn_top1_k20", "value": 0.3, "split": "test", "settings": {}},
        {"model": "raw_pixels", "name": "linear_top1", "value": 0.4, "split": "test", "settings": {}},
        {"model": "pretrained", "name": "rankme", "value": 12.5, "split": "test", "settings": {}},
    ])
    assert headline_metrics(table) == {"knn_acc": 0.8, "knn_acc_random_init": 0.3, "linear_acc_raw_pixels": 0.4,
                                       "rankme": 12.5}
    assert headline_metrics(table, k=10) == {"knn_acc": 0.7, "linear_acc_raw_pixels": 0.4, "rankme": 12.5}


def test_a_cell_that_times_out_is_recorded_as_failed(tmp_path):
    with pytest.raises(NotebookError, match="CellTimeoutError") as err:
        run_notebook(TINY, {"sleep": 120.0}, runs_dir=tmp_path, timeout=15)  # imports take a few s
    status = err.value.run.status
    assert status["status"] == "failed" and status["ename"] == "CellTimeoutError"
    assert status["cell_index"] == 3 and "time.sleep(sleep)" in status["cell_source"]


def test_default_runs_dir(monkeypatch, tmp_path):
    from workbench.experiments import default_runs_dir
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(tmp_path))
    assert default_runs_dir() == tmp_path
    monkeypatch.delenv("WORKBENCH_RUNS_DIR")
    assert default_runs_dir() == Path(__file__).resolve().parents[2] / "runs"  # the checkout's runs/


def test_headline_table_puts_the_baselines_beside_the_model_and_describe_run_prints_it(tmp_path):
    from workbench.experiments.runner import describe_run, headline_table

    summary = {"knn_acc": 0.4123, "knn_acc_random_init": 0.284, "knn_acc_raw_pixels": 0.41,
               "rankme": 13.57, "rankme_raw_pixels": 842.14, "other": 3}
    assert headline_table(summary).splitlines() == [
        "                         pretrained  random init  raw pixels",
        "kNN accuracy                  0.412        0.284       0.410",
        "RankMe (effective rank)        13.6            -       842.1"]
    assert headline_table({"other": 1}) == ""
    run = Run.create(tmp_path, "byol", "shapes")
    run.update_summary(summary)
    run.set_status("completed", seconds=135.2)
    text = describe_run(run)
    lines = text.splitlines()
    assert lines[1] == "status:            completed (2 min 15 s)"
    assert lines[-3:] == headline_table(summary).splitlines()  # after the paths
    assert 'other results:     {"other": 3}' in text and "knn_acc" not in text  # the table is not repeated


def test_notebook_progress_reports_cells_and_epochs_from_the_run_folder(tmp_path):
    from workbench.experiments.runner import NotebookProgress

    run = Run.create(tmp_path, "byol", "shapes")
    lines: list[str] = []
    progress = NotebookProgress(run, lines.append)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title\ntext"), nbformat.v4.new_code_cell("epochs = 2"),
        nbformat.v4.new_code_cell("epochs = 1", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_markdown_cell("intro\n## 1. Pretrain"), nbformat.v4.new_code_cell("# a comment\ntrained = go()"),
        nbformat.v4.new_code_cell("x = 1")])
    for i in (1, 2, 4):  # papermill has started these cells
        nb.cells[i].metadata["papermill"] = {"start_time": "2026-01-01T00:00:00"}
    nbformat.write(nb, str(run.path / "notebook.ipynb"))
    train = Run.create(run.path / "train", "byol", "shapes", {"train": {"epochs": 2}})
    train.log_metrics({"kind": "step", "step": 1, "loss": 3.0})
    train.log_metrics({"kind": "epoch", "epoch": 1, "step": 10, "loss": 2.5, "knn_acc": 0.3125})
    with open(train.path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "epoch", "epoch": 2, "lo')  # a line caught mid-write waits for the next poll
    progress.poll()
    text = [line.split("] ", 1)[1] for line in lines]
    assert text == [f"{train.path.name}: epoch 1/2  loss 2.5000  kNN 0.312",
                    "cell 1/3 · Title · epochs = 2", "cell 2/3 · 1. Pretrain · trained = go()"]
    with open(train.path / "metrics.jsonl", "a") as f:
        f.write('ss": 2.0}\n')
    progress.poll()
    assert lines[-1].endswith(f"{train.path.name}: epoch 2/2  loss 2.0000") and len(lines) == 4
    progress.poll()
    assert len(lines) == 4  # nothing is reported twice


def _training_notebook(tmp_path: Path) -> Path:
    """A notebook that trains a tiny run into its run folder, shows a widget and records a metric."""
    cells = [
        nbformat.v4.new_markdown_cell("# Tiny training"),
        nbformat.v4.new_code_cell("epochs = 2", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_markdown_cell("## Pretrain"),
        nbformat.v4.new_code_cell(
            "import widgets\nfrom workbench.data import load\n"
            "from workbench.experiments import adopt_training_run, current_run, record_metrics\n"
            "from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain\n"
            "run = current_run()\n"
            "trained = pretrain(PretrainConfig(method='simclr', data=DataConfig(name='shapes', image_size=16, "
            "options={'n': 64}), model=ModelConfig(backbone='small_cnn', options={'width': 4}), "
            "train=TrainConfig(epochs=epochs, batch_size=32, knn_max_train=32, knn_max_test=16, device='cpu'), "
            "out=str(run.path / 'train')))\nadopt_training_run(trained, run)"),
        nbformat.v4.new_markdown_cell("## Look"),
        nbformat.v4.new_code_cell("widgets.AugmentationExplorer(load('shapes', split='test', size=16, n=4), n_images=2)"),
        nbformat.v4.new_code_cell("record_metrics({'knn_acc': trained.summary['pretrain_knn_acc']})"),
    ]
    nb = nbformat.v4.new_notebook(cells=cells, metadata=nbformat.read(str(TINY), as_version=4).metadata)
    path = tmp_path / "train_tiny.ipynb"
    nbformat.write(nb, str(path))
    return path


@pytest.mark.slow
def test_cli_run_prints_progress_and_the_headline_table_and_stores_pictures_not_widget_state(tmp_path, capsys):
    nb = _training_notebook(tmp_path)
    assert cli_main(["run", str(nb), "--dir", str(tmp_path / "runs")]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    (run,) = list_runs(tmp_path / "runs")
    train = run.training_run
    assert any("cell 2/4 · Pretrain · import widgets" in line for line in err), err  # the cell as it started
    for epoch in (1, 2):  # each epoch the kernel's training logged, with its loss and kNN accuracy
        assert any(f"{train.path.name}: epoch {epoch}/2  loss " in line and " kNN " in line for line in err), err
    assert captured.out.splitlines()[-2:] == [" " * 12 + "  pretrained  random init  raw pixels",  # the table, last
                                              f"kNN accuracy  {run.summary['knn_acc']:>10.3f}  {'-':>11}  {'-':>10}"]
    executed = nbformat.read(str(run.path / "notebook.ipynb"), as_version=4)
    assert "widgets" not in executed.metadata  # no widget state stored
    (shown,) = [o for c in executed.cells if "AugmentationExplorer" in c.source for o in c.outputs]
    assert "image/png" in shown["data"] and "application/vnd.jupyter.widget-view+json" not in shown["data"]
    assert cli_main(["run", str(nb), "--dir", str(tmp_path / "quiet"), "--quiet"]) == 0
    assert "epoch" not in capsys.readouterr().err  # --quiet: no progress lines


def test_cli_quickstart_ends_with_the_headline_table(tmp_path, capsys, monkeypatch):
    import workbench.experiments.runner as runner

    run = Run.create(tmp_path, "byol", "shapes")
    summary = {"knn_acc": 0.354, "knn_acc_random_init": 0.284, "knn_acc_raw_pixels": 0.41}
    run.update_summary(summary)
    run.set_status("completed", seconds=12.0)
    given = {}

    def fake_quickstart(runs_dir, params, timeout, coerce_strings, progress):
        given.update(runs_dir=runs_dir, params=params, progress=progress)
        return run

    monkeypatch.setattr(runner, "quickstart", fake_quickstart)
    assert cli_main(["quickstart", "--dir", str(tmp_path), "-p", "epochs", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert given["params"] == {"epochs": "1"} and callable(given["progress"])
    assert out[0] == f"run folder:        {run.path}" and out[-3:] == ["", *runner.headline_table(summary).splitlines()]
    assert sum("kNN accuracy" in line for line in out) == 1
    assert cli_main(["quickstart", "--dir", str(tmp_path), "--quiet"]) == 0 and given["progress"] is None
