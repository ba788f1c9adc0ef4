"""Pure functions behind the widgets: attention maps, patch similarity, PCA-of-patches images, MAE
reconstructions, 2-D embeddings and neighbours, augmentation pictures, training curves, image encoding.

Headless: numpy/torch/PIL only at import time; plotly and umap-learn are imported inside the functions that
build figures or embeddings.
"""
from workbench.inspect.attention import (CNN_VIEWS_HINT, NotAViTError, attention_image, attention_maps,
                                         attention_rollout, attention_share, check_image_size, check_vit,
                                         cls_attention, head_attention, patch_fractions, threshold_mass, to_grid,
                                         upsample)
from workbench.inspect.curves import (CURVE_METRICS, CollapseStatus, collapse_status, curves_figure, run_row,
                                      runs_table, series, split_records)
from workbench.inspect.embedding import (category_colors, color_spec, embedding_2d, features_hash, kmeans_labels,
                                         knn_correct, nearest_neighbors, pca_2d, pca_basis, point_colors,
                                         scatter_figure, spec_colors, umap_2d)
from workbench.inspect.images import (composite, data_uri, denormalize, figure_to_png_pil, heat_rgba, image_grid,
                                      mask_overlay, minmax, overlay, png_bytes, thumbnail_uri, to_hwc, upscale,
                                      write_figure)
from workbench.inspect.patches import patch_at_pixel, patch_index, patch_similarity, patch_tokens, pca_rgb
from workbench.inspect.recon import mae_reconstruction, reconstruction_grid, reconstruction_losses
from workbench.inspect.views import augmentation_grid, caption, ijepa_mask_images, mae_mask_images

__all__ = [
    "CNN_VIEWS_HINT", "NotAViTError", "attention_image", "attention_maps", "attention_rollout", "attention_share",
    "check_image_size", "check_vit", "cls_attention", "head_attention", "patch_fractions", "threshold_mass",
    "to_grid", "upsample",
    "CURVE_METRICS", "CollapseStatus", "collapse_status", "curves_figure", "run_row", "runs_table", "series",
    "split_records", "category_colors", "embedding_2d", "features_hash", "kmeans_labels", "knn_correct",
    "nearest_neighbors", "pca_2d", "pca_basis", "color_spec", "spec_colors", "point_colors", "scatter_figure", "umap_2d", "composite", "data_uri",
    "denormalize", "figure_to_png_pil", "heat_rgba", "image_grid", "mask_overlay", "minmax", "overlay",
    "png_bytes", "thumbnail_uri", "to_hwc", "upscale", "write_figure", "patch_at_pixel", "patch_index",
    "patch_similarity", "patch_tokens", "pca_rgb", "mae_reconstruction", "reconstruction_grid",
    "reconstruction_losses",
    "augmentation_grid", "caption", "ijepa_mask_images", "mae_mask_images",
]
