"""Checkpoint I/O of a pretraining run: what a checkpoint holds, writing it atomically, checking what it is,
resuming from it.

A checkpoint is a dict of state dicts and plain Python (``torch.load(weights_only=True)`` reads it): ``format``,
``method`` (the whole Method: backbone, heads, teachers), ``optimizer``, ``scheduler``, ``step``, ``epoch``,
``rng`` (CPU, CUDA and the view generator), ``config`` (the PretrainConfig as a dict), ``info`` (what
describes the backbone: name, options, image size, mean/std, data), ``identity`` (what run it belongs to:
method, backbone and options, data set and options, image size, run id, a hash of the config; every loader
compares it with the run's config.json) and ``loop`` (the running sums of the epoch in progress, so a resumed
run logs what an uninterrupted one would). ``workbench.trained`` reads the same files.

Files: ``checkpoints/last.pt`` always; with ``train.keep_checkpoints=K`` also ``epoch-NNNN.pt`` (epoch ends) and
``step-NNNNNNNN.pt`` (``train.checkpoint_steps``), the newest K of them kept (hard links to the same bytes as
last.pt where the file system allows).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from workbench.config import to_dict
from workbench.runs import CheckpointError, Run, atomic_write_bytes, link_or_copy, load_weights

CHECKPOINT_FORMAT = "workbench-pretrain-1"
NUMBERED = re.compile(r"^(epoch|step)-(\d+)$")


def finite_state(module: nn.Module) -> bool:
    """True when every floating parameter and buffer of ``module`` is finite."""
    tensors = [t for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


# ------------------------------------------------------------------------------------------------ identity
def _normalised(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict with every field present (defaults filled), so {} and the defaults hash alike."""
    from workbench.config import from_dict
    from workbench.train.config import PretrainConfig

    try:
        filled = to_dict(from_dict(PretrainConfig, config))
    except (ValueError, TypeError):  # an old or hand-edited config: compare it as written
        return dict(config)
    model = config.get("model")
    if isinstance(model, dict) and isinstance(model.get("options"), dict):
        # backbone options as recorded: a method's model_options added since (NEPA's RoPE) describe new runs only
        filled["model"]["options"] = dict(model["options"])
    return filled


def _identity_parts(config: dict[str, Any]) -> dict[str, Any]:
    """What defines the model and its batches (what a resume may not change): the config hash covers these."""
    c = _normalised(config)
    data, train = c.get("data") or {}, c.get("train") or {}
    return {"method": c.get("method"), "method_options": c.get("method_options") or {},
            "model": c.get("model") or {}, "augment": c.get("augment") or {},
            "data": {"name": data.get("name"), "options": data.get("options") or {},
                     "image_size": data.get("image_size")},
            "train": {"batch_size": train.get("batch_size"), "seed": train.get("seed")}}


def config_hash(config: dict[str, Any]) -> str:
    """sha256 (16 hex digits) of the identity-defining part of a PretrainConfig dict (method and options, model,
    augmentation, data name/options/size, batch size, seed); epochs, lr and the like may change on resume."""
    text = json.dumps(_identity_parts(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_identity(config: dict[str, Any], image_size: int | None, run_id: str | None) -> dict[str, Any]:
    """What a checkpoint is: method, backbone name and options, data name and options, image size, run id,
    config hash."""
    c = _normalised(config)
    model, data = c.get("model") or {}, c.get("data") or {}
    return {"method": c.get("method"), "backbone": model.get("backbone"),
            "backbone_options": dict(model.get("options") or {}),
            "data": {"name": data.get("name"), "options": dict(data.get("options") or {})},
            "image_size": image_size, "run_id": run_id, "config_hash": config_hash(c)}


def identity_of(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's identity record; checkpoints written before identities existed get one derived from the
    config and info they carry (without a run id)."""
    if isinstance(ckpt.get("identity"), dict):
        return ckpt["identity"]
    info = ckpt.get("info") or {}
    return checkpoint_identity(ckpt.get("config") or {}, info.get("image_size"), None)


def check_identity(ckpt: dict[str, Any], run: Run, path: str | os.PathLike) -> None:
    """Refuse (CheckpointError naming both sides) a checkpoint that is not ``run``'s: another method, backbone,
    backbone options, data set or options, image size, run id or config than the run's config.json records.
    A run folder without config.json has nothing to compare against and is accepted."""
    recorded = run.config
    if not recorded:
        return
    have = identity_of(ckpt)
    want = checkpoint_identity(recorded, _normalised(recorded).get("data", {}).get("image_size"), run.run_id)
    diffs = []
    for key in ("method", "backbone", "backbone_options", "data"):
        if have.get(key) != want.get(key):
            diffs.append(f"{key} {have.get(key)!r} in the checkpoint vs {want.get(key)!r} in config.json")
    if want["image_size"] is not None and have.get("image_size") not in (None, want["image_size"]):
        diffs.append(f"image size {have.get('image_size')} in the checkpoint vs {want['image_size']} in config.json")
    if have.get("run_id") and want["run_id"] and have["run_id"] != want["run_id"]:
        diffs.append(f"run id {have['run_id']} in the checkpoint vs {want['run_id']} in env.json")
    if not diffs and have.get("config_hash") != want["config_hash"]:
        mine, theirs = _identity_parts(recorded), _identity_parts(ckpt.get("config") or {})
        sections = [k for k in mine if mine[k] != theirs.get(k)] or ["(unknown)"]
        diffs.append(f"config hash {have.get('config_hash')} in the checkpoint vs {want['config_hash']} from "
                     f"config.json (they differ in {', '.join(sections)})")
    if diffs:
        raise CheckpointError(f"checkpoint {path} does not belong to run {run.path}: " + "; ".join(diffs),
                              "it was copied in from another run; use that run's folder, or this run's own "
                              "checkpoint")
    if "identity" not in ckpt:
        warnings.warn(f"checkpoint {path} was written before checkpoints carried an identity; checked against "
                      "config.json through the config it holds (no run id)", UserWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------ writing
def save_checkpoint(run: Run, *, method: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int,
                    steps_per_epoch: int, generator: torch.Generator, device: torch.device, config: Any,
                    info: dict[str, Any], loop: dict[str, Any] | None = None, name: str = "last",
                    numbered: str | None = None, keep: int = 0) -> Path:
    """Write the full training state at ``step`` to ``run``'s ``checkpoints/<name>.pt`` (atomically).

    ``numbered`` (``epoch-0003``/``step-00000150``) with ``keep`` > 0 also keeps that file, and only the newest
    ``keep`` numbered files (``last.pt`` is always kept)."""
    cfg = to_dict(config)
    state = {
        "format": CHECKPOINT_FORMAT, "method": method.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": step, "epoch": step // max(1, steps_per_epoch),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "generator": generator.get_state()},
        "config": cfg, "info": dict(info),
        "identity": checkpoint_identity(cfg, info.get("image_size"), run.run_id),
        "loop": dict(loop or {}),
    }
    if numbered and keep > 0:
        kept = run.save_checkpoint(state, numbered)
        link_or_copy(kept, run.checkpoint_path(name))
        prune_checkpoints(run, keep, steps_per_epoch)
        return run.checkpoint_path(name)
    return run.save_checkpoint(state, name)


def numbered_name(kind: str, number: int) -> str:
    """``epoch-0003`` / ``step-00000150``: the names of kept checkpoints."""
    return f"epoch-{number:04d}" if kind == "epoch" else f"step-{number:08d}"


def prune_checkpoints(run: Run, keep: int, steps_per_epoch: int) -> list[Path]:
    """Delete all but the newest ``keep`` numbered checkpoints (ordered by step); returns the deleted paths."""
    numbered = []
    for p in run.checkpoints():
        m = NUMBERED.match(p.stem)
        if m:
            step = int(m.group(2)) * (steps_per_epoch if m.group(1) == "epoch" else 1)
            numbered.append((step, m.group(1) == "epoch", p))
    numbered.sort()
    gone = [p for _, _, p in numbered[:max(0, len(numbered) - keep)]]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


# ------------------------------------------------------------------------------------------------ reading
def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A pretraining checkpoint file (plain weights only); CheckpointError (naming the file) when it is truncated,
    corrupt, holds Python objects, or is some other file."""
    ckpt = load_weights(path, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a workbench pretraining checkpoint (format {found!r}, expected "
                              f"{CHECKPOINT_FORMAT!r})", "pass a checkpoint written by `workbench pretrain`")
    missing = [k for k in ("method", "optimizer", "scheduler", "step", "config", "info") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it is incomplete",
                              "resume from another checkpoint in that folder, or start a new run")
    return ckpt


@dataclass
class ResumeState:
    """What resuming continues from: the step, the loop's running sums and the RNG states (applied when the loop
    starts); ``step`` 0 with no checkpoint means the run restarts from scratch."""

    step: int
    loop: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


def load_resume_state(run: Run, *, method: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                      device: torch.device) -> ResumeState:
    """Read ``run``'s last checkpoint, check it belongs to the run, and load it into the training objects.
    Writes nothing: a checkpoint that cannot be used raises before the run folder is touched. A run without any
    checkpoint (killed before its first) restarts from step 0."""
    path = run.checkpoint_path("last")
    if not path.exists():
        others = [p.name for p in run.checkpoints()]
        if others:
            raise CheckpointError(f"run {run.path} has no checkpoints/last.pt but has {others}",
                                  f"copy the one to continue from to {path}, then resume")
        return ResumeState(0)
    ckpt = read_checkpoint(path, map_location=device)
    check_identity(ckpt, run, path)
    try:
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model of run {run.path}: "
                              f"{str(e).splitlines()[0][:300]}", "resume with the recorded config") from None
    return ResumeState(int(ckpt["step"]), dict(ckpt.get("loop") or {}), dict(ckpt.get("rng") or {}), path)


def apply_rng(rng: dict[str, Any], device: torch.device | None = None) -> None:
    """Set the global CPU RNG state and the training device's CUDA RNG state a checkpoint recorded.

    The CUDA state is the saving process's own device (older checkpoints: a list over the devices it saw, of which
    the entry of this process's device is used when present), so a run resumes under any number of visible GPUs.
    The engine also seeds every step from (seed, rank, step), so nothing a step draws depends on these states."""
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu())
    state = rng.get("cuda")
    if state is None or not torch.cuda.is_available() or device is None or device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    if isinstance(state, (list, tuple)):
        state = state[index] if index < len(state) else None
    if state is not None:
        torch.cuda.set_rng_state(state.cpu(), device)


def trim_metrics(run: Run, step: int) -> None:
    """Drop metric records past ``step`` (written by the attempt being resumed after its last checkpoint)."""
    records = run.metrics()
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    if len(kept) != len(records) or (run.path / "metrics.jsonl").exists():
        atomic_write_bytes(run.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept).encode())
