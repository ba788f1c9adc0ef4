"""Fresh weights for an existing architecture: the random-init baseline of evaluation, and the independent draw a
random-teacher student is interpolated with (``workbench.methods.random_teacher``)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def random_init_like(backbone: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``backbone`` with freshly initialised weights (the random-init baseline), in eval mode.

    Every submodule with ``reset_parameters`` is reset under ``torch.manual_seed(seed)``; timm ViTs also get
    their own ``init_weights`` (CLS token, positions). A backbone built from a spec (``timm:``, ``torchvision:``)
    is built again without its weights, so the library's own initialisation applies (layer scales, registers...).
    The original backbone is not touched.
    """
    spec = getattr(backbone, "spec", None)
    if spec is not None:
        from workbench.models.external import build_external

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_external(spec.name, spec.image_size, spec.in_chans, **spec.architecture()).eval()
    model = copy.deepcopy(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
        vit = getattr(model, "vit", None)
        if vit is not None and hasattr(vit, "init_weights"):
            vit.init_weights()
    return model.eval()
