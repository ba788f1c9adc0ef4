"""The one batched, no-grad forward pass that turns images into features (or logits).

The engine's kNN monitor, feature extraction for evaluation (``workbench.trained``), alignment's view features
and classifier predictions all encode through :func:`encode`, so precision and memory format are decided once.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn as nn

from workbench.augment import normalize
from workbench.device import resolve_device


@torch.no_grad()
def encode(encoder: nn.Module, inputs: torch.Tensor, mean: Sequence[float] | None = None,
           std: Sequence[float] | None = None, *, batch_size: int = 256, device: str | torch.device = "auto",
           autocast_dtype: torch.dtype | str | None = "auto", channels_last: bool = False,
           out_device: str | torch.device = "cpu") -> torch.Tensor:
    """``encoder`` outputs float32 [N, D] of ``inputs`` in batches of ``batch_size``, in eval mode, without grad.

    inputs: uint8 images [N, C, H, W] normalised here with ``mean``/``std`` (per channel), or float images that
    are already normalised (``mean`` None). ``autocast_dtype`` "auto" means bf16 on CUDA and none on the CPU.
    The encoder's device and train/eval mode are restored afterwards.
    """
    dev = resolve_device(device)
    if autocast_dtype == "auto":
        autocast_dtype = torch.bfloat16 if dev.type == "cuda" else None
    if (mean is None) != (std is None):
        raise ValueError("encode: pass both mean and std (uint8 images) or neither (normalised float images)")
    tensors = list(encoder.parameters()) + list(encoder.buffers())
    home = tensors[0].device if tensors else dev
    was_training = encoder.training
    encoder.eval().to(dev)
    out = []
    try:
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start:start + batch_size].to(dev, non_blocking=True)
            x = normalize(x, mean, std) if mean is not None else x.float()
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            ctx = torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
            with ctx:
                out.append(encoder(x).float().to(out_device))
    finally:
        encoder.to(home).train(was_training)
    if not out:
        return torch.zeros(0, int(getattr(encoder, "feature_dim", 0)), device=out_device)
    return torch.cat(out)
