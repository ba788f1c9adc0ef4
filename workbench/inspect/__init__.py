"""Pure functions behind the widgets: attention maps, patch similarity, PCA-of-patches images, MAE
reconstructions, 2-D embeddings and neighbours, augmentation pictures, training curves, image encoding.

Headless: numpy/torch/PIL only at import time; plotly and umap-learn are imported inside the functions that
build figures, embeddings or colours.
"""
from workbench.inspect.attention import (CNN_VIEWS_HINT, NotAViTError, TokenNorms, attention_image, attention_maps,
                                         attention_rollout, attention_share, check_image_size, check_vit,
                                         cls_attention, head_attention, num_prefix_tokens, outlier_threshold,
                                         patch_fractions, threshold_mass, to_grid, token_norms, upsample)
from workbench.inspect.curves import (CURVE_METRICS, CollapseStatus, collapse_status, curves_figure, series,
                                      spectra, spectrum_lines, split_records)
from workbench.inspect.colors import color_spec, colormap, palette, palette_rgb, spec_colors, to_rgb
from workbench.inspect.embedding import (embedding_2d, features_hash, kmeans_labels, knn_correct, nearest_neighbors,
                                         pca_2d, scatter_figure, umap_2d)
from workbench.inspect.images import (browser_path, composite, data_uri, denormalize, figure_to_png_pil, heat_rgba,
                                      image_grid, mask_overlay, minmax, overlay, png_bytes, thumbnail_uri, to_hwc,
                                      upscale, write_figure)
from workbench.inspect.patches import (outline_patch, patch_at_pixel, patch_index, patch_similarity, patch_tokens,
                                       pca_images, pca_rgb, similarity_images)
from workbench.inspect.pca import pca
from workbench.inspect.recon import mae_reconstruction, reconstruction_grid, reconstruction_losses
from workbench.inspect.views import augmentation_grid, caption, ijepa_mask_images, mae_mask_images

__all__ = [
    "CNN_VIEWS_HINT", "NotAViTError", "attention_image", "attention_maps", "attention_rollout", "attention_share",
    "check_image_size", "check_vit", "cls_attention", "head_attention", "num_prefix_tokens", "patch_fractions",
    "threshold_mass", "TokenNorms", "token_norms", "outlier_threshold",
    "to_grid", "upsample",
    "CURVE_METRICS", "CollapseStatus", "collapse_status", "curves_figure", "series", "spectra", "spectrum_lines",
    "split_records", "color_spec", "colormap", "palette", "palette_rgb", "spec_colors", "to_rgb",
    "embedding_2d", "features_hash", "kmeans_labels", "knn_correct", "nearest_neighbors", "pca_2d", "scatter_figure",
    "umap_2d", "browser_path", "composite", "data_uri", "denormalize", "figure_to_png_pil", "heat_rgba",
    "image_grid", "mask_overlay", "minmax", "overlay",
    "png_bytes", "thumbnail_uri", "to_hwc", "upscale", "write_figure", "outline_patch", "patch_at_pixel",
    "patch_index", "patch_similarity", "patch_tokens", "pca_images", "pca_rgb", "similarity_images", "pca",
    "mae_reconstruction", "reconstruction_grid",
    "reconstruction_losses",
    "augmentation_grid", "caption", "ijepa_mask_images", "mae_mask_images",
]
