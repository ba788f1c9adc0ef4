"""Backbones: the encoders every method trains and every evaluation reads.

Each backbone maps images float [B, C, H, W] to pooled features [B, feature_dim] (``forward``) and
exposes ``forward_features`` returning the pooled vector together with spatial tokens (ViT patch
tokens or the CNN's last feature map, flattened) for the attention and patch-similarity tools.
ViTs also run on a subset of patches (``keep``: MAE, I-JEPA), embed crops of other sizes (multi-crop) and return
per-layer attention. Each backbone family has an options dataclass (``SmallCNNOptions``, ``ResNetOptions``,
``ViTOptions``) validated on creation, so a misspelt or unsupported option is an error that lists the allowed ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.config import ConfigError, check_range, from_dict


@dataclass
class Features:
    """Output of ``forward_features``.

    pooled: [B, D] (CLS token after the final norm for ViT, global average pool for CNN);
    tokens: [B, h*w, D] spatial tokens in row-major order; grid: (h, w) of the token grid.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    grid: tuple[int, int]


class Backbone(nn.Module):
    """Base class: ``kind`` is ``"cnn"`` or ``"vit"``; ``feature_dim`` is the size of ``forward``'s output."""

    kind: str = "cnn"
    feature_dim: int
    image_size: int
    in_chans: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).pooled

    def forward_features(self, x: torch.Tensor) -> Features:
        raise NotImplementedError


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(Backbone):
    """Four-stage conv net (width ``w``, 2w, 4w, 8w; stride 1, 2, 2, 2) for quick CPU runs at 16-64 px."""

    def __init__(self, image_size: int = 32, in_chans: int = 3, width: int = 32):
        super().__init__()
        w = width
        self.image_size, self.in_chans, self.feature_dim = image_size, in_chans, 8 * w
        self.stages = nn.Sequential(
            _conv_bn(in_chans, w, 1),
            _conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w, 1),
            _conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w, 1),
            _conv_bn(4 * w, 8 * w, 2), _conv_bn(8 * w, 8 * w, 1),
        )

    def forward_features(self, x: torch.Tensor) -> Features:
        fmap = self.stages(x)
        return Features(fmap.mean(dim=(2, 3)), fmap.flatten(2).transpose(1, 2), tuple(fmap.shape[2:]))


class ResNet(Backbone):
    """torchvision ResNet-18/50 without its classifier; ``small_stem`` swaps in a 3x3 stride-1 conv and no max-pool."""

    def __init__(self, depth: int = 18, image_size: int = 32, in_chans: int = 3, small_stem: bool | None = None):
        super().__init__()
        import torchvision

        net = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
        if small_stem is None:
            small_stem = image_size <= 64
        if small_stem:
            net.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net, self.image_size, self.in_chans, self.small_stem = net, image_size, in_chans, small_stem

    def forward_features(self, x: torch.Tensor) -> Features:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        fmap = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return Features(fmap.mean(dim=(2, 3)), fmap.flatten(2).transpose(1, 2), tuple(fmap.shape[2:]))


VIT_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


class ViT(Backbone):
    """timm VisionTransformer (CLS token, learned positions) that can also encode only some patches.

    ``forward_tokens(x, keep)`` encodes the patches whose indices are in ``keep`` (int64 [B, K]) and returns
    all tokens after the final norm: [B, 1 + K, D] (CLS first). ``attention_maps(x)`` returns one
    softmax attention tensor per layer, each [B, heads, 1 + L, 1 + L].
    """

    kind = "vit"

    def __init__(self, size: str = "vit_tiny", image_size: int = 32, patch_size: int = 4, in_chans: int = 3,
                 depth: int | None = None, drop_path_rate: float = 0.0):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        if image_size % patch_size:
            raise ValueError(f"ViT patch_size={patch_size} does not divide image_size={image_size}; "
                             f"pick a patch size among {[p for p in range(2, image_size + 1) if image_size % p == 0]}")
        dim, default_depth, heads = VIT_SIZES[size]
        self.vit = VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                                     embed_dim=dim, depth=depth or default_depth, num_heads=heads,
                                     drop_path_rate=drop_path_rate, global_pool="token")
        self.feature_dim, self.image_size, self.in_chans, self.patch_size = dim, image_size, in_chans, patch_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_heads, self.num_layers = heads, len(self.vit.blocks)

    def patchify_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> patch embeddings with positions added, [B, L, D] (no CLS)."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"this ViT takes {self.image_size}x{self.image_size} images, got "
                             f"{x.shape[-2]}x{x.shape[-1]}; resize the input or build the backbone with "
                             f"image_size={x.shape[-1]}")
        return self.vit.patch_embed(x) + self.vit.pos_embed[:, 1:]

    def embed_any_size(self, x: torch.Tensor) -> torch.Tensor:
        """Crops of any size [B, C, h, w] -> patch embeddings with positions added, [B, (h'/p)*(w'/p), D] (no CLS).

        For multi-crop (DINO, SwAV): the learned positions are interpolated bicubically to the crop's patch grid,
        as DINO's ``interpolate_pos_encoding`` does. A side that is not a multiple of the patch size p is first
        resized (bilinear) to the nearest multiple h', w' (at least p). Crops of the training size take
        ``patchify_embed`` unchanged.
        """
        if x.shape[-2:] == (self.image_size, self.image_size):
            return self.patchify_embed(x)
        p, (gh, gw) = self.patch_size, self.grid
        h, w = (max(1, round(s / p)) for s in x.shape[-2:])
        if (h * p, w * p) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h * p, w * p), mode="bilinear", align_corners=False)
        embed = self.vit.patch_embed
        tokens = embed.norm(embed.proj(x).flatten(2).transpose(1, 2))
        pos = self.vit.pos_embed[:, 1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos.float(), size=(h, w), mode="bicubic", align_corners=False)
        return tokens + pos.to(tokens.dtype).permute(0, 2, 3, 1).reshape(1, h * w, -1)

    def encode(self, patches: torch.Tensor, with_cls: bool = True) -> torch.Tensor:
        """Run the transformer on embedded patches [B, K, D]; returns normed tokens [B, (1+)K, D]."""
        if with_cls:
            cls = (self.vit.cls_token + self.vit.pos_embed[:, :1]).expand(patches.shape[0], -1, -1)
            patches = torch.cat([cls, patches], dim=1)
        return self.vit.norm(self.vit.blocks(patches))

    def forward_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        patches = self.patchify_embed(x)
        if keep is not None:
            patches = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return self.encode(patches)

    def forward_features(self, x: torch.Tensor) -> Features:
        tokens = self.forward_tokens(x)
        return Features(tokens[:, 0], tokens[:, 1:], self.grid)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer softmax attention [B, heads, T, T] (T = 1 + patches), recomputed from each block's qkv."""
        tokens = torch.cat([(self.vit.cls_token + self.vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1),
                            self.patchify_embed(x)], dim=1)
        maps = []
        for block in self.vit.blocks:
            attn = block.attn
            b, t, d = tokens.shape
            qkv = attn.qkv(block.norm1(tokens)).reshape(b, t, 3, attn.num_heads, d // attn.num_heads)
            q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            q, k = attn.q_norm(q), attn.k_norm(k)
            maps.append(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
            tokens = block(tokens)
        return maps


@dataclass(frozen=True)
class SmallCNNOptions:
    """Options of ``small_cnn``: ``width`` = channels of the first stage (stages w, 2w, 4w, 8w; features 8w)."""

    width: int = 32

    def __post_init__(self) -> None:
        check_range("SmallCNNOptions", "width", self.width, 1)


@dataclass(frozen=True)
class ResNetOptions:
    """Options of ``resnet18`` / ``resnet50``: ``small_stem`` (3x3 stride-1 conv, no max-pool) or the ImageNet
    stem; None = small stem for images <= 64 px. The weights always start random (no ``pretrained``)."""

    small_stem: bool | None = None

    def __post_init__(self) -> None:
        if self.small_stem is not None and not isinstance(self.small_stem, bool):
            raise ConfigError(f"ResNetOptions.small_stem={self.small_stem!r} must be true, false or None (auto)")


@dataclass(frozen=True)
class ViTOptions:
    """Options of ``vit_tiny`` / ``vit_small``: ``patch_size`` in px (must divide the image size), ``depth`` =
    number of blocks (None = the size's 12), ``drop_path_rate`` = stochastic depth rate of the last block."""

    patch_size: int = 4
    depth: int | None = None
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        check_range("ViTOptions", "patch_size", self.patch_size, 1)
        if self.depth is not None:
            check_range("ViTOptions", "depth", self.depth, 1)
        check_range("ViTOptions", "drop_path_rate", self.drop_path_rate, 0.0, 1.0, high_inclusive=False)


# name -> (options dataclass, builder(options, image_size, in_chans))
BACKBONES: dict[str, tuple[type, Callable[[Any, int, int], Backbone]]] = {
    "small_cnn": (SmallCNNOptions, lambda o, size, chans: SmallCNN(size, chans, o.width)),
    "resnet18": (ResNetOptions, lambda o, size, chans: ResNet(18, size, chans, o.small_stem)),
    "resnet50": (ResNetOptions, lambda o, size, chans: ResNet(50, size, chans, o.small_stem)),
    "vit_tiny": (ViTOptions, lambda o, size, chans: ViT("vit_tiny", size, o.patch_size, chans, o.depth,
                                                        o.drop_path_rate)),
    "vit_small": (ViTOptions, lambda o, size, chans: ViT("vit_small", size, o.patch_size, chans, o.depth,
                                                         o.drop_path_rate)),
}


def known_backbones() -> list[str]:
    return sorted(BACKBONES)


def backbone_options(name: str, options: Mapping[str, Any]) -> SmallCNNOptions | ResNetOptions | ViTOptions:
    """Backbone ``name``'s options dataclass built from the plain dict ``options`` (values coerced as from JSON
    or the CLI). An unknown backbone, an unknown option or a value out of range is a ConfigError naming it."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known backbones: {known_backbones()}")
    cls = BACKBONES[name][0]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"backbone {name!r} has no option(s) {unknown}; allowed options: {allowed}")
    try:
        return from_dict(cls, options)
    except ConfigError as e:
        raise ConfigError(f"backbone {name!r}: {e}") from None


def build_backbone(name: str, image_size: int = 32, in_chans: int = 3, **options: Any) -> Backbone:
    """Backbone ``name`` (see ``known_backbones()``) for ``image_size`` px images with ``in_chans`` channels.

    ``options``: the fields of the backbone's options dataclass (``SmallCNNOptions``, ``ResNetOptions``,
    ``ViTOptions``); anything else is a ConfigError listing the allowed ones.
    """
    opts = backbone_options(name, options)
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is too small; backbones need images of at least 8 px")
    return BACKBONES[name][1](opts, image_size, in_chans)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
