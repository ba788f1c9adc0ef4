"""Where sweeps and pretraining jobs run: local processes with a device each, or SLURM through submitit.

Both executors have one ``concurrent.futures``-style interface: ``submit(fn, *args, **kwargs)`` returns a future
(``result()``, ``done()``); ``submit_all([(fn, args), ...])`` submits many at once (a job array on SLURM);
``shutdown()`` (or ``with``) ends it.

- :class:`LocalExecutor`: each job in its own process on its own slot: one GPU each (``CUDA_VISIBLE_DEVICES``
  round-robin over the GPUs, ``jobs_per_gpu`` jobs sharing one GPU by choice), or on a CPU-only machine the cores
  split between the jobs (``OMP_NUM_THREADS`` and ``torch.set_num_threads`` per job), so two jobs never fight over
  one device unasked.
- :class:`SlurmExecutor`: ``submitit.AutoExecutor`` (``pip install 'ssl-workbench[slurm]'``): partition, time, GPUs,
  CPUs, memory; ``cluster="local"`` runs the same submissions as local processes through submitit's local
  executor (no cluster needed: how the tests run it).

:class:`PretrainJob` is a submitit-checkpointable pretraining job: on a preemption/timeout signal the trainer
finishes its step, checkpoints and marks the run ``interrupted``; the job is requeued and the next attempt resumes
the same run folder. With several tasks (``--nodes 2 --gpus-per-node 8``) each task joins one DDP process group
from submitit's job environment. Each run folder records the jobs that wrote it in ``executor.json``.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import multiprocessing
import os
import queue
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from workbench.config import ConfigError

EXECUTORS = ("local", "slurm")
EXECUTOR_FILE = "executor.json"        # in a run folder: the jobs (attempts) that wrote it
ENV_SLOT = "WORKBENCH_EXECUTOR_SLOT"   # set in a LocalExecutor job: its slot ("gpu 1", "cpu 2 threads")
SLURM_HINT = "pip install 'ssl-workbench[slurm]' (submitit), or use executor='local'"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _gpu_count() -> int:
    """GPUs this process may use (``torch.cuda.device_count()``, which does not initialise CUDA here)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover
        return 0


def _pin(env: dict[str, str]) -> None:
    """Worker initializer: this job's slot environment (children such as a notebook kernel inherit it) and the
    torch thread count."""
    os.environ.update(env)
    threads = env.get("OMP_NUM_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    return fn(*args, **kwargs)


class LocalExecutor:
    """Jobs in local processes, one worker process per slot (spawned with the slot's environment, kept for the
    slot's next jobs; a notebook job's kernel is a fresh process every time).

    ``gpus``: "auto" (every visible GPU; none -> CPU slots), a list of GPU indices, or ``[]`` for CPU slots.
    ``jobs``: jobs at once (default: one per GPU slot, or 1 on a CPU). ``jobs_per_gpu``: jobs sharing one GPU.
    ``threads``: CPU threads per job (default: the cores divided by ``jobs``, at least 1).
    """

    def __init__(self, jobs: int | None = None, gpus: str | Sequence[int] = "auto", jobs_per_gpu: int = 1,
                 threads: int | None = None):
        if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
            raise ConfigError(f"LocalExecutor.jobs={jobs!r} must be an integer >= 1 (jobs at once)")
        if not isinstance(jobs_per_gpu, int) or isinstance(jobs_per_gpu, bool) or jobs_per_gpu < 1:
            raise ConfigError(f"LocalExecutor.jobs_per_gpu={jobs_per_gpu!r} must be an integer >= 1")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ConfigError(f"LocalExecutor.threads={threads!r} must be an integer >= 1 (or None: cores / jobs)")
        if gpus == "auto":
            gpu_ids = list(range(_gpu_count()))
        elif isinstance(gpus, (list, tuple)) and all(isinstance(g, int) and g >= 0 for g in gpus):
            gpu_ids = list(gpus)
        else:
            raise ConfigError(f"LocalExecutor.gpus={gpus!r} must be 'auto' or a list of GPU indices ([] = CPU only)")
        if gpu_ids:
            n = jobs or len(gpu_ids) * jobs_per_gpu
            places = [g for _ in range(jobs_per_gpu) for g in gpu_ids]  # round-robin: 0 1 0 1 with two per GPU
            if n > len(places):
                raise ConfigError(f"LocalExecutor.jobs={n} needs more slots than {len(gpu_ids)} GPU(s) x "
                                  f"jobs_per_gpu={jobs_per_gpu}; raise jobs_per_gpu to share GPUs on purpose")
            per = threads or max(1, _cpus() // n)
            self.slots = [{"CUDA_VISIBLE_DEVICES": str(g), "OMP_NUM_THREADS": str(per), "MKL_NUM_THREADS": str(per),
                           ENV_SLOT: f"gpu {g}"} for g in places[:n]]
        else:
            n = jobs or 1
            per = threads or max(1, _cpus() // n)
            self.slots = [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(per), "MKL_NUM_THREADS": str(per),
                           ENV_SLOT: f"cpu {per} threads"} for _ in range(n)]
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(len(self.slots)):
            self._free.put(i)
        self._threads = cf.ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="workbench-local")
        self._pools: list[cf.ProcessPoolExecutor | None] = [None] * len(self.slots)
        self._ctx = multiprocessing.get_context("spawn")

    def _run_in_slot(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        slot = self._free.get()
        try:
            pool = self._pools[slot]
            if pool is None:  # one worker process per slot, started on first use and kept for its next jobs
                pool = self._pools[slot] = cf.ProcessPoolExecutor(max_workers=1, mp_context=self._ctx,
                                                                  initializer=_pin, initargs=(self.slots[slot],))
            return pool.submit(_call, fn, args, kwargs).result()
        except cf.process.BrokenProcessPool:
            self._pools[slot] = None  # the worker died (killed, out of memory): the slot's next job gets a new one
            raise
        finally:
            self._free.put(slot)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` in the worker process of the next free slot; returns its Future."""
        return self._threads.submit(self._run_in_slot, fn, args, kwargs)

    def submit_all(self, calls: Iterable[tuple[Callable[..., Any], tuple]]) -> list[cf.Future]:
        return [self.submit(fn, *args) for fn, args in calls]

    def shutdown(self, wait: bool = True) -> None:
        self._threads.shutdown(wait=wait)
        for pool in self._pools:
            if pool is not None:
                pool.shutdown(wait=wait)

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def describe(self) -> str:
        return f"local: {len(self.slots)} slot(s): " + ", ".join(s[ENV_SLOT] for s in self.slots)


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"executor 'slurm' needs submitit, which is not installed; {SLURM_HINT}") from None
    return submitit


class SlurmExecutor:
    """SLURM through ``submitit.AutoExecutor``: one job per ``submit``, a job array for ``submit_all``.

    ``folder`` holds submitit's pickles and logs (``%j`` = the job id). ``time_min`` is the wall-time limit,
    ``gpus_per_node``/``tasks_per_node`` (default: one task per GPU, at least one), ``cpus_per_task``, ``mem_gb``,
    ``nodes``, ``partition``, ``array_parallelism`` (array jobs at once), ``account``/``constraint``/``qos``, and
    ``extra`` (more ``#SBATCH`` options, e.g. ``{"requeue": True}``). ``cluster``: None (SLURM when ``sbatch`` is
    on the PATH, else submitit's local executor), "slurm", or "local" (same submissions as local processes).
    """

    def __init__(self, folder: str | os.PathLike = "runs/.submitit/%j", partition: str | None = None,
                 time_min: int = 60, gpus_per_node: int = 1, tasks_per_node: int | None = None,
                 cpus_per_task: int | None = None, mem_gb: float | None = None, nodes: int = 1,
                 array_parallelism: int | None = None, account: str | None = None, constraint: str | None = None,
                 qos: str | None = None, extra: Mapping[str, Any] | None = None, cluster: str | None = None,
                 name: str = "workbench", signal_delay_s: int = 120):
        submitit = _submitit()
        for field, value, low in (("time_min", time_min, 1), ("gpus_per_node", gpus_per_node, 0), ("nodes", nodes, 1),
                                  ("tasks_per_node", tasks_per_node, 1), ("cpus_per_task", cpus_per_task, 1),
                                  ("array_parallelism", array_parallelism, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ConfigError(f"SlurmExecutor.{field}={value!r} must be an integer >= {low}")
        if mem_gb is not None and (not isinstance(mem_gb, (int, float)) or mem_gb <= 0):
            raise ConfigError(f"SlurmExecutor.mem_gb={mem_gb!r} must be a positive number of GB")
        if cluster not in (None, "slurm", "local"):
            raise ConfigError(f"SlurmExecutor.cluster={cluster!r} is not allowed; choose None (auto), 'slurm' or "
                              "'local' (submitit's local executor)")
        self.folder = str(folder)
        try:
            self._ex = submitit.AutoExecutor(folder=self.folder, cluster=cluster)
        except RuntimeError as e:  # cluster="slurm" where srun/sbatch are missing
            raise ConfigError(f"executor 'slurm': {e}; on a machine without SLURM, --cluster local runs the same "
                              "submission as local processes") from None
        self.cluster = self._ex.cluster
        self.tasks_per_node = tasks_per_node or max(1, gpus_per_node)
        self.nodes = nodes
        params: dict[str, Any] = dict(timeout_min=time_min, gpus_per_node=gpus_per_node, nodes=nodes,
                                      tasks_per_node=self.tasks_per_node, name=name)
        if cpus_per_task is not None:
            params["cpus_per_task"] = cpus_per_task
        if mem_gb is not None:
            params["mem_gb"] = mem_gb
        slurm = {"partition": partition, "array_parallelism": array_parallelism, "account": account,
                 "constraint": constraint, "qos": qos, "signal_delay_s": signal_delay_s}
        params.update({f"slurm_{k}": v for k, v in slurm.items() if v is not None})
        if extra:
            params["slurm_additional_parameters"] = dict(extra)
        self._ex.update_parameters(**params)
        self.parameters = params

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        """Submit ``fn(*args, **kwargs)`` as one job; returns the submitit Job (``result()``, ``done()``,
        ``job_id``, ``paths.stdout``)."""
        return self._ex.submit(fn, *args, **kwargs)

    def submit_all(self, calls: Iterable[tuple[Callable[..., Any], tuple]]) -> list:
        """Submit many calls as one job array (one job each where the cluster has no arrays)."""
        calls = list(calls)
        if not calls:
            return []
        with self._ex.batch():
            jobs = [self._ex.submit(fn, *args) for fn, args in calls]
        return jobs

    def shutdown(self, wait: bool = True) -> None:  # jobs live on in the cluster's queue
        return None

    def __enter__(self) -> "SlurmExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def describe(self) -> str:
        return f"{self.cluster} (submitit): {self.nodes} node(s) x {self.tasks_per_node} task(s); logs in {self.folder}"


def make_executor(executor: "str | LocalExecutor | SlurmExecutor | None" = None, jobs: int | None = None,
                  **options: Any):
    """An executor from a name ("local", "slurm") and its options, or the given executor object unchanged."""
    if executor is None or executor == "local":
        return LocalExecutor(jobs=jobs, **options)
    if executor == "slurm":
        if jobs is not None:
            options.setdefault("array_parallelism", jobs)
        return SlurmExecutor(**options)
    if hasattr(executor, "submit"):
        return executor
    raise ConfigError(f"executor={executor!r} is not allowed; choose one of {EXECUTORS} or pass an object with "
                      "submit(fn, *args)")


# ---- what a job records in its run folder --------------------------------------------------------------------

def job_record() -> dict[str, Any]:
    """This process's job, for the run folder: submitit's job id, array index, task, hosts and log files, or the
    local slot; {} outside an executor."""
    now = _dt.datetime.now().isoformat(timespec="seconds")
    base = {"host": socket.gethostname(), "pid": os.getpid(), "started": now}
    if os.environ.get("SUBMITIT_EXECUTOR"):
        try:
            import submitit

            env = submitit.JobEnvironment()
            paths = env.paths
            return {**base, "executor": env.cluster, "job_id": env.job_id, "array_job_id": env.array_job_id,
                    "array_task_id": env.array_task_id, "global_rank": env.global_rank, "num_tasks": env.num_tasks,
                    "num_nodes": env.num_nodes, "hostnames": list(env.hostnames),
                    "stdout": str(paths.stdout), "stderr": str(paths.stderr),
                    "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)}
        except Exception as e:  # a record is never worth failing the job for
            return {**base, "executor": os.environ["SUBMITIT_EXECUTOR"], "error": f"{type(e).__name__}: {e}"}
    if os.environ.get(ENV_SLOT):
        return {**base, "executor": "local", "slot": os.environ[ENV_SLOT],
                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    return {}


def record_job(run: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Append this process's job (``job_record``) to ``run``'s executor.json ``attempts`` (a requeued job adds a
    second attempt); nothing outside an executor. Returns the record written."""
    from workbench.runs import atomic_write_json

    record = job_record()
    if not record:
        return None
    record.update(extra or {})
    path = Path(run) / EXECUTOR_FILE
    try:
        import json

        previous = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        previous = {}
    attempts = list(previous.get("attempts") or []) if isinstance(previous, dict) else []
    attempts.append(record)
    atomic_write_json(path, {"attempts": attempts, "job_id": record.get("job_id"), "executor": record["executor"]})
    return record


class _RecordJob:
    """Trainer callback: write executor.json once the run folder exists."""

    def on_start(self, run: Any, info: Mapping[str, Any]) -> None:
        record_job(run, {"world_size": info.get("world_size")})


# ---- pretraining as a (requeueable, multi-node) submitit job ---------------------------------------------------

class PretrainJob:
    """``workbench pretrain`` as a submitit job that survives preemption: a new run of ``config`` in
    ``run_dir``, or the resumption of ``run_dir`` where an earlier attempt left a run there.

    submitit calls :meth:`checkpoint` on its preemption/timeout signal (USR2) and requeues what it returns. Here
    that signal first reaches the trainer as SIGTERM would (finish the step, checkpoint, mark ``interrupted``); then
    submitit's own handler checkpoints this job (the same job again, which resumes) and requeues it.
    """

    def __init__(self, config: Mapping[str, Any], run_dir: str | os.PathLike):
        self.config = dict(config)
        self.run_dir = str(run_dir)
        self._preempted = False

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "run_dir": self.run_dir, "_preempted": False}

    def _distributed_env(self) -> tuple[int, int]:
        """Export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from submitit's job environment (several tasks);
        returns (rank, world size)."""
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # CUDA_VISIBLE_DEVICES stays as SLURM set it: the engine picks cuda:LOCAL_RANK
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return env.global_rank, env.num_tasks

    def __call__(self) -> str:
        from workbench.train.engine import Trainer, TrainingInterrupted, pretrain

        rank, world = self._distributed_env() if os.environ.get("SUBMITIT_EXECUTOR") else (0, 1)
        # decided before the process group forms, so before rank 0 can have made the folder: all ranks agree
        resume = self.run_dir if (Path(self.run_dir) / "config.json").exists() else None
        submitit_handler = signal.getsignal(signal.SIGUSR2)

        def on_preempt(signum: int, frame: Any) -> None:
            self._preempted = True
            term = signal.getsignal(signal.SIGTERM)
            if isinstance(getattr(term, "__self__", None), Trainer):
                term(signal.SIGTERM, frame)  # the trainer stops after this step with a checkpoint
            elif callable(submitit_handler):
                submitit_handler(signum, frame)  # not training (yet): requeue now

        if callable(submitit_handler):
            signal.signal(signal.SIGUSR2, on_preempt)
        callbacks = [_RecordJob()] if rank == 0 else []
        config = None if resume else {**self.config, "out": str(Path(self.run_dir).parent),
                                      "name": Path(self.run_dir).name}
        try:
            run = pretrain(config, callbacks=callbacks, resume=resume)
        except TrainingInterrupted:
            if self._preempted and callable(submitit_handler):
                submitit_handler(signal.SIGUSR2, None)  # checkpoint(): this job again; requeue; exit
                raise SystemExit(-1)  # ranks > 0: submitit leaves the exit to rank 0's requeue
            raise
        return str(run.path) if rank == 0 else str(Path(self.run_dir))

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's hook: the job to requeue: the same run, which the next attempt resumes."""
        import submitit

        return submitit.helpers.DelayedSubmission(PretrainJob(self.config, self.run_dir))


def new_run_dir(config: Any) -> Path:
    """The run folder a submitted pretraining will write, fixed at submission (so a requeued attempt finds it):
    ``out/name``, or ``out/<time>-<method>-<data>-<id>``."""
    name = config.name or (f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{config.method}-{config.data.name}-"
                           f"{secrets.token_hex(3)}")
    path = Path(config.out) / name
    if path.exists():
        raise ConfigError(f"PretrainConfig.name={name!r}: {path} already exists; choose another name or resume it")
    return path


def submit_pretrain(config: Any, executor: "SlurmExecutor | LocalExecutor"):
    """Submit a pretraining of ``config`` (PretrainConfig) to ``executor``; returns (job, run folder).
    On a SlurmExecutor with several tasks (nodes x tasks_per_node) the tasks train one DDP run."""
    from workbench.config import to_dict

    run_dir = new_run_dir(config)
    job = executor.submit(PretrainJob(to_dict(config), run_dir.resolve()))
    return job, run_dir


def wait(futures: Sequence[Any], progress: Callable[[int, int, Any], None] | None = None,
         poll_s: float = 2.0) -> list[Any]:
    """Wait for every future/job; ``progress(done, total, job)`` as each finishes. Returns them in order."""
    import time

    pending = list(range(len(futures)))
    done = 0
    while pending:
        still = []
        for i in pending:
            if futures[i].done():
                done += 1
                if progress is not None:
                    progress(done, len(futures), futures[i])
            else:
                still.append(i)
        pending = still
        if pending:
            time.sleep(poll_s if not isinstance(futures[pending[0]], cf.Future) else min(poll_s, 0.2))
    return list(futures)


# ---- the command line's executor options ----------------------------------------------------------------------

def add_arguments(parser: Any, local: bool = True) -> None:
    """``--executor`` and its options (local slots; SLURM resources) on an argparse parser."""
    g = parser.add_argument_group("executor (where the jobs run)")
    g.add_argument("--executor", choices=EXECUTORS if local else ("slurm",), default=None,
                   help="local: processes with a GPU (or a share of the CPU cores) each; slurm: submitit jobs "
                        "(pip install 'ssl-workbench[slurm]')")
    if local:
        g.add_argument("--gpus", default=None, metavar="0,1,...", help="local: GPU indices to use (default: all "
                       "visible; 'none' = CPU only)")
        g.add_argument("--jobs-per-gpu", type=int, default=1, help="local: jobs sharing one GPU (default 1)")
        g.add_argument("--threads", type=int, default=None, help="local: CPU threads per job (default: cores / jobs)")
    g.add_argument("--partition", default=None, help="slurm: partition")
    g.add_argument("--time", type=int, default=60, metavar="MINUTES", help="slurm: wall-time limit per job "
                   "(default 60); a job that reaches it checkpoints and is requeued")
    g.add_argument("--nodes", type=int, default=1, help="slurm: nodes per job (DDP across them for pretrain)")
    g.add_argument("--gpus-per-node", type=int, default=1, help="slurm: GPUs per node (one task each; default 1)")
    g.add_argument("--tasks-per-node", type=int, default=None, help="slurm: processes per node (default: one per GPU)")
    g.add_argument("--cpus-per-task", type=int, default=None, help="slurm: CPUs per task")
    g.add_argument("--mem-gb", type=float, default=None, help="slurm: memory per node in GB")
    g.add_argument("--account", default=None, help="slurm: account")
    g.add_argument("--qos", default=None, help="slurm: quality of service")
    g.add_argument("--constraint", default=None, help="slurm: node constraint")
    g.add_argument("--slurm-folder", default=None, metavar="DIR", help="slurm: submitit's pickles and logs "
                   "(default: <runs folder>/.submitit/%%j)")
    g.add_argument("--cluster", choices=("slurm", "local"), default=None,
                   help="slurm: 'local' runs the same submitit jobs as processes on this machine (a dry run of a "
                        "cluster submission); default: SLURM where sbatch exists")


def from_args(args: Any, runs_dir: str | os.PathLike, jobs: int | None = None, single_task: bool = False):
    """The executor the parsed ``add_arguments`` options describe (None when ``--executor`` was not given).
    ``single_task``: one process per job whatever the GPUs per node (a notebook job, which is not a DDP run)."""
    if args.executor is None:
        return None
    if args.executor == "local":
        gpus: Any = "auto"
        if getattr(args, "gpus", None):
            text = args.gpus.strip().lower()
            try:
                gpus = [] if text in ("none", "cpu", "") else [int(g) for g in text.split(",") if g.strip()]
            except ValueError:
                raise ConfigError(f"--gpus {args.gpus!r} must be GPU indices like 0,1 or 'none'") from None
        return LocalExecutor(jobs=jobs, gpus=gpus, jobs_per_gpu=args.jobs_per_gpu, threads=args.threads)
    folder = args.slurm_folder or str(Path(runs_dir) / ".submitit" / "%j")
    return SlurmExecutor(folder=folder, partition=args.partition, time_min=args.time, nodes=args.nodes,
                         gpus_per_node=args.gpus_per_node,
                         tasks_per_node=1 if single_task else args.tasks_per_node, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                         account=args.account, qos=args.qos, constraint=args.constraint, cluster=args.cluster,
                         array_parallelism=jobs)


__all__ = ["EXECUTORS", "EXECUTOR_FILE", "LocalExecutor", "PretrainJob", "SlurmExecutor", "job_record",
           "add_arguments", "from_args", "make_executor", "new_run_dir", "record_job", "submit_pretrain", "wait"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit("workbench.executors is a library module; use `workbench sweep --executor ...`")
