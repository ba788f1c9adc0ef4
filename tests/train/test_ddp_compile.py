"""DDP + torch.compile on CPU through torchrun (gloo, 2 processes): the compiled DDP-wrapped step gives eager DDP's
gradients, and dynamo's DDPOptimizer split its graph at DDP's bucket boundaries (so on a GPU the all-reduce of the
late layers' buckets can overlap the backward of the early ones); the engine steps through the compiled wrapper
when ``train.compile`` is on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train.torchrun import torchrun_two

HERE = Path(__file__).parent


@pytest.mark.slow
def test_compiled_ddp_step_matches_eager_ddp_and_is_split_at_buckets(tmp_path):
    proc, out = torchrun_two(HERE / "ddp_compile.py", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    grads = torch.load(out / "grads.pt", weights_only=True)
    eager, compiled = grads["eager"], grads["compiled"]
    assert eager.keys() == compiled.keys() and len(eager) > 10
    for name, g in eager.items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(compiled[name], g, rtol=1e-4, atol=1e-6, msg=name)

    rec = json.loads((out / "graphs.json").read_text())
    step = rec["step"]
    # one graph for the whole step (both views through the backbone, the projector, the all-gather and the loss),
    # which DDPOptimizer split at DDP's buckets (1.1 MB of parameters: the 1 MB first bucket and the rest); the
    # backend compiled each piece: without the split it would have compiled one graph
    assert step["ddp_buckets"] == [2] and len(step["graph_nodes"]) == 2, rec

    # the engine stepped through the compiled DDP wrapper; the step traced whole once (its 0.3 MB model fits the
    # first bucket: one graph), not again at step 1 and not per submodule
    assert rec["stepper"] == "OptimizedModule" and rec["wrapped"] == "DistributedDataParallel", rec
    assert rec["engine"]["ddp_buckets"] == [1] and len(rec["engine"]["graph_nodes"]) == 1, rec
    status = json.loads((out / "runs" / "ddp_compile" / "status.json").read_text())
    assert status["status"] == "completed" and status["step"] == 2


def test_syncbn_submodule_stays_eager_when_the_whole_step_is_compiled():
    """SyncBatchNorm breaks a compiled graph at every norm layer: compile_method binds the entry points of the
    submodules holding it through torch.compiler.disable, so compiling the whole step (as a DDP run does) runs the
    backbone eagerly and still captures the projector and the loss."""
    import functools

    import torch.nn as nn

    from workbench.methods import Progress, build_method
    from workbench.models import build_backbone
    from workbench.train.setup import StepModule, compile_method

    torch.manual_seed(0)
    method = build_method("simclr", build_backbone("small_cnn", 16, width=8),
                          {"proj_hidden_dim": 32, "proj_output_dim": 16})
    method.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(method.backbone)
    method.eval()  # SyncBatchNorm normalises with its running statistics (no process group needed on a CPU)
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    compile_fn = functools.partial(torch.compile, backend=backend)
    assert compile_method(method, compile_fn) == ["backbone"]
    views = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    loss, _, _ = compile_fn(StepModule(method))(views, 2, None, Progress())
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op.startswith("call")]
    assert graphs and any("linear" in t for t in targets)  # the projector and the loss are compiled
    assert not any("conv" in t or "batch_norm" in t for t in targets), targets  # the backbone is not
    eager, _, _ = StepModule(method)(views, 2, None, Progress())
    torch.testing.assert_close(loss, eager)
