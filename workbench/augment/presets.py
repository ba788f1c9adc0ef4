"""Augmentation configs (one ``ViewOps`` per view) and the named presets of the SSL papers.

Sources of the preset values:
- simclr: SimCLR (Chen et al. 2020) / solo-learn ``scripts/pretrain/cifar/augmentations/symmetric.yaml``
  (the augmentations solo-learn's cifar ``simclr.yaml`` uses): crop scale (0.08, 1), flip 0.5, jitter
  p=0.8 with (0.8, 0.8, 0.8, 0.2), grayscale 0.2, blur p=0.5 (none for images <= 64 px, as in the
  paper's and solo-learn's CIFAR recipes: a blurred 32 px crop loses the object), no solarization.
- byol: BYOL (Grill et al. 2020) Table 6: jitter p=0.8 (0.4, 0.4, 0.2, 0.1), grayscale 0.2, view 1
  blur 1.0 / solarize 0, view 2 blur 0.1 / solarize 0.2. For images <= 64 px solo-learn's cifar
  ``asymmetric.yaml`` (byol.yaml): no blur in either view, solarize 0 / 0.2.
- dino: DINO (Caron et al. 2021): global crops scale (0.4, 1) as view 1 (blur 1.0) and view 2
  (blur 0.1, solarize 0.2), local crops scale (0.05, 0.4) at ~3/8 of the size with blur 0.5.
- mae: MAE (He et al. 2021): RandomResizedCrop scale (0.2, 1) + flip only, one view.
- none: two identical copies of the input resized to the view size (no randomness).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from workbench.config import ConfigError, check_choice, check_pair, check_range, from_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_IMAGE = 64  # presets switch to the solo-learn CIFAR recipes at or below this size


@dataclass
class ViewOps:
    """The random ops that make one view, in the order they run.

    crop (scale: area fraction range, ratio: aspect range, output ``size`` x ``size``), horizontal flip,
    colour jitter with probability ``jitter_p`` (brightness/contrast/saturation strengths, hue in
    [0, 0.5]), grayscale, Gaussian blur (sigma range; ``blur_kernel`` 0 = about 10% of ``size``, odd),
    solarization (pixels >= threshold inverted). Probabilities are in [0, 1].
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    blur_kernel: int = 0

    def __post_init__(self) -> None:
        own = "ViewOps"
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ConfigError(f"{own}.size={self.size!r} must be a positive integer (output side in pixels)")
        self.scale = tuple(self.scale)  # type: ignore[assignment]
        self.ratio = tuple(self.ratio)  # type: ignore[assignment]
        self.blur_sigma = tuple(self.blur_sigma)  # type: ignore[assignment]
        check_pair(own, "scale", self.scale, low=0.0, high=1.0)
        if self.scale[0] <= 0:
            raise ConfigError(f"{own}.scale={self.scale!r}: the smallest area fraction must be > 0")
        check_pair(own, "ratio", self.ratio, low=0.0)
        if self.ratio[0] <= 0:
            raise ConfigError(f"{own}.ratio={self.ratio!r}: aspect ratios must be > 0")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            check_range(own, name, getattr(self, name), 0.0, 1.0)
        for name in ("brightness", "contrast", "saturation"):
            check_range(own, name, getattr(self, name), 0.0)
        check_range(own, "hue", self.hue, 0.0, 0.5)
        check_pair(own, "blur_sigma", self.blur_sigma, low=0.0)
        if self.blur_sigma[0] <= 0:
            raise ConfigError(f"{own}.blur_sigma={self.blur_sigma!r}: sigma must be > 0")
        check_range(own, "solarize_threshold", self.solarize_threshold, 0.0, 1.0)
        if (not isinstance(self.blur_kernel, int) or isinstance(self.blur_kernel, bool) or self.blur_kernel < 0
                or (self.blur_kernel > 0 and self.blur_kernel % 2 == 0)):
            raise ConfigError(f"{own}.blur_kernel={self.blur_kernel!r} must be 0 (auto: ~10% of size) "
                              "or an odd positive integer")

    @property
    def kernel_size(self) -> int:
        """The blur kernel size used: ``blur_kernel`` or about 10% of ``size`` (odd, >= 3)."""
        from workbench.augment.ops import default_blur_kernel
        return self.blur_kernel or default_blur_kernel(self.size)


@dataclass
class AugmentConfig:
    """Views to generate from each image (global views first) and the normalization applied to all.

    views: one ViewOps per view; num_global: how many leading views are global (DINO teacher views;
    equals len(views) for two-view methods); mean/std: per-channel normalization (1 value = all
    channels); preset: the preset name it came from (informational); gram_scale: when set, each global view
    is rendered once more, after all the views, from the same crop box and flip at ``round(gram_scale * size)``
    px without colour ops (DINOv3's Gram-teacher crops, ``gram_teacher_no_distortions``; see ``gram_views``).
    """

    views: list[ViewOps]
    num_global: int = 2
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    preset: str = "custom"
    gram_scale: float | None = None

    def __post_init__(self) -> None:
        own = "AugmentConfig"
        if not isinstance(self.views, (list, tuple)) or len(self.views) == 0:
            raise ConfigError(f"{own}.views must be a non-empty list of ViewOps, got {self.views!r}")
        self.views = [v if isinstance(v, ViewOps) else from_dict(ViewOps, v) for v in self.views]
        if (not isinstance(self.num_global, int) or isinstance(self.num_global, bool)
                or not 1 <= self.num_global <= len(self.views)):
            raise ConfigError(f"{own}.num_global={self.num_global!r} must be an integer in [1, {len(self.views)}] "
                              f"(the number of leading global views among {len(self.views)} views)")
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) == 0 or len(self.mean) != len(self.std):
            raise ConfigError(f"{own}.mean={self.mean} and std={self.std} must be non-empty and the same length")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"{own}.std={self.std} must be positive")
        if self.gram_scale is not None:
            check_range(own, "gram_scale", self.gram_scale, 0.0, low_inclusive=False)

    @property
    def num_views(self) -> int:
        """The views the config draws (the Gram-teacher renderings, which draw nothing, not counted)."""
        return len(self.views)

    @property
    def gram_views(self) -> list[ViewOps]:
        """The Gram-teacher rendering of each global view (none without ``gram_scale``): its crop geometry at
        ``round(gram_scale * size)`` px and no colour op. Rendered from the global view's drawn crop box and flip,
        after the ``num_views`` views (DINOv3 feeds its Gram teacher the student's global crops, larger and
        undistorted: ``crops.gram_teacher_crops_size`` 512 for 256 px crops, ``gram_teacher_no_distortions``)."""
        if self.gram_scale is None:
            return []
        return [ViewOps(size=max(1, round(self.gram_scale * v.size)), scale=v.scale, ratio=v.ratio, flip_p=v.flip_p)
                for v in self.views[:self.num_global]]


# ----------------------------------------------------------------------------------------- presets
def _strong(size: int) -> dict[str, Any]:
    """Shared BYOL/DINO colour recipe: jitter p=0.8 (0.4, 0.4, 0.2, 0.1), grayscale 0.2."""
    return dict(size=size, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, grayscale_p=0.2)


def _local_crops(size: int, extra: dict[str, Any], name: str, default_views: int,
                 default_global_scale: tuple[float, float]) -> tuple[int, int, tuple, tuple]:
    """Multi-crop keys shared by the presets that take them: (local_views, local_size, global_scale, local_scale);
    local crops default to ~3/8 of the global size and scale (0.05, 0.4) (DINO, SwAV)."""
    n_local = extra.pop("local_views", default_views)
    local_size = extra.pop("local_size", max(4, int(round(size * 3 / 8))))
    if not isinstance(n_local, int) or isinstance(n_local, bool) or n_local < 0:
        raise ConfigError(f"make_preset({name!r}).local_views={n_local!r} must be an integer >= 0")
    if not isinstance(local_size, int) or isinstance(local_size, bool) or local_size < 1:
        raise ConfigError(f"make_preset({name!r}).local_size={local_size!r} must be a positive integer (pixels)")
    return n_local, local_size, tuple(extra.pop("global_scale", default_global_scale)), \
        tuple(extra.pop("local_scale", (0.05, 0.4)))


def _simclr(size: int, small: bool, extra: dict[str, Any]) -> tuple[list[ViewOps], int]:
    n_local, local_size, global_scale, local_scale = _local_crops(size, extra, "simclr", 0, (0.08, 1.0))
    view = ViewOps(size=size, scale=global_scale, jitter_p=0.8, brightness=0.8, contrast=0.8, saturation=0.8,
                   hue=0.2, grayscale_p=0.2, blur_p=0.0 if small else 0.5)
    local = dataclasses.replace(view, size=local_size, scale=local_scale)
    return [view, dataclasses.replace(view)] + [dataclasses.replace(local) for _ in range(n_local)], 2


def _byol(size: int, small: bool, extra: dict[str, Any]) -> tuple[list[ViewOps], int]:
    base = _strong(size)
    v1 = ViewOps(**base, scale=(0.08, 1.0), blur_p=0.0 if small else 1.0, solarize_p=0.0)
    v2 = ViewOps(**base, scale=(0.08, 1.0), blur_p=0.0 if small else 0.1, solarize_p=0.2)
    return [v1, v2], 2


def _dino(size: int, small: bool, extra: dict[str, Any]) -> tuple[list[ViewOps], int]:
    n_local, local_size, global_scale, local_scale = _local_crops(size, extra, "dino", 6, (0.4, 1.0))
    base = _strong(size)
    g1 = ViewOps(**base, scale=global_scale, blur_p=1.0)
    g2 = ViewOps(**base, scale=global_scale, blur_p=0.1, solarize_p=0.2)
    local = ViewOps(**{**base, "size": local_size}, scale=local_scale, blur_p=0.5)
    return [g1, g2] + [dataclasses.replace(local) for _ in range(n_local)], 2


def _mae(size: int, small: bool, extra: dict[str, Any]) -> tuple[list[ViewOps], int]:
    return [ViewOps(size=size, scale=(0.2, 1.0), flip_p=0.5)], 1


def _none(size: int, small: bool, extra: dict[str, Any]) -> tuple[list[ViewOps], int]:
    view = ViewOps(size=size, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    return [view, dataclasses.replace(view)], 2


_PRESETS: dict[str, Callable[[int, bool, dict[str, Any]], tuple[list[ViewOps], int]]] = {
    "simclr": _simclr, "byol": _byol, "dino": _dino, "mae": _mae, "none": _none,
}
_MULTI_CROP_KEYS = ("local_views", "local_size", "global_scale", "local_scale")
_PRESET_KEYS = {"dino": _MULTI_CROP_KEYS, "simclr": _MULTI_CROP_KEYS}


def known_presets() -> list[str]:
    """Names accepted by ``make_preset``."""
    return sorted(_PRESETS)


def make_preset(name: str, image_size: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                std: tuple[float, ...] = IMAGENET_STD, **overrides: Any) -> AugmentConfig:
    """Build a preset's AugmentConfig for ``image_size`` px views.

    Overrides: any ViewOps field (applied to every view, e.g. ``jitter_p=0.0``), ``views=[...]``
    (full replacement: ViewOps or dicts), ``num_global``, ``gram_scale`` (DINOv3's Gram-teacher crops, see
    ``AugmentConfig``), and for dino and simclr the multi-crop keys ``local_views`` (dino 6, simclr 0),
    ``local_size``, ``global_scale``, ``local_scale``. Images <= 64 px use the solo-learn CIFAR recipes.
    """
    check_choice("make_preset", "name", name, known_presets())
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ConfigError(f"make_preset.image_size={image_size!r} must be a positive integer")
    extra = dict(overrides)
    view_fields = {f.name for f in dataclasses.fields(ViewOps)}
    allowed = sorted(view_fields | {"views", "num_global", "gram_scale"} | set(_PRESET_KEYS.get(name, ())))
    unknown = sorted(set(extra) - set(allowed))
    if unknown:
        raise ConfigError(f"make_preset({name!r}) got unknown override(s) {unknown}; allowed: {allowed}")
    preset_extra = {k: extra.pop(k) for k in _PRESET_KEYS.get(name, ()) if k in extra}
    views, num_global = _PRESETS[name](image_size, image_size <= SMALL_IMAGE, preset_extra)
    if "views" in extra:
        views = list(extra.pop("views"))
        num_global = min(num_global, len(views)) if "num_global" not in extra else num_global
    num_global = extra.pop("num_global", num_global)
    gram_scale = extra.pop("gram_scale", None)
    if extra:
        views = [from_dict(ViewOps, {**dataclasses.asdict(v), **extra}) if isinstance(v, ViewOps)
                 else from_dict(ViewOps, {**v, **extra}) for v in views]
    return AugmentConfig(views=views, num_global=num_global, mean=tuple(mean), std=tuple(std), preset=name,
                         gram_scale=gram_scale)
