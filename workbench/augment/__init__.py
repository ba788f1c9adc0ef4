"""Batched, device-side view generation with recorded parameters; presets; MAE and I-JEPA masks.

``generate_views(images_uint8, make_preset("simclr", 32), generator)`` -> ViewBatch(views, params,
num_global). Ops live in ``workbench.augment.ops``; each matches torchvision v2 per sample.
"""
from workbench.augment.masks import BlockMasks, PatchMask, multiblock_masks, random_patch_mask
from workbench.augment.pipeline import (ViewBatch, apply_view, channel_values, generate_views, normalize,
                                       view_params_doc)
from workbench.augment.presets import AugmentConfig, ViewOps, known_presets, make_preset

__all__ = [
    "AugmentConfig", "ViewOps", "make_preset", "known_presets", "generate_views", "ViewBatch", "normalize", "channel_values",
    "apply_view", "view_params_doc", "random_patch_mask", "PatchMask", "multiblock_masks", "BlockMasks",
]
