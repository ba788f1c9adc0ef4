"""Batched, device-side view generation with recorded parameters; presets; MAE, data2vec 2.0 and I-JEPA masks.

``generate_views(images_uint8, make_preset("simclr", 32), generator)`` -> ViewBatch(views, params,
num_global). A view is geometry (``sample_geometry``: crop box and flip, the same draws for in-memory batches
and for full-size images decoded by streaming workers, cropped there by ``crop_images``) then colour
(``finish_views``: jitter, grayscale, blur, solarize, normalisation, batched on the device). Ops live in
``workbench.augment.ops``; each matches torchvision v2 per sample.
"""
from workbench.augment.masks import (BlockMasks, PatchMask, inverse_block_mask, multiblock_masks,
                                     random_patch_mask)
from workbench.augment.pipeline import (ViewBatch, apply_colour, channel_values, crop_images, finish_views,
                                       generate_views, normalize, sample_geometry, view_params_doc)
from workbench.augment.presets import AugmentConfig, ViewOps, known_presets, make_preset

__all__ = [
    "AugmentConfig", "ViewOps", "make_preset", "known_presets", "generate_views", "ViewBatch", "normalize", "channel_values",
    "sample_geometry", "crop_images", "apply_colour", "finish_views", "view_params_doc",
    "random_patch_mask", "inverse_block_mask", "PatchMask", "multiblock_masks", "BlockMasks",
]
