"""What one training step asks of the host, per method: eager ops, host syncs and torch.compile's coverage.

    python benchmarks/step_profile.py                                # every method, batch 256, 32 px, CPU
    python benchmarks/step_profile.py --methods simclr dino --batch-size 64
    python benchmarks/step_profile.py --no-compile --table          # counts only, a Markdown table at the end
    python benchmarks/step_profile.py --no-compile --ddp --table    # the compiled DDP step: graphs and its splits

Each method trains through the engine itself (``workbench.train.Trainer``, fp32 on the CPU) for a few steps under
``workbench.device.HostSyncCounter``. Counts are attributed to the engine's step counter, so the row of step k is
everything the loop does between two increments; the profiled step (``steps - 2``) is neither a log step nor a check
step (the engine checks finiteness and DDP stop flags, one sync, on log steps and before checkpoints / epoch ends:
RankMe, the loss as a float and a CUDA synchronize happen there too, on purpose). Ops and syncs are split by phase:
``views`` (batch indexing + augmentation), ``loss`` (the method's training_step: forward and loss), ``update``
(backward, optimizer, schedule, EMA teachers) and ``engine`` (everything else in the loop). ``h2d``: tensors made
from Python data (a host -> device copy on a GPU). ``optim host scalars``: ``.item()`` of a torch optimizer's step
counters, which live on the CPU beside CUDA parameters (no device sync there; the fused AdamW/SGD the engine uses on
CUDA keeps them on the device). A sync on a CPU costs nothing, on a GPU it stalls the host until the device has
caught up; these counts predict that. ``sites`` names the workbench line of every sync and copy.

Compile coverage (not with ``--no-compile``): a second short run with ``train.compile=True`` where every
``torch.compile`` call uses a recording backend (no code generation: what dynamo captures does not depend on the
backend). It reports graphs captured, graph breaks (with dynamo's reasons), graphs captured again after the first
step (recompiles), and the fraction of the student's and of the teachers' parameters that appear in a captured graph.

DDP (``--ddp``): a third run per method compiles the step as a DDP run does (``workbench.train.setup.ddp_step``: the
DDP-wrapped step compiled whole, here in a one-process gloo group) and adds, besides the same counts, the subgraphs
dynamo's DDPOptimizer cut each captured graph into at DDP's gradient buckets (``ddp_splits``; more than one lets a
bucket's all-reduce overlap the rest of the backward on a GPU). Its graphs are those subgraphs; DDP's own forward
adds three graph breaks by design (dynamo runs it eagerly: its logger and ``_inside_ddp_forward``).

Targets (issue 19): zero data-dependent syncs in ``views`` and ``loss``; at most one sync per step in all; every
method's student and teacher compiled. Prints one JSON line per method, then (``--table``) a Markdown table.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# method -> (backbone, method options); DINO on a ViT is where its multi-crop and encode() path matter
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "simclr": ("small_cnn", {}), "mocov3": ("small_cnn", {}), "byol": ("small_cnn", {}),
    "simsiam": ("small_cnn", {}), "directpred": ("small_cnn", {"direct_pred": True}),
    "barlow_twins": ("small_cnn", {}), "vicreg": ("small_cnn", {}), "swav": ("small_cnn", {}),
    "dino": ("vit_tiny", {}), "mae": ("vit_tiny", {}), "ijepa": ("vit_tiny", {}),
}
METHOD_NAME = {"directpred": "simsiam"}
PHASES = ("views", "loss", "update", "engine")


def make_config(key: str, batch_size: int, image_size: int, steps: int, out: str, compile: bool) -> Any:
    """A short fp32 CPU run of ``key`` on ``shapes`` (no kNN monitor, one log step: step 0)."""
    from workbench.config import from_dict
    from workbench.train.config import PretrainConfig

    backbone, options = METHODS[key]
    n = batch_size * (steps + 2)
    model_options = {"depth": 2} if backbone.startswith("vit") else {}
    return from_dict(PretrainConfig, {
        "method": METHOD_NAME.get(key, key), "method_options": options,
        "data": {"name": "shapes", "image_size": image_size, "options": {"n": n}},
        "model": {"backbone": backbone, "options": model_options},
        "train": {"epochs": 1, "batch_size": batch_size, "device": "cpu", "precision": "fp32", "compile": compile,
                  "log_every": 1000, "knn_every": 0, "max_steps": steps, "progress": "off", "seed": 0},
        "out": out})


class Phases:
    """Which phase of the step the loop is in (set by wrappers around the engine's parts)."""

    def __init__(self) -> None:
        self.now = "engine"

    @contextlib.contextmanager
    def enter(self, name: str):
        prev, self.now = self.now, name
        try:
            yield
        finally:
            self.now = prev


def wrap(obj: Any, attr: str, phases: Phases, name: str) -> None:
    """Run ``obj.attr`` in phase ``name``: through a subclass made for ``obj`` (so no instance attribute reaches a
    checkpointed state dict)."""
    if attr in vars(obj):  # an instance attribute (LambdaLR wraps its optimizer's step so): wrap that
        inner = vars(obj)[attr]

        def wrapped_instance(*a: Any, **k: Any) -> Any:
            with phases.enter(name):
                return inner(*a, **k)

        setattr(obj, attr, wrapped_instance)
        return
    cls = type(obj)
    fn = getattr(cls, attr)

    def wrapped(self: Any, *a: Any, **k: Any) -> Any:
        with phases.enter(name):
            return fn(self, *a, **k)

    obj.__class__ = type(cls.__name__, (cls,), {attr: wrapped})


def wrap_generator(obj: Any, attr: str, phases: Phases, name: str) -> None:
    """A generator function whose every ``next`` runs in phase ``name`` (the batches' ``epoch``)."""
    fn = getattr(obj, attr)

    def wrapped(*a: Any, **k: Any):
        it = fn(*a, **k)
        while True:
            with phases.enter(name):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    setattr(obj, attr, wrapped)


def profile_counts(key: str, batch_size: int, image_size: int, steps: int) -> dict[str, Any]:
    """Ops and syncs per phase of step ``steps - 2`` (neither a log step nor a check step) of a ``steps``-step run."""
    from workbench.device import HostSyncCounter
    import workbench.train.batches as batches_mod
    from workbench.train.engine import Trainer

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(make_config(key, batch_size, image_size, steps, out, compile=False)).prepare()
        phases = Phases()
        p = trainer.parts
        wrap(p.stepper, "forward", phases, "loss")
        for obj, attr in ((p.optimizer, "step"), (p.scheduler, "step"), (p.method, "update_teacher")):
            wrap(obj, attr, phases, "update")
        orig_backward = torch.Tensor.backward

        def backward(self: torch.Tensor, *a: Any, **k: Any) -> Any:
            with phases.enter("update"):
                return orig_backward(self, *a, **k)

        orig_make = batches_mod.make_batches

        def make_batches(*a: Any, **k: Any) -> Any:
            b = orig_make(*a, **k)
            wrap_generator(b, "epoch", phases, "views")
            return b

        per_step: dict[int, dict[str, collections.Counter]] = collections.defaultdict(
            lambda: {"ops": collections.Counter(), "syncs": collections.Counter(), "h2d": collections.Counter(),
                     "host": collections.Counter()})
        sites: collections.Counter = collections.Counter()

        class Attributing(HostSyncCounter):
            def __init__(self) -> None:
                super().__init__(sites=True)

            def _op(self, name: str) -> None:
                per_step[trainer.step]["ops"][phases.now] += 1

            def _host_scalar(self) -> None:
                per_step[trainer.step]["host"][phases.now] += 1

            def _note(self, kind: str, sync: bool = True) -> None:
                rec = per_step[trainer.step]
                rec["syncs" if sync else "h2d"][phases.now] += 1
                sites[(phases.now, kind, self._site())] += 1 if trainer.step == steps - 2 else 0

        counter = Attributing()
        torch.Tensor.backward = backward
        batches_mod.make_batches = make_batches
        try:
            with counter, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                trainer.run()
                wall = time.perf_counter() - t0
        finally:
            torch.Tensor.backward = orig_backward
            batches_mod.make_batches = orig_make
        k = steps - 2  # attributed to step value k: the tail of step k-1 and the head of step k (neither a check step)
        rec = per_step[k]
        row = {"method": key, "backbone": METHODS[key][0], "batch_size": batch_size, "image_size": image_size,
               "ops": {ph: rec["ops"][ph] for ph in PHASES}, "syncs": {ph: rec["syncs"][ph] for ph in PHASES},
               "h2d": {ph: rec["h2d"][ph] for ph in PHASES}, "optimizer_host_scalars": sum(rec["host"].values()),
               "wall_s_all_steps": round(wall, 2)}
        row["ops_total"] = sum(row["ops"].values())
        row["syncs_total"] = sum(row["syncs"].values())
        row["sites"] = [f"{ph}:{kind}@{site} x{n}" for (ph, kind, site), n in sites.most_common() if n]
        return row


# ------------------------------------------------------------------------------------------------ compile
def profile_compile(key: str, batch_size: int, image_size: int, steps: int, ddp: bool = False) -> dict[str, Any]:
    """Graphs, graph breaks, recompiles and parameter coverage of ``train.compile=True`` over ``steps`` steps.

    ``ddp``: the step as a DDP run compiles it (``workbench.train.setup.ddp_step``: the DDP-wrapped step compiled
    whole, in a one-process gloo group), with ``ddp_splits``: the subgraphs dynamo's DDPOptimizer made of each graph
    at DDP's bucket boundaries (25 MB buckets, the first 1 MB)."""
    import torch._dynamo as dynamo
    import torch.distributed as dist
    from torch._dynamo.backends.distributed import DDPOptimizer
    from torch._dynamo.utils import counters

    from workbench.train.engine import Trainer

    dynamo.reset()
    counters.clear()
    seen: set[int] = set()
    graphs: list[dict[str, Any]] = []
    trainer_box: list[Any] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        # parameters reached as module attributes (get_attr nodes) are part of this graph
        held = set()
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                with contextlib.suppress(AttributeError):
                    obj = gm
                    for part in node.target.split("."):
                        obj = getattr(obj, part)
                    if isinstance(obj, torch.Tensor):
                        held.add(id(obj))
        step = trainer_box[0].step if trainer_box and trainer_box[0].step is not None else -1
        graphs.append({"step": step, "nodes": sum(1 for n in gm.graph.nodes if n.op.startswith("call"))})

        def run(*args: Any) -> Any:  # a graph is reused for modules of the same structure: record every call's inputs
            seen.update(held)
            seen.update(id(a) for a in args if isinstance(a, torch.Tensor))
            return gm.forward(*args)

        return run

    orig_compile = torch.compile

    def recording_compile(model: Any = None, **kwargs: Any) -> Any:
        kwargs["backend"] = backend
        kwargs.pop("mode", None)
        kwargs.pop("options", None)
        if model is None:
            return lambda m: orig_compile(m, **kwargs)
        return orig_compile(model, **kwargs)

    splits: list[int] = []
    orig_split = DDPOptimizer.compile_fn

    def recording_split(self: Any, gm: torch.fx.GraphModule, example_inputs: list, **kw: Any) -> Any:
        compiled = orig_split(self, gm, example_inputs, **kw)
        splits.append(len(self.buckets))
        return compiled

    torch.compile = recording_compile
    DDPOptimizer.compile_fn = recording_split
    err = None
    try:
        with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = Trainer(make_config(key, batch_size, image_size, steps, out, compile=True)).prepare()
            trainer_box.append(trainer)
            if ddp:
                from workbench.train.setup import ddp_step

                if not dist.is_initialized():
                    dist.init_process_group("gloo", store=dist.FileStore(str(Path(out) / "store"), 1), rank=0,
                                            world_size=1)
                trainer.parts.stepper = ddp_step(trainer.parts.method, trainer.device, compile=True)
            try:
                trainer.run()
            except Exception as e:  # a compile failure is a finding, not a crash of the profile
                err = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            method = trainer.parts.method
    finally:
        torch.compile = orig_compile
        DDPOptimizer.compile_fn = orig_split
    teachers = {id(p) for m in method.teacher_modules() for p in m.parameters()}
    student = {id(p) for p in method.parameters() if p.requires_grad and id(p) not in teachers}
    breaks = dict(counters["graph_break"])
    return {
        "graphs": len(graphs), "graphs_after_step0": sum(1 for g in graphs if g["step"] > 0),
        "graph_nodes": sum(g["nodes"] for g in graphs),
        "graph_breaks": sum(breaks.values()), "break_reasons": {k[:160]: v for k, v in breaks.items()},
        "student_coverage": round(len(student & seen) / max(1, len(student)), 3),
        "teacher_coverage": (round(len(teachers & seen) / len(teachers), 3) if teachers else None),
        "compile_error": err, **({"ddp_splits": splits} if ddp else {}),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| method | backbone | ops views | ops loss | ops update | ops engine | syncs views | syncs loss | "
            "syncs update | syncs engine | h2d | optim host scalars | graphs | breaks | recompiles | student cov | "
            "teacher cov |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = r.get("compile") or {}
        tc = c.get("teacher_coverage")
        lines.append("| " + " | ".join(str(x) for x in (
            r["method"], r["backbone"], *(r["ops"][p] for p in PHASES), *(r["syncs"][p] for p in PHASES),
            sum(r["h2d"].values()), r.get("optimizer_host_scalars", "-"), c.get("graphs", "-"),
            c.get("graph_breaks", "-"), c.get("graphs_after_step0", "-"),
            c.get("student_coverage", "-"), "-" if tc is None else tc)) + " |")
    return "\n".join(lines)


def ddp_table(rows: list[dict[str, Any]]) -> str:
    """The compile runs of the DDP step (``--ddp``): graphs, breaks, recompiles, DDPOptimizer subgraphs, coverage."""
    head = ("| method | backbone | graphs | breaks | recompiles | DDPOptimizer subgraphs | student cov | teacher cov | "
            "error |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = r["compile_ddp"]
        tc = c.get("teacher_coverage")
        lines.append("| " + " | ".join(str(x) for x in (
            r["method"], r["backbone"], c["graphs"], c["graph_breaks"], c["graphs_after_step0"],
            "+".join(map(str, c["ddp_splits"])) or "-", c["student_coverage"], "-" if tc is None else tc,
            c["compile_error"] or "")) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="steps per run (>= 4: the profiled step is steps - 2)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile-coverage run")
    ap.add_argument("--ddp", action="store_true", help="also the compile run of a DDP step (the wrapped step compiled)")
    ap.add_argument("--table", action="store_true", help="print a Markdown table after the JSON lines")
    args = ap.parse_args()
    if args.steps < 4:
        ap.error("--steps must be >= 4 (step 0 logs and the last step checks; the profiled step is neither)")
    torch.manual_seed(0)
    rows = []
    for key in args.methods:
        row = profile_counts(key, args.batch_size, args.image_size, args.steps)
        if not args.no_compile:
            row["compile"] = profile_compile(key, args.batch_size, args.image_size, args.steps)
        if args.ddp:
            row["compile_ddp"] = profile_compile(key, args.batch_size, args.image_size, args.steps, ddp=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.table:
        print(table(rows))
        if args.ddp:
            print()
            print(ddp_table(rows))


if __name__ == "__main__":
    main()
