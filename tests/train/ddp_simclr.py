"""Run under ``torchrun --nproc_per_node=2``: SimCLR gradients through DDP (each rank half of a fixed batch,
negatives all-gathered with gradients), then a short ``pretrain`` over both processes.

Usage: torchrun --nproc_per_node=2 tests/train/ddp_simclr.py OUT_DIR. Rank 0 writes OUT_DIR/ddp_grads.pt (the
DDP-averaged gradients) and OUT_DIR/runs/<run> (the pretraining run).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn


def build_simclr(seed: int = 0) -> nn.Module:
    """SimCLR on a width-8 small CNN with BatchNorm in eval mode (running statistics), so every sample's
    forward pass is independent of which other samples share its process (SyncBatchNorm is CUDA-only)."""
    from workbench.methods import build_method
    from workbench.models import build_backbone

    torch.manual_seed(seed)
    method = build_method("simclr", build_backbone("small_cnn", 16, width=8),
                          {"proj_hidden_dim": 32, "proj_output_dim": 16, "temperature": 0.2})
    method.train()
    for m in method.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return method


def fixed_views(batch: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)]


def main(out: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from workbench.methods import Progress
    from workbench.train.setup import StepModule, init_distributed

    rank, world, _ = init_distributed("cpu")
    assert world == 2, f"expected 2 processes, got {world}"
    method = build_simclr()
    views = fixed_views()
    b = views[0].shape[0] // world
    local = [v[rank * b:(rank + 1) * b] for v in views]
    model = DDP(StepModule(method), broadcast_buffers=False, find_unused_parameters=True)
    loss, _, _ = model(local, 2, None, Progress())
    loss.backward()
    if rank == 0:
        grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
        torch.save(grads, out / "ddp_grads.pt")

    # the engine end to end over both processes: shards, DDP, rank 0 writes the run
    from workbench.train import DataConfig, ModelConfig, PretrainConfig, TrainConfig, pretrain

    cfg = PretrainConfig(method="simclr", method_options={"proj_hidden_dim": 32, "proj_output_dim": 16},
                         data=DataConfig(name="shapes", image_size=16, options={"n": 64}),
                         model=ModelConfig(backbone="small_cnn", options={"width": 8}),
                         train=TrainConfig(epochs=1, batch_size=32, log_every=1, knn_every=1, knn_max_train=64,
                                           progress="off", device="cpu"),
                         out=str(out / "runs"), name="ddp")
    pretrain(cfg)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
