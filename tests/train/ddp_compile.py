"""Run under ``torchrun --nproc_per_node=2``: one SimCLR step through DDP eagerly and through the compiled DDP step
(``workbench.train.setup.ddp_step(..., compile=True)``), each rank on half of a fixed batch; then a short compiled
SimCLR ``Trainer`` run with ``train.compile`` over both processes.

Usage: torchrun --nproc_per_node=2 tests/train/ddp_compile.py OUT_DIR. Rank 0 writes OUT_DIR/grads.pt (the
gradients of both steps) and OUT_DIR/graphs.json (for the step and for the engine run: the buckets of each graph
DDPOptimizer split and the call nodes of each (sub)graph the backend compiled; the engine's stepper type).
Compiles use the ``aot_eager`` backend (dynamo and AOTAutograd, no code generation): the graph capture and its
split are the same as inductor's, and a CPU test stays in its time budget.
"""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn


def build_simclr(seed: int = 0) -> nn.Module:
    """SimCLR on a width-16 small CNN (1.1 MB of parameters: more than DDP's 1 MB first bucket, so the step's graph
    has at least two buckets), BatchNorm in eval mode (each sample's forward is independent of its process)."""
    from workbench.methods import build_method
    from workbench.models import build_backbone

    torch.manual_seed(seed)
    method = build_method("simclr", build_backbone("small_cnn", 16, width=16),
                          {"proj_hidden_dim": 64, "proj_output_dim": 32, "temperature": 0.2})
    method.train()
    for m in method.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return method


def fixed_views(batch: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)]


def main(out: Path) -> None:
    from torch._dynamo.backends.distributed import DDPOptimizer

    from workbench.methods import Progress
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig
    from workbench.train.engine import Trainer
    from workbench.train.setup import ddp_step, init_distributed

    rank, world, _ = init_distributed("cpu")
    assert world == 2, f"expected 2 processes, got {world}"
    buckets: list[int] = []  # per graph DDPOptimizer split: its number of buckets (= subgraphs)
    split = DDPOptimizer.compile_fn

    def recording_split(self, gm, example_inputs, **kw):
        compiled = split(self, gm, example_inputs, **kw)
        buckets.append(len(self.buckets))
        return compiled

    DDPOptimizer.compile_fn = recording_split
    graphs: list[int] = []  # call nodes of each (sub)graph the backend compiled
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        graphs.append(sum(1 for n in gm.graph.nodes if n.op.startswith("call")))
        return aot_eager(gm, example_inputs)

    compile_fn = functools.partial(torch.compile, backend=backend)
    views = fixed_views()
    b = views[0].shape[0] // world
    local = [v[rank * b:(rank + 1) * b] for v in views]
    grads, seconds = {}, {}
    for mode in ("eager", "compiled"):
        t0 = time.perf_counter()
        method = build_simclr()
        step = ddp_step(method, torch.device("cpu"), compile=mode == "compiled", compile_fn=compile_fn)
        loss, _, _ = step(local, 2, None, Progress())
        loss.backward()
        grads[mode] = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
        seconds[mode] = round(time.perf_counter() - t0, 2)
    step_record = {"ddp_buckets": list(buckets), "graph_nodes": list(graphs)}

    # the engine with train.compile over both processes (every torch.compile call with the recording backend)
    buckets.clear()
    graphs.clear()
    torch.compile = compile_fn
    cfg = PretrainConfig(method="simclr", method_options={"proj_hidden_dim": 32, "proj_output_dim": 16},
                         data=DataConfig(name="shapes", image_size=16, options={"n": 32}),
                         model=ModelConfig(backbone="small_cnn", options={"width": 8}),
                         train=TrainConfig(epochs=1, batch_size=16, max_steps=2, log_every=1, knn_every=0,
                                           compile=True, progress="off", device="cpu"),
                         out=str(out / "runs"), name="ddp_compile")
    t0 = time.perf_counter()
    trainer = Trainer(cfg).prepare()
    stepper = trainer.parts.stepper
    trainer.run()
    seconds["engine"] = round(time.perf_counter() - t0, 2)
    if rank == 0:
        torch.save(grads, out / "grads.pt")
        (out / "graphs.json").write_text(json.dumps({
            "step": step_record, "engine": {"ddp_buckets": buckets, "graph_nodes": graphs},
            "stepper": type(stepper).__name__, "wrapped": type(getattr(stepper, "_orig_mod", stepper)).__name__,
            "seconds": seconds}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
