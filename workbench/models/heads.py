"""Projection and prediction heads shared by the joint-embedding methods."""
from __future__ import annotations

import torch.nn as nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, *, batch_norm: bool = True,
        last_batch_norm: bool = False, last_bn_affine: bool = True) -> nn.Sequential:
    """Linear(-BN)-ReLU blocks then a final Linear (optionally followed by BN, as SimSiam and MoCo v3 use).

    Maps [B, in_dim] -> [B, out_dim]; ``num_layers`` counts Linear layers (>= 1).
    """
    if num_layers < 1:
        raise ValueError(f"mlp num_layers={num_layers} must be >= 1")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    return nn.Sequential(*layers)
