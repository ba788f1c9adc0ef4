"""Executors (workbench.executors): local slots get a device each; SLURM through submitit's local executor (no
cluster): a preempted pretraining is requeued and resumes its run folder, tasks form one DDP run, a sweep is a job
array whose runs record their jobs."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from workbench.config import ConfigError, to_dict
from workbench.executors import EXECUTOR_FILE, LocalExecutor, PretrainJob, make_executor, new_run_dir
from workbench.runs import Run, list_runs
from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_NB = ROOT / "tests" / "experiments" / "notebooks" / "tiny.ipynb"


def slot_facts(tag: str) -> dict:
    """What a job sees of its slot (runs in the executor's worker process)."""
    return {"tag": tag, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "omp": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(), "pid": os.getpid()}


def tiny_config(out, n: int = 128, epochs: int = 2, **train) -> PretrainConfig:
    t = dict(epochs=epochs, batch_size=32, log_every=1, knn_every=0, progress="off", device="cpu")
    t.update(train)
    return PretrainConfig(method="simclr", method_options={"proj_hidden_dim": 32, "proj_output_dim": 16},
                          data=DataConfig(name="shapes", image_size=16, options={"n": n}),
                          model=ModelConfig(backbone="small_cnn", options={"width": 8}), train=TrainConfig(**t),
                          out=str(out))


def test_local_slots_round_robin_over_gpus_and_split_cpu_threads(monkeypatch):
    ex = LocalExecutor(gpus=[0, 1], jobs_per_gpu=2, threads=3)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in ex.slots] == ["0", "1", "0", "1"]
    assert {s["OMP_NUM_THREADS"] for s in ex.slots} == {"3"}
    ex.shutdown()
    assert [s["CUDA_VISIBLE_DEVICES"] for s in LocalExecutor(jobs=3, gpus=[5, 6], jobs_per_gpu=2).slots] == ["5", "6", "5"]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    cpu = LocalExecutor(jobs=3, gpus=[])
    assert [s["CUDA_VISIBLE_DEVICES"] for s in cpu.slots] == ["", "", ""]  # no job can take a GPU unasked
    assert [s["OMP_NUM_THREADS"] for s in cpu.slots] == ["2", "2", "2"]  # 8 cores // 3 jobs
    with pytest.raises(ConfigError, match="jobs_per_gpu"):
        LocalExecutor(jobs=3, gpus=[0])
    with pytest.raises(ConfigError, match="executor='nope'"):
        make_executor("nope")


@pytest.mark.slow
def test_local_jobs_run_in_their_own_process_with_the_slot_environment():
    # GPUs 3 and 4 need not exist: nothing here touches CUDA, the jobs only read their environment
    with LocalExecutor(jobs=2, gpus=[3, 4], threads=1) as ex:
        futures = [ex.submit(slot_facts, "a"), ex.submit(slot_facts, tag="b")]
        facts = [f.result(timeout=300) for f in futures]
    assert [f["tag"] for f in facts] == ["a", "b"]
    assert sorted(f["cuda"] for f in facts) == ["3", "4"]  # both ran at once, each on its own GPU
    assert all(f["omp"] == "1" and f["torch_threads"] == 1 and f["pid"] != os.getpid() for f in facts)


@pytest.mark.slow
def test_local_sweep_records_each_jobs_slot(tmp_path):
    from workbench.experiments import sweep
    lines = []
    table = sweep(TINY_NB, {"a": [1, 2]}, runs_dir=tmp_path, executor=LocalExecutor(jobs=2, gpus=[], threads=1),
                  progress=lines.append)
    assert list(table["status"]) == ["completed", "completed"]
    for run in table["run"]:
        record = json.loads((Path(run) / EXECUTOR_FILE).read_text())
        assert record["executor"] == "local" and record["attempts"][0]["slot"] == "cpu 1 threads"
    assert any("[2/2]" in line and "completed" in line for line in lines)


def _wait_for(predicate, timeout: float = 240.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _last_step(run_dir: Path) -> int:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return -1
    steps = [json.loads(line)["step"] for line in p.read_text().splitlines() if line.strip().endswith("}")]
    return max(steps, default=-1)


@pytest.mark.slow
def test_preempted_slurm_job_is_requeued_and_resumes_its_run(tmp_path):
    """SLURM's preemption signal (USR2, sent by submitit's local executor's task here) reaches the trainer, which
    checkpoints; submitit requeues the job and the second attempt resumes the same run folder to the end."""
    submitit = pytest.importorskip("submitit", reason="the [slurm] extra (submitit) is not installed")
    from workbench.executors import SlurmExecutor, submit_pretrain
    ex = SlurmExecutor(folder=tmp_path / "submitit" / "%j", cluster="local", gpus_per_node=0, time_min=10)
    cfg = tiny_config(tmp_path / "runs", n=256, epochs=6)  # 8 steps an epoch, 48 steps
    job, run_dir = submit_pretrain(cfg, ex)
    assert isinstance(job, submitit.Job)
    record = run_dir / EXECUTOR_FILE
    _wait_for(lambda: record.exists() and _last_step(run_dir) >= 3, what="the first attempt to train")
    first = json.loads(record.read_text())["attempts"][0]
    os.kill(first["pid"], signal.SIGUSR2)  # what SLURM sends before preempting or timing out a job
    assert job.result() == str(run_dir.resolve())
    run = Run(run_dir)
    status = run.status
    assert status["status"] == "completed" and status["step"] == 48
    assert 3 <= status["resumed_from_step"] < 48
    attempts = json.loads(record.read_text())["attempts"]
    assert len(attempts) == 2 and attempts[0]["job_id"] == attempts[1]["job_id"] == job.job_id
    assert attempts[0]["pid"] != attempts[1]["pid"] and Path(attempts[1]["stdout"]).exists()
    steps = [r["step"] for r in run.metrics() if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 48  # resumed where it stopped: no step twice
    assert "Requeued job" in job.stderr() or "Requeued job" in (job.stdout() or "")


@pytest.mark.slow
def test_cli_pretrain_on_two_submitit_tasks_is_one_ddp_run(tmp_path, capsys):
    pytest.importorskip("submitit", reason="the [slurm] extra (submitit) is not installed")
    from workbench.cli import main as cli_main
    code = cli_main(["pretrain", "--method", "simclr", "--data", "shapes", "data.image_size=16", "data.options.n=128",
                     "--backbone", "small_cnn", "model.options.width=8", "--batch-size", "32", "--epochs", "1",
                     "method_options.proj_hidden_dim=32", "method_options.proj_output_dim=16", "train.knn_every=0",
                     "train.device=cpu", "--out", str(tmp_path / "runs"), "--executor", "slurm", "--cluster", "local",
                     "--gpus-per-node", "0", "--tasks-per-node", "2", "--wait"])
    out = capsys.readouterr().out
    assert code == 0, out
    (run,) = list_runs(tmp_path / "runs")
    assert run.status["status"] == "completed" and run.status["world_size"] == 2
    assert run.summary["pretrain"]["world_size"] == 2
    record = json.loads((run.path / EXECUTOR_FILE).read_text())
    assert record["attempts"][0]["num_tasks"] == 2 and f"job {record['job_id']}" in out


@pytest.mark.slow
def test_sweep_as_a_submitit_job_array_records_job_ids_and_logs(tmp_path):
    pytest.importorskip("submitit", reason="the [slurm] extra (submitit) is not installed")
    from workbench.executors import SlurmExecutor
    from workbench.experiments import sweep
    ex = SlurmExecutor(folder=tmp_path / "submitit" / "%j", cluster="local", gpus_per_node=0, time_min=10)
    table = sweep(TINY_NB, {"a": [1, 2]}, runs_dir=tmp_path / "runs", executor=ex)
    assert list(table["status"]) == ["completed", "completed"] and list(table["product"]) == [2.0, 4.0]
    ids = set()
    for run in table["run"]:
        record = json.loads((Path(run) / EXECUTOR_FILE).read_text())
        ids.add(record["job_id"])
        assert record["executor"] == "local" and Path(record["attempts"][0]["stdout"]).exists()
    assert len(ids) == 2


def test_new_run_dir_is_fixed_at_submission_and_never_reused(tmp_path):
    cfg = tiny_config(tmp_path)
    a, b = new_run_dir(cfg), new_run_dir(cfg)
    assert a != b and a.parent == b.parent == tmp_path and "simclr-shapes" in a.name
    named = tiny_config(tmp_path)
    named.name = "mine"
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        new_run_dir(named)
    job = PretrainJob(to_dict(cfg), a)
    again = job.checkpoint()  # submitit's hook: the same run again (which resumes)
    assert again.function.run_dir == str(a) and again.function.config == job.config


def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    """Without a cluster: fake srun/sbatch on the PATH let submitit's SLURM executor render its sbatch file."""
    pytest.importorskip("submitit", reason="the [slurm] extra (submitit) is not installed")
    import argparse

    from workbench.executors import SlurmExecutor, add_arguments, from_args
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path), os.environ["PATH"]]))
    with pytest.raises(ConfigError, match="--cluster local"):
        SlurmExecutor(folder=tmp_path / "s", cluster="slurm")  # no srun here yet
    for tool in ("srun", "sbatch"):
        (tmp_path / tool).write_text("#!/bin/sh\nexit 0\n")
        (tmp_path / tool).chmod(0o755)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--executor", "slurm", "--cluster", "slurm", "--partition", "gpu", "--time", "240",
                              "--nodes", "2", "--gpus-per-node", "8", "--cpus-per-task", "10", "--mem-gb", "64",
                              "--account", "acc", "--qos", "high"])
    ex = from_args(args, tmp_path / "runs", jobs=4)
    assert ex.cluster == "slurm" and ex.nodes * ex.tasks_per_node == 16
    inner = ex._ex._executor
    inner.parameters["map_count"] = 6  # what a 6-combination sweep's job array sets
    script = inner._make_submission_file_text("python -u -m submitit.core._submit F", "uid")
    for line in ("--partition=gpu", "--time=240", "--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8",
                 "--cpus-per-task=10", "--mem=64GB", "--account=acc", "--qos=high", "--array=0-5%4",
                 "--signal=USR2@120", f"--output={tmp_path / 'runs' / '.submitit'}/%A_%a/%A_%a_0_log.out"):
        assert f"#SBATCH {line}" in script, (line, script)
    local = from_args(parser.parse_args(["--executor", "local", "--gpus", "none", "--threads", "2"]), tmp_path, jobs=3)
    assert [s["OMP_NUM_THREADS"] for s in local.slots] == ["2", "2", "2"]
    with pytest.raises(ConfigError, match="--gpus"):
        from_args(parser.parse_args(["--executor", "local", "--gpus", "zero"]), tmp_path)
