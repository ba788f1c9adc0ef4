"""The runs index (workbench.runs.indexed_runs) and `workbench runs` filters: kept up to date on every status change,
re-read where a run's files changed behind it, tolerant to concurrent writers and torn lines."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from workbench.cli import main as cli_main
from workbench.experiments.table import parse_where, runs_table
import workbench.runs as runs_module
from workbench.runs import INDEX_DIR, Run, atomic_write_json, indexed_runs

CONFIG = {"method": "simclr", "data": {"name": "shapes"}, "model": {"backbone": "small_cnn"}, "train": {"epochs": 3}}


def make_run(root: Path, name: str, method: str = "simclr", status: str = "completed", knn: float | None = None) -> Run:
    run = Run.create(root, method, "shapes", config={**CONFIG, "method": method}, name=name)
    if knn is not None:
        run.update_summary({"knn_acc": knn, "note": "text"})
    run.set_status(status, step=12)
    return run


def log_entries(root: Path) -> list[dict]:
    p = root / INDEX_DIR / "log.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def test_every_status_change_reaches_the_index_and_a_listing_folds_it_into_the_snapshot(tmp_path, monkeypatch):
    run = Run.create(tmp_path, "byol", "shapes", config={**CONFIG, "method": "byol"}, name="a")
    assert [e["status"]["status"] for e in log_entries(tmp_path)] == ["created"]
    run.set_status("running", step=1)
    run.set_status("running", step=2)  # a heartbeat: no new index line
    run.update_summary({"knn_acc": 0.5})
    run.set_status("completed", step=3)
    assert [e["status"]["status"] for e in log_entries(tmp_path)] == ["created", "running", "running", "completed"]
    ((listed, entry),) = indexed_runs(tmp_path)
    assert listed.path == run.path and entry["status"]["status"] == "completed" and entry["status"]["step"] == 3
    assert entry["summary"] == {"knn_acc": 0.5} and entry["config"]["method"] == "byol"
    assert not (tmp_path / INDEX_DIR / "runs.json").exists()  # a short log is read as it is
    monkeypatch.setattr(runs_module, "INDEX_COMPACT_LINES", 3)
    assert indexed_runs(tmp_path)[0][1] == entry
    snapshot = json.loads((tmp_path / INDEX_DIR / "runs.json").read_text())
    assert set(snapshot["entries"]) == {"a"} and log_entries(tmp_path) == []  # compacted


def test_a_listing_reads_the_index_not_every_run(tmp_path, monkeypatch):
    for i in range(3):
        make_run(tmp_path, f"r{i}", knn=0.1 * i)
    indexed_runs(tmp_path)  # brings the index up to date

    def refuse(self):
        raise AssertionError(f"{self.path} was re-read although the index is up to date")

    monkeypatch.setattr(Run, "index_entry", refuse)
    table = runs_table(tmp_path, sort_by="knn_acc")
    assert list(table.run) == ["r2", "r1", "r0"]
    monkeypatch.undo()
    # a change behind the index's back (a run copied in, a foreign writer) is found by its stamp
    atomic_write_json(tmp_path / "r0" / "summary.json", {"knn_acc": 0.9})
    os.utime(tmp_path / "r0" / "summary.json", ns=(1, 1))
    (tmp_path / "r1").rename(tmp_path / "r1-moved")
    import shutil
    shutil.rmtree(tmp_path / "r2")
    table = runs_table(tmp_path, sort_by="knn_acc")
    assert list(table.run) == ["r0", "r1-moved"] and table.knn_acc.tolist()[0] == 0.9
    assert set(json.loads((tmp_path / INDEX_DIR / "runs.json").read_text())["entries"]) == {"r0", "r1-moved"}


def test_concurrent_writers_and_a_torn_line_lose_nothing(tmp_path):
    errors = []

    def writer(k: int) -> None:
        try:
            for i in range(6):
                run = make_run(tmp_path, f"w{k}-{i}", knn=k + i / 10)
                run.set_status("failed" if i % 3 == 0 else "completed", step=i)
                if i % 2:
                    indexed_runs(tmp_path)  # readers compact while others append
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with open(tmp_path / INDEX_DIR / "log.jsonl", "a") as f:
        f.write('{"name": "w0-1", "stamp": [1, 1], "stat')  # a writer killed mid-append
    found = {run.path.name: entry["status"]["status"] for run, entry in indexed_runs(tmp_path)}
    assert len(found) == 24
    assert all(found[f"w{k}-{i}"] == ("failed" if i % 3 == 0 else "completed") for k in range(4) for i in range(6))


def test_a_running_run_whose_writer_died_lists_as_interrupted(tmp_path):
    run = make_run(tmp_path, "dead", status="running")
    status = json.loads((run.path / "status.json").read_text())
    atomic_write_json(run.path / "status.json", {**status, "pid": 2 ** 22 + 12345, "pid_start": 1})
    ((_, entry),) = indexed_runs(tmp_path)
    assert entry["status"]["status"] == "interrupted"
    assert runs_table(tmp_path, status="interrupted").run.tolist() == ["dead"]


def test_where_status_sort_limit_filters(tmp_path):
    make_run(tmp_path, "a", "simclr", knn=0.4)
    make_run(tmp_path, "b", "byol", knn=0.7)
    make_run(tmp_path, "c", "simclr", status="failed", knn=0.9)
    make_run(tmp_path, "d", "simclr", knn=0.6)
    assert runs_table(tmp_path, where=["method=simclr"]).run.tolist() == ["a", "c", "d"]
    assert runs_table(tmp_path, where=["method=SimCLR", "knn_acc>0.5"]).run.tolist() == ["c", "d"]
    assert runs_table(tmp_path, where={"method": "simclr"}, status="completed", sort_by="knn_acc").run.tolist() == ["d", "a"]
    assert runs_table(tmp_path, sort_by="knn_acc", ascending=True, limit=2).run.tolist() == ["a", "d"]
    assert runs_table(tmp_path, limit=2).run.tolist() == ["c", "d"]  # newest two
    assert runs_table(tmp_path, where=["status!=failed", "knn_acc<=0.6"]).run.tolist() == ["a", "d"]
    assert parse_where(["x>=1", "y!=z"]) == [("x", ">=", "1"), ("y", "!=", "z")]
    with pytest.raises(ValueError, match="'nothere': no run has that column"):
        runs_table(tmp_path, where=["nothere=1"])


def test_cli_runs_filters_and_json(tmp_path, capsys):
    make_run(tmp_path, "a", "simclr", knn=0.4)
    make_run(tmp_path, "b", "byol", knn=0.7)
    make_run(tmp_path, "c", "simclr", knn=0.6)
    assert cli_main(["runs", "--dir", str(tmp_path), "--where", "method=simclr", "--sort", "knn_acc", "--limit", "1",
                     "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["run"], r["knn_acc"]) for r in rows] == [("c", 0.6)] and rows[0]["path"] == str(tmp_path / "c")
    assert cli_main(["runs", "--dir", str(tmp_path), "--status", "failed"]) == 0
    assert "no runs under" in capsys.readouterr().out
    assert cli_main(["runs", "--dir", str(tmp_path), "--where", "method"]) == 2
    assert "must look like key=value" in capsys.readouterr().err
