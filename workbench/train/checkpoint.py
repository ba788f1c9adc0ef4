"""Checkpoint I/O of a pretraining run: what a checkpoint holds, writing it atomically, resuming from it.

A checkpoint is a dict of state dicts and plain Python (``torch.load(weights_only=True)`` reads it): ``format``,
``method`` (the whole Method: backbone, heads, teachers), ``optimizer``, ``scheduler``, ``step``, ``epoch``,
``rng`` (CPU, CUDA and the view generator), ``config`` (the PretrainConfig as a dict) and ``info`` (what
describes the backbone: name, options, image size, mean/std, data). ``workbench.trained`` reads the same files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from workbench.config import to_dict
from workbench.runs import Run, atomic_write_bytes

CHECKPOINT_FORMAT = "workbench-pretrain-1"


def finite_state(module: nn.Module) -> bool:
    """True when every floating parameter and buffer of ``module`` is finite."""
    tensors = [t for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def save_checkpoint(run: Run, *, method: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int,
                    steps_per_epoch: int, generator: torch.Generator, device: torch.device, config: Any,
                    info: dict[str, Any], name: str = "last") -> Path:
    """Write the full training state at ``step`` to ``run``'s ``checkpoints/<name>.pt`` (atomically)."""
    state = {
        "format": CHECKPOINT_FORMAT, "method": method.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": step, "epoch": step // max(1, steps_per_epoch),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                "generator": generator.get_state()},
        "config": to_dict(config), "info": dict(info),
    }
    return run.save_checkpoint(state, name)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A pretraining checkpoint file (plain weights only); a ValueError when it is some other file."""
    ckpt = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a workbench pretraining checkpoint (format {found!r}, expected "
                         f"{CHECKPOINT_FORMAT!r})")
    return ckpt


def restore_checkpoint(run: Run, *, method: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                       device: torch.device, trim_metrics: bool) -> int:
    """Load ``run``'s last checkpoint into the training objects and the global RNGs; returns its step.

    ``trim_metrics`` (rank 0) drops metric records past that step, written by the attempt being resumed.
    """
    ckpt = read_checkpoint(run.checkpoint_path("last"), map_location=device)
    method.load_state_dict(ckpt["method"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    step = int(ckpt["step"])
    rng = ckpt.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu())
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    if trim_metrics:
        kept = [r for r in run.metrics() if int(r.get("step", 0)) <= step]
        atomic_write_bytes(run.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept).encode())
    return step
