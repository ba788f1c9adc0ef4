"""DDP on CPU through torchrun (gloo): SimCLR's gradients over 2 processes equal one process's on the whole batch
(this checks the all-gather with gradients and DDP's averaging), and pretrain runs over 2 processes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.torchrun import torchrun_two

HERE = Path(__file__).parent


@pytest.mark.slow
def test_simclr_ddp_gradients_equal_single_process_on_the_concatenated_batch(tmp_path):
    proc, out = torchrun_two(HERE / "ddp_simclr.py", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    from tests.train.ddp_simclr import build_simclr, fixed_views
    from workbench.methods import Batch, Progress

    method = build_simclr()
    loss = method.training_step(Batch(fixed_views(), 2, None), Progress()).loss
    loss.backward()
    single = {n: p.grad for n, p in method.named_parameters() if p.grad is not None}
    ddp = torch.load(out / "ddp_grads.pt", weights_only=True)
    assert ddp.keys() == single.keys() and len(single) > 10
    for name, g in single.items():
        torch.testing.assert_close(ddp[name], g, rtol=1e-4, atol=1e-5, msg=name)
    # without the cross-rank negatives the gradients would differ: make sure the check can tell
    half = method.training_step(Batch([v[:4] for v in fixed_views()], 2, None), Progress()).loss
    assert abs(float(half.detach()) - float(loss.detach())) > 1e-3

    run_dir = out / "runs" / "ddp"
    import json

    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed" and status["step"] == 2
    assert json.loads((run_dir / "summary.json").read_text())["pretrain"]["world_size"] == 2
    assert (run_dir / "checkpoints" / "last.pt").exists()
