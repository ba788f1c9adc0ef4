"""Listing many runs: ``workbench runs`` through the runs index against reading every run's files.

Generates N run folders (config.json, env.json, status.json, summary.json; every third a notebook run with
parameters.json) in a temporary folder and times, in one process:

- ``files``: the listing without an index (what ``workbench runs`` did before: each run's parameters, config,
  status and summary read, about 5 file reads a run), as ``runs_table`` over the run folders;
- ``index_build``: the first listing of the folder, which reads every run once and writes the index;
- ``index``: a listing with the index up to date (one stat of status.json and summary.json per run);
- ``index_after_changes``: after 1% of the runs changed status through ``Run.set_status``;
- ``cli``: ``workbench runs --dir D --limit 20`` as a subprocess (interpreter start and imports included).

    python benchmarks/runs_index.py [--runs 10000] [--repeat 3]

Prints one JSON object per measurement (seconds: the best of ``--repeat``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("simclr", "byol", "dino", "vicreg", "mae")


def generate(root: Path, n: int, seed: int = 0) -> None:
    """N run folders as the trainer and the notebook runner write them (plain JSON writes, for speed)."""
    rng = random.Random(seed)
    for i in range(n):
        method = METHODS[i % len(METHODS)]
        run = root / f"20260101-{i:06d}-{method}-shapes-{i:06x}"
        run.mkdir(parents=True)
        config = {"method": method, "data": {"name": "shapes", "image_size": 32, "options": {"n": 10000}},
                  "model": {"backbone": "small_cnn", "options": {}}, "train": {"epochs": rng.choice([5, 10, 20]),
                                                                              "batch_size": 256, "lr": None}}
        (run / "config.json").write_text(json.dumps(config, indent=2))
        (run / "env.json").write_text(json.dumps({"run_id": f"{i:016x}", "python": "3.11", "torch": "2.14.1"}))
        status = rng.choice(["completed"] * 8 + ["failed", "interrupted"])
        (run / "status.json").write_text(json.dumps({"status": status, "step": 400, "updated": "2026-01-01T00:00:00"}))
        (run / "summary.json").write_text(json.dumps({"knn_acc": rng.random(), "linear_top1": rng.random(),
                                                      "rankme": rng.uniform(1, 128),
                                                      "pretrain": {"steps": 400, "knn_acc": rng.random()}}))
        if i % 3 == 0:
            (run / "parameters.json").write_text(json.dumps({"notebook": "pretrain", "parameters": {
                "method": method, "epochs": 10, "seed": i % 5}, "tag": "bench"}))


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to generate (default: a temporary folder)")
    args = ap.parse_args()

    from workbench.experiments.table import runs_table
    from workbench.runs import INDEX_DIR, Run, list_runs

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "runs"
        t = time.perf_counter()
        generate(root, args.runs)
        report = {"runs": args.runs, "cpus": len(os.sched_getaffinity(0))}
        print(json.dumps({**report, "measure": "generate", "seconds": round(time.perf_counter() - t, 3)}), flush=True)

        folders = [r.path for r in list_runs(root)]
        t_files = best(lambda: runs_table(folders), args.repeat)  # every run's files, no index
        print(json.dumps({**report, "measure": "files", "seconds": round(t_files, 3),
                          "what": "runs_table over the run folders: each run's files read (the listing before)"}),
              flush=True)

        t = time.perf_counter()
        table = runs_table(root)
        t_build = time.perf_counter() - t
        assert len(table) == args.runs
        print(json.dumps({**report, "measure": "index_build", "seconds": round(t_build, 3),
                          "what": "first listing: reads every run once, writes the index"}), flush=True)

        t_index = best(lambda: runs_table(root), args.repeat)
        size = sum(p.stat().st_size for p in (root / INDEX_DIR).iterdir())
        print(json.dumps({**report, "measure": "index", "seconds": round(t_index, 3), "index_bytes": size,
                          "speedup": round(t_files / t_index, 1),
                          "what": "runs_table(runs folder) with the index up to date"}), flush=True)

        changed = folders[:: max(1, len(folders) // max(1, args.runs // 100))]
        for p in changed:
            Run(p).set_status("completed", step=401)
        t = time.perf_counter()
        runs_table(root)
        print(json.dumps({**report, "measure": "index_after_changes", "changed": len(changed),
                          "seconds": round(time.perf_counter() - t, 3)}), flush=True)

        filtered = best(lambda: runs_table(root, where=["method=dino", "knn_acc>0.5"], sort_by="knn_acc", limit=20),
                        args.repeat)
        print(json.dumps({**report, "measure": "index_filtered", "seconds": round(filtered, 3),
                          "what": "--where method=dino --where knn_acc>0.5 --sort knn_acc --limit 20"}), flush=True)

        cmd = [sys.executable, "-m", "workbench.cli", "runs", "--dir", str(root), "--limit", "20"]
        t_cli = best(lambda: subprocess.run(cmd, check=True, capture_output=True), max(1, args.repeat - 1))
        t_start = best(lambda: subprocess.run([sys.executable, "-c", "import workbench.cli, pandas"], check=True,
                                              capture_output=True), max(1, args.repeat - 1))
        print(json.dumps({**report, "measure": "cli", "seconds": round(t_cli, 3),
                          "imports_seconds": round(t_start, 3),
                          "what": "workbench runs --limit 20 as a subprocess; imports_seconds: python -c 'import "
                                  "workbench.cli, pandas' alone"}), flush=True)


if __name__ == "__main__":
    main()
