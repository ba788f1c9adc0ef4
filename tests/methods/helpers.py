"""Shared by the method tests: tiny tensor pairs and a simulated second rank for the loss references, and the
tiny backbones, views and progress of the one-step checks."""
from __future__ import annotations

import torch

from workbench.methods.base import Progress
from workbench.models.backbones import build_backbone


def _pair(b: int = 6, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    return z1.float(), (z1 + 0.7 * torch.randn(b, d, generator=g, dtype=torch.float64)).float()


def _fake_dist(monkeypatch, module, r, full_tensors):
    """Pretend to be rank ``r``: ``gather`` returns the global tensor (one per call, in call order) with this
    rank's slice replaced by the local input; ``rank()`` returns r."""
    calls = iter(full_tensors)

    def fake_gather(x):
        full = next(calls)
        b = x.shape[0]
        return torch.cat([full[:r * b], x, full[(r + 1) * b:]])

    monkeypatch.setattr(module, "gather", fake_gather)
    monkeypatch.setattr(module, "rank", lambda: r, raising=False)


def tiny_vit():
    return build_backbone("vit_tiny", 16, 3, patch_size=4, depth=2)


def tiny_cnn():
    return build_backbone("small_cnn", 16, 3, width=8)


def views(n_global=2, n_local=0, b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(b, 3, 16, 16, generator=g) for _ in range(n_global)]
            + [torch.randn(b, 3, 8, 8, generator=g) for _ in range(n_local)])


def progress(step=0, steps_per_epoch=4, total_steps=40, seed=0):
    return Progress(step=step, total_steps=total_steps, epoch=step // steps_per_epoch,
                    total_epochs=total_steps // steps_per_epoch, steps_per_epoch=steps_per_epoch,
                    generator=torch.Generator().manual_seed(seed))
