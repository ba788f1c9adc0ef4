"""Export a trained backbone alone, with plain keys that load without the workbench, and a JSON saying into what.

    workbench export RUN [--format safetensors|torch] [--out DIR] [--checkpoint last]

writes ``DIR/backbone.safetensors`` (or ``backbone.pt``, a torch state dict for ``torch.load(weights_only=True)``)
and ``DIR/backbone.json`` (default DIR: ``RUN/export``). The keys are those of the library model the JSON names,
so the file loads straight into it (``d`` = the JSON, ``sd`` = ``safetensors.torch.load_file(path)``):

- ``vit_tiny``/``vit_small`` and every timm model (``timm:``/``hf-hub:`` specs)::

      model = timm.create_model(d["timm"]["model_name"], **d["timm"]["kwargs"]); model.load_state_dict(sd)

  (``vit_tiny`` is ``vit_tiny_patch16_224`` with the run's ``img_size``, ``patch_size`` and ``depth``).
- ``resnet18``/``resnet50`` and ``torchvision:`` ResNets: ``torchvision.models.get_model(d["torchvision"]
  ["model_name"])`` with ``fc = nn.Identity()`` and, for the small-image stem (``d["torchvision"]["small_stem"]``),
  ``conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)`` and ``maxpool = nn.Identity()``; for
  another channel count with the ImageNet stem ``conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)``.
- ``small_cnn`` has no library twin: its keys are those of a plain ``nn.Sequential`` of conv-BN-ReLU blocks,
  ``d["torch"]["layers"]`` = [[in, out, stride], ...], each ``Conv2d(in, out, 3, stride, 1, bias=False)``,
  ``BatchNorm2d(out)``, ``ReLU``; features = the mean over H, W of the last block's output.

Every model then maps images normalised with ``d["mean"]``/``d["std"]`` at ``d["image_size"]`` px to the pooled
features [B, ``d["feature_dim"]``] the workbench evaluates (``model(x)``; for small_cnn ``net(x).mean((2, 3))``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from workbench.runs import atomic_torch_save, atomic_write_bytes, atomic_write_json
from workbench.trained.source import Trained, load_trained

FORMATS = {"safetensors": "backbone.safetensors", "torch": "backbone.pt"}
TIMM_VIT_NAMES = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224"}
# ViTOptions transformer fields at the values timm's plain VisionTransformer has (anything else is not exportable)
PLAIN_VIT = {"pos_embed": True, "qk_norm": False, "layer_scale": None, "rope_theta": None, "rope_rescale": None}
EXPORT_VERSION = 1


def _stripped(backbone: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The backbone's state dict under ``prefix`` with the prefix removed (detached, contiguous CPU copies)."""
    out = {k[len(prefix):]: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()
           if k.startswith(prefix)}
    if not out:
        raise ValueError(f"{type(backbone).__name__} has no weights under {prefix!r}")
    return out


def describe(trained: Trained) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(description, plain-key weights) of a trained backbone: which library model the keys load into and with
    which arguments, plus how the workbench used it (image size, channels, mean/std, feature size, source)."""
    from workbench.models.backbones import ResNet, SmallCNN, ViT
    from workbench.models.external import TimmBackbone

    bb, name = trained.backbone, trained.backbone_name
    spec = getattr(bb, "spec", None)
    desc: dict[str, Any] = {}
    if spec is not None and spec.library == "timm":
        desc["timm"] = {"model_name": spec.model_name, "kwargs": spec.timm_kwargs()}
        weights = _stripped(bb, "vit." if isinstance(bb, ViT) else "model.")
    elif isinstance(bb, ViT) and name in TIMM_VIT_NAMES:
        o = trained.backbone_options
        changed = {k: o[k] for k, plain in PLAIN_VIT.items() if k in o and o[k] != plain}
        if changed:  # e.g. NEPA's transformer: timm's VisionTransformer has no 2-D RoPE to load these weights into
            raise ValueError(f"cannot export this {name} as timm's {TIMM_VIT_NAMES[name]}: its transformer options "
                             f"{changed} (RoPE / QK-norm / LayerScale / no absolute positions) have no equivalent "
                             "there; read the run itself instead (workbench.trained.load_trained(run))")
        kwargs = {"img_size": bb.image_size, "patch_size": bb.patch_size, "in_chans": bb.in_chans,
                  "depth": bb.num_layers, "num_classes": 0}
        if o.get("drop_path_rate"):
            kwargs["drop_path_rate"] = float(o["drop_path_rate"])
        desc["timm"] = {"model_name": TIMM_VIT_NAMES[name], "kwargs": kwargs}
        weights = _stripped(bb, "vit.")
    elif isinstance(bb, ResNet):
        replace = {"fc": "nn.Identity()"}
        if bb.small_stem:
            replace.update(conv1=f"nn.Conv2d({bb.in_chans}, 64, 3, stride=1, padding=1, bias=False)",
                           maxpool="nn.Identity()")
        elif bb.in_chans != 3:
            replace.update(conv1=f"nn.Conv2d({bb.in_chans}, 64, 7, stride=2, padding=3, bias=False)")
        desc["torchvision"] = {"model_name": bb.arch, "small_stem": bool(bb.small_stem), "in_chans": bb.in_chans,
                               "replace": replace}
        weights = _stripped(bb, "net.")
    elif isinstance(bb, SmallCNN):
        layers = [[int(block[0].in_channels), int(block[0].out_channels), int(block[0].stride[0])]
                  for block in bb.stages]
        desc["torch"] = {"layers": layers, "block": "Conv2d(in, out, 3, stride, padding=1, bias=False), "
                                                    "BatchNorm2d(out), ReLU", "pool": "mean over H, W"}
        weights = _stripped(bb, "stages.")
    elif isinstance(bb, TimmBackbone):  # a timm model without a recorded spec (built by hand)
        raise ValueError("this timm backbone carries no spec; build it with build_backbone('timm:<name>') to export")
    else:
        raise ValueError(f"cannot describe a {type(bb).__name__} (backbone {name!r}) for export: only the "
                         "workbench's backbones and timm/torchvision specs have a library model to load into")
    mean, std = trained.stats(trained.in_chans)
    desc.update({
        "export_version": EXPORT_VERSION, "backbone": name, "backbone_options": dict(trained.backbone_options),
        "image_size": int(bb.image_size), "in_chans": int(bb.in_chans), "feature_dim": int(bb.feature_dim),
        "kind": getattr(bb, "kind", "cnn"), "mean": list(mean), "std": list(std),
        "features": "model(x) for images normalised with mean/std at image_size px: pooled features "
                    "[B, feature_dim] (small_cnn: net(x).mean((2, 3)))",
        "source": {"run": str(trained.run.path) if trained.run is not None else None,
                   "checkpoint": str(trained.checkpoint) if trained.checkpoint is not None else None,
                   "spec": trained.spec, "method": trained.method_name, "data": trained.data,
                   "step": trained.step, "epoch": trained.epoch},
    })
    return desc, weights


def export_backbone(source: Any, out: str | Path | None = None, format: str = "safetensors",
                    checkpoint: str = "last") -> dict[str, Path]:
    """Write the backbone of ``source`` (anything ``load_trained`` takes) to ``out`` (default ``RUN/export``) as
    ``backbone.safetensors`` (``format="safetensors"``) or ``backbone.pt`` (``"torch"``), beside
    ``backbone.json`` (:func:`describe`, plus the file name and its sha256). Returns {"weights", "description"}."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not supported; choose one of {list(FORMATS)}")
    trained = load_trained(source, checkpoint)
    if out is None:
        if trained.run is None:
            raise ValueError(f"{trained.source} has no run folder to export into; pass out=DIR (CLI: --out DIR)")
        out = trained.run.path / "export"
    out = Path(out)
    desc, weights = describe(trained)
    path = out / FORMATS[format]
    if format == "safetensors":
        from safetensors.torch import save

        data = save(weights, metadata={"format": "pt", "workbench": json.dumps(desc, default=str)})
        atomic_write_bytes(path, data)
    else:
        atomic_torch_save(weights, path)
    desc.update(format=format, file=path.name, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                num_tensors=len(weights))
    atomic_write_json(out / "backbone.json", desc)
    return {"weights": path, "description": out / "backbone.json"}


def load_line(desc: dict[str, Any]) -> str:
    """One line of Python that loads an export without the workbench (the model, before load_state_dict)."""
    if "timm" in desc:
        t = desc["timm"]
        return f"timm.create_model({t['model_name']!r}, **{t['kwargs']!r})"
    if "torchvision" in desc:
        t = desc["torchvision"]
        changes = "; ".join(f"m.{k} = {v}" for k, v in t["replace"].items())
        return f"m = torchvision.models.get_model({t['model_name']!r}); {changes}"
    return ("nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, s, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()) "
            f"for a, b, s in {desc['torch']['layers']!r}])")


# -- CLI ----------------------------------------------------------------------------------------------------------
def add_subcommands(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``export`` to an argparse subparsers object; the parser's ``func(args) -> int`` runs it."""
    p = subparsers.add_parser(
        "export", help="write a run's backbone alone (safetensors or torch) and a JSON of the model it loads into",
        description="Export the backbone of RUN with plain keys that load into timm.create_model(...) or a "
                    "torchvision ResNet without the workbench, and backbone.json describing it.")
    p.add_argument("run_dir", metavar="RUN", help="run folder (or checkpoint file, or a timm:/torchvision: spec)")
    p.add_argument("--format", default="safetensors", choices=list(FORMATS), help="file format (default safetensors)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RUN/export)")
    p.add_argument("--checkpoint", default="last", help="checkpoint name in RUN/checkpoints (default: last)")
    p.set_defaults(func=run_command)
    return p


def run_command(args: argparse.Namespace) -> int:
    """Run ``workbench export`` from parsed arguments; prints what was written and how to load it."""
    try:
        paths = export_backbone(args.run_dir, args.out, args.format, args.checkpoint)
    except ValueError as e:
        print(f"workbench export: error: {e}", file=sys.stderr)
        return 2
    desc = json.loads(paths["description"].read_text())
    print(f"weights:     {paths['weights']}")
    print(f"description: {paths['description']}")
    print(f"load with:   {load_line(desc)}")
    return 0
