"""Backbones: the encoders every method trains and every evaluation reads.

Each backbone maps images float [B, C, H, W] to pooled features [B, feature_dim] (``forward``) and
exposes ``forward_features`` returning the pooled vector together with spatial tokens (ViT patch
tokens or the CNN's last feature map, flattened) for the attention and patch-similarity tools.
ViTs also run on a subset of patches (``keep``: MAE, I-JEPA), embed crops of other sizes (multi-crop) and return
per-layer attention; their options add the modern transformer parts (2-D RoPE, QK-norm, LayerScale, no absolute
positions) for any ViT method (NEPA's paper model uses all four). Each backbone family has an options dataclass
(``SmallCNNOptions``, ``ResNetOptions``, ``ViTOptions``) validated on creation, so a misspelt or unsupported option is
an error that lists the allowed ones.
Beside these short names, ``timm:<model_name>``, ``hf-hub:<repo>`` and ``torchvision:<resnet>`` specs build any timm
model or torchvision ResNet, random or with pretrained / local weights (``workbench.models.external``).
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
    """torchvision ResNet without its classifier; ``small_stem`` swaps in a 3x3 stride-1 conv and no max-pool.

    ``depth``: 18 or 50 (the short names), or any torchvision ResNet builder name (``"resnet34"``,
    ``"wide_resnet50_2"``, ``"resnext50_32x4d"``...; ``torchvision:<name>`` specs). Weights start random here;
    ``workbench.models.external`` loads pretrained or local weights into ``net``.
    """

    def __init__(self, depth: int | str = 18, image_size: int = 32, in_chans: int = 3, small_stem: bool | None = None):
        super().__init__()
        import torchvision

        arch = depth if isinstance(depth, str) else f"resnet{depth}"
        net = torchvision.models.get_model(arch, weights=None)
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
        self.arch = arch

    def forward_features(self, x: torch.Tensor) -> Features:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        fmap = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return Features(fmap.mean(dim=(2, 3)), fmap.flatten(2).transpose(1, 2), tuple(fmap.shape[2:]))


def capture_attention(model: nn.Module, run: Callable[[], Any]) -> list[torch.Tensor]:
    """Softmax attention [B, heads, T, T] of every timm attention module in ``model`` (module order), recorded
    while ``run()`` runs.

    timm's fused path (``scaled_dot_product_attention``) never forms the matrix, which is why its own extraction
    asks for ``timm.layers.set_fused_attn(False)`` before a model is built. Here each module's ``fused_attn`` is
    switched off only for this call, and the input of its ``attn_drop`` (the softmax) is recorded: the attention
    the forward pass really used, for any timm attention module written that way (ViT, EVA/DINOv3, ...).
    """
    mods = [m for m in model.modules() if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None),
                                                                                  nn.Module)]
    if not mods:
        raise ValueError(f"{type(model).__name__} has no timm attention modules (with fused_attn and attn_drop) "
                         "to read attention from")
    maps: list[torch.Tensor] = []
    saved = [m.fused_attn for m in mods]
    handles = [m.attn_drop.register_forward_hook(lambda _m, inputs, _out: maps.append(inputs[0].detach()))
               for m in mods]
    try:
        for m in mods:
            m.fused_attn = False
        run()
    finally:
        for m, fused, h in zip(mods, saved, handles):
            m.fused_attn = fused
            h.remove()
    return maps


class RopeAttention(nn.Module):
    """timm's ViT attention (the same weights: ``qkv``, ``q_norm``, ``k_norm``, ``proj``) that rotates the queries
    and keys of the patch tokens by 2-D RoPE after the QK-norm, as NEPA's official ``ViTNepaSelfAttention``.

    ``forward(x [B, T, D], rope, is_causal)``: ``rope`` [K, 2 * head_dim] or [B, 1, K, 2 * head_dim] holds (sin, cos)
    of the last K tokens (``ViT.rope_embed``); the T - K tokens before them (CLS, registers) are not rotated. The
    module has no positions of its own, so a call without ``rope`` (a plain timm ``Block.forward``) is an error
    rather than a silently position-free pass: run the blocks through ``ViT.run_blocks``. Built by timm's
    ``VisionTransformer(attn_layer=RopeAttention)``, so it takes timm's initialisation.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 scale_norm: bool = False, proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 norm_layer: Callable[..., nn.Module] | None = None, **dd: Any):
        super().__init__()
        from timm.layers import use_fused_attn

        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(dim, **dd) if scale_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                rope: torch.Tensor | None = None) -> torch.Tensor:
        from timm.layers import apply_rot_embed_cat

        if rope is None:
            raise RuntimeError("this ViT applies 2-D RoPE inside attention and a timm Block passes no positions; run "
                               "its blocks through ViT.run_blocks(x, ViT.rope_embed(...))")
        if attn_mask is not None:
            raise ValueError("RopeAttention takes is_causal, not an attn_mask")
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)  # [B, heads, T, head_dim]
        n = t - rope.shape[-2]  # prefix tokens, not rotated
        q = torch.cat([q[:, :, :n], apply_rot_embed_cat(q[:, :, n:], rope, half=True)], dim=2).type_as(v)
        k = torch.cat([k[:, :, :n], apply_rot_embed_cat(k[:, :, n:], rope, half=True)], dim=2).type_as(v)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0,
                                               is_causal=is_causal)
        else:  # the softmax passes through attn_drop, where capture_attention reads it
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if is_causal:
                attn = attn.masked_fill(torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(self.norm(x.transpose(1, 2).reshape(b, t, d))))


VIT_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


class ViT(Backbone):
    """A timm VisionTransformer (the ``vit_tiny``/``vit_small`` short names, or any ``timm:`` ViT passed as ``vit``)
    that can also encode only some patches.

    Prefix tokens: a CLS token (most ViTs) and register tokens (DINOv2-reg, ``reg_tokens=``) enter every block but
    only CLS is returned: ``forward_tokens(x, keep)`` encodes the patches whose indices are in ``keep`` (int64
    [B, K]) and returns the tokens after the final norm: [B, 1 + K, D] (CLS first). ``forward_features`` pools as
    the timm model does (``forward_head(pre_logits=True)``) and returns the L patch tokens without prefix tokens.
    ``attention_maps(x)`` returns one softmax attention tensor per layer, each [B, heads, T, T] with
    T = ``num_prefix_tokens`` + L (CLS first, then registers, then patches).

    Transformer options of the short names (``ViTOptions``): ``pos_embed`` (learned absolute positions added to the
    patch embeddings, or none), ``qk_norm`` (LayerNorm over each head's queries and keys, ``qk_norm_affine`` with a
    learned scale and shift), ``layer_scale`` (timm's LayerScale on both residual branches, ``gamma`` starting at
    that value) and ``rope_theta`` (2-D RoPE in every attention, ``RopeAttention``: DINOv3's axial form as timm's
    ``RotaryEmbeddingDinoV3`` builds it, patch centres at [-1, 1] on each axis, head_dim / 4 frequencies per axis
    with periods ``rope_theta ** (4 i / head_dim)``, the whole head rotated in the rotate-half layout; prefix tokens
    unrotated; ``rope_rescale`` R > 1 scales the coordinates by one log-uniform factor in [1/R, R] per forward
    pass in training mode). With RoPE every pass of this class (``forward_features``, ``forward_tokens``,
    ``encode``, ``attention_maps``, ``run_blocks``) applies it; a subset of patches (``keep``) keeps its patches'
    grid positions.
    """

    kind = "vit"

    def __init__(self, size: str = "vit_tiny", image_size: int = 32, patch_size: int = 4, in_chans: int = 3,
                 depth: int | None = None, drop_path_rate: float = 0.0, *, vit: nn.Module | None = None,
                 pos_embed: bool = True, qk_norm: bool = False, qk_norm_affine: bool = True,
                 layer_scale: float | None = None, rope_theta: float | None = None, rope_rescale: float | None = None):
        super().__init__()
        self.rope: nn.Module | None = None
        if vit is None:
            from timm.models.vision_transformer import VisionTransformer

            if image_size % patch_size:
                raise ValueError(f"ViT patch_size={patch_size} does not divide image_size={image_size}; pick a "
                                 f"patch size among {[p for p in range(2, image_size + 1) if image_size % p == 0]}")
            dim, default_depth, heads = VIT_SIZES[size]
            vit = VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                                    embed_dim=dim, depth=depth or default_depth, num_heads=heads,
                                    drop_path_rate=drop_path_rate, global_pool="token",
                                    pos_embed="learn" if pos_embed else "none", qk_norm=qk_norm,
                                    init_values=layer_scale, attn_layer=RopeAttention if rope_theta else "")
            if qk_norm and not qk_norm_affine:  # timm's q/k norms are its affine LayerNorm; NEPA pretrains without
                for blk in vit.blocks:
                    blk.attn.q_norm = nn.LayerNorm(dim // heads, eps=1e-6, elementwise_affine=False)
                    blk.attn.k_norm = nn.LayerNorm(dim // heads, eps=1e-6, elementwise_affine=False)
            if rope_theta:
                from timm.layers import RotaryEmbeddingDinoV3

                self.rope = RotaryEmbeddingDinoV3(dim // heads, temperature=rope_theta, rescale_coords=rope_rescale,
                                                  rotate_half=True)
        elif rope_theta or qk_norm or layer_scale or not pos_embed:
            raise ValueError("the transformer options (pos_embed, qk_norm, layer_scale, rope_theta) build the "
                             "workbench's own ViT; a timm model passed as vit= takes its own timm arguments")
        embed = vit.patch_embed
        (ph, pw), (ih, iw) = embed.patch_size, embed.img_size
        if ph != pw or ih != iw or ih % ph:
            raise ValueError(f"{type(vit).__name__}: the workbench takes square images split into square patches "
                             f"that divide them; got {ih}x{iw} px images and {ph}x{pw} patches: pick an image size "
                             f"that is a multiple of {ph}, or another patch size (timm option patch_size, e.g. "
                             f"model.options.patch_size=4)")
        self.vit = vit
        self.feature_dim, self.image_size, self.patch_size = vit.num_features, ih, ph
        self.in_chans = embed.proj.in_channels
        self.grid = (ih // ph, iw // pw)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.has_class_token = vit.cls_token is not None
        self.num_heads, self.num_layers = vit.blocks[0].attn.num_heads, len(vit.blocks)

    def _patch_pos(self) -> torch.Tensor | None:
        """The learned positions of the patches [1, L, D] (None for a ViT without absolute positions)."""
        pos = self.vit.pos_embed
        if pos is None:
            return None
        return pos if self.vit.no_embed_class else pos[:, self.num_prefix_tokens:]

    def patchify_embed(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                       mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """Images [B, C, H, W] -> patch embeddings with positions added, [B, L, D] (no prefix tokens).

        With ``mask`` (bool [B, L], True = masked) the ``mask_token`` [D] (or [1, 1, D]) replaces the masked patches'
        embeddings before the positions are added, as iBOT / DINOv2's ``prepare_tokens_with_masks``."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"this ViT takes {self.image_size}x{self.image_size} images, got "
                             f"{x.shape[-2]}x{x.shape[-1]}; resize the input or build the backbone with "
                             f"image_size={x.shape[-1]}")
        tokens = self.vit.patch_embed(x)
        if tokens.ndim == 4:  # dynamic_img_size patch embeddings come as [B, h, w, D]
            tokens = tokens.flatten(1, 2)
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1), mask_token.reshape(1, 1, -1).to(tokens.dtype), tokens)
        pos = self._patch_pos()
        return tokens if pos is None else tokens + pos

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
        pos = self._patch_pos()
        if pos is None:
            return tokens
        pos = pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos.float(), size=(h, w), mode="bicubic", align_corners=False)
        return tokens + pos.to(tokens.dtype).permute(0, 2, 3, 1).reshape(1, h * w, -1)

    def _prefix(self, batch: int, with_cls: bool = True) -> list[torch.Tensor]:
        """The prefix tokens (CLS when ``with_cls``, then the registers) with their positions, each [B, n, D]."""
        vit, out = self.vit, []
        pos = None if vit.pos_embed is None or vit.no_embed_class else vit.pos_embed
        i = 0
        if vit.cls_token is not None:
            if with_cls:
                out.append((vit.cls_token if pos is None else vit.cls_token + pos[:, :1]).expand(batch, -1, -1))
            i = 1
        if vit.reg_token is not None:
            r = vit.reg_token.shape[1]
            out.append((vit.reg_token if pos is None else vit.reg_token + pos[:, i:i + r]).expand(batch, -1, -1))
        return out

    def rope_embed(self, keep: torch.Tensor | None = None, num_patches: int | None = None) -> torch.Tensor | None:
        """(sin, cos) of the 2-D RoPE for the patches, the ``rope`` of ``run_blocks`` (None without RoPE):
        [L, 2 * head_dim] for the whole grid in raster order; [B, 1, K, 2 * head_dim] for the patches ``keep``
        (int64 [B, K]) of it; for ``num_patches`` K other than L (a multi-crop of another size, square) the
        sqrt(K) x sqrt(K) grid over the same [-1, 1] span. In training mode with ``rope_rescale`` each call draws
        a new coordinate scale: call it once per forward pass."""
        if self.rope is None:
            return None
        grid = self.grid
        if keep is None and num_patches not in (None, self.num_patches):
            side = round(num_patches ** 0.5)
            if side * side != num_patches:
                raise ValueError(f"RoPE needs the patch grid: {num_patches} patches are not the full "
                                 f"{self.grid[0]}x{self.grid[1]} grid nor a square one; pass keep")
            grid = (side, side)
        emb = self.rope.get_embed(list(grid))
        return emb if keep is None else emb[keep].unsqueeze(1)

    def run_blocks(self, x: torch.Tensor, rope: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """Tokens [B, T, D] (any prefix tokens first, then the patches ``rope`` covers) through the blocks, without
        the final norm; ``is_causal``: token t attends to tokens <= t (NEPA). ``rope`` is ``rope_embed(...)``,
        required when the ViT has RoPE."""
        if self.rope is None:
            for blk in self.vit.blocks:
                x = blk(x, is_causal=is_causal)
            return x
        if rope is None:
            raise ValueError("this ViT has RoPE: pass rope=self.rope_embed(...) for the patch tokens")
        for blk in self.vit.blocks:  # timm's Block.forward with the positions handed to the attention
            x = x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x), is_causal=is_causal, rope=rope)))
            x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        return x

    def _run(self, patches: torch.Tensor, with_cls: bool = True, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Prefix tokens + embedded patches [B, K, D] (the patches ``keep`` of the grid, for RoPE) through the
        blocks and the final norm: [B, n + K, D]."""
        vit = self.vit
        prefix = self._prefix(patches.shape[0], with_cls)
        x = torch.cat([*prefix, patches], dim=1) if prefix else patches
        x = self.run_blocks(vit.norm_pre(vit.pos_drop(x)), self.rope_embed(keep, patches.shape[1]))
        return vit.norm(x)

    def encode(self, patches: torch.Tensor, with_cls: bool = True, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Run the transformer on embedded patches [B, K, D]; returns normed tokens [B, (1+)K, D] (registers, which
        take part in every block, are dropped from the output). ``keep`` [B, K]: which patches of the grid they
        are (their RoPE positions; None: the whole grid, or a square crop's grid)."""
        if with_cls and not self.has_class_token:
            raise ValueError(f"this {type(self.vit).__name__} has no class token; MAE, I-JEPA and DINO's multi-crop "
                             "read one (build the timm model with class_token=True)")
        x = self._run(patches, with_cls, keep)
        regs = self.num_prefix_tokens - int(self.has_class_token)
        if with_cls:
            return x if regs == 0 else torch.cat([x[:, :1], x[:, 1 + regs:]], dim=1)
        return x[:, regs:]

    def forward_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        patches = self.patchify_embed(x)
        if keep is not None:
            patches = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return self.encode(patches, keep=keep)

    def forward_features(self, x: torch.Tensor) -> Features:
        tokens = self._run(self.patchify_embed(x))
        return Features(self.vit.forward_head(tokens, pre_logits=True), tokens[:, self.num_prefix_tokens:],
                        self.grid)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer softmax attention [B, heads, T, T] (T = prefix tokens + patches) of one forward pass."""
        if not self.has_class_token:
            raise ValueError(f"this {type(self.vit).__name__} has no class token, so there is no CLS attention to "
                             "show; the patch-similarity and PCA views work for it")
        return capture_attention(self.vit, lambda: self._run(self.patchify_embed(x)))


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
    number of blocks (None = the size's 12), ``drop_path_rate`` = stochastic depth rate of the last block.

    The transformer (defaults: the plain timm ViT): ``pos_embed`` learned absolute positions (false: none, position
    from RoPE only); ``qk_norm`` per-head LayerNorm of queries and keys, ``qk_norm_affine`` with learned scale and
    shift; ``layer_scale`` LayerScale's initial value on both residual branches (None: off); ``rope_theta`` 2-D RoPE
    base period (None: off; 100 as DINOv3 and NEPA), ``rope_rescale`` its training-time coordinate rescaling factor
    (None: off; NEPA 2). See ``ViT``; the options are recorded with a run, so checkpoints rebuild the same model."""

    patch_size: int = 4
    depth: int | None = None
    drop_path_rate: float = 0.0
    pos_embed: bool = True
    qk_norm: bool = False
    qk_norm_affine: bool = True
    layer_scale: float | None = None
    rope_theta: float | None = None
    rope_rescale: float | None = None

    def __post_init__(self) -> None:
        o = "ViTOptions"
        check_range(o, "patch_size", self.patch_size, 1)
        if self.depth is not None:
            check_range(o, "depth", self.depth, 1)
        check_range(o, "drop_path_rate", self.drop_path_rate, 0.0, 1.0, high_inclusive=False)
        for name in ("pos_embed", "qk_norm", "qk_norm_affine"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{o}.{name}={getattr(self, name)!r} must be true or false")
        if self.layer_scale is not None:
            check_range(o, "layer_scale", self.layer_scale, 0.0, low_inclusive=False)
        if self.rope_theta is not None:
            check_range(o, "rope_theta", self.rope_theta, 1.0, low_inclusive=False)
        if self.rope_rescale is not None:
            if self.rope_theta is None:
                raise ConfigError(f"{o}.rope_rescale={self.rope_rescale!r} needs RoPE: set rope_theta (e.g. 100)")
            check_range(o, "rope_rescale", self.rope_rescale, 1.0)


def _vit(size: str) -> Callable[[ViTOptions, int, int], Backbone]:
    """Builder of the short name ``size`` from its ``ViTOptions`` (whose fields are ``ViT``'s keyword arguments)."""
    return lambda o, image_size, chans: ViT(size, image_size, in_chans=chans, **dataclasses.asdict(o))


# name -> (options dataclass, builder(options, image_size, in_chans))
BACKBONES: dict[str, tuple[type, Callable[[Any, int, int], Backbone]]] = {
    "small_cnn": (SmallCNNOptions, lambda o, size, chans: SmallCNN(size, chans, o.width)),
    "resnet18": (ResNetOptions, lambda o, size, chans: ResNet(18, size, chans, o.small_stem)),
    "resnet50": (ResNetOptions, lambda o, size, chans: ResNet(50, size, chans, o.small_stem)),
    "vit_tiny": (ViTOptions, _vit("vit_tiny")),
    "vit_small": (ViTOptions, _vit("vit_small")),
}


@dataclass(frozen=True)
class SpecFamily:
    """How backbone names with a library prefix (``timm:``...) are validated and built: functions of
    (name, options) -> options dataclass / "vit" or "cnn" / patch size or None, and build(name, image_size,
    in_chans, **options) -> Backbone. ``workbench.models.external`` registers its families here on import."""

    forms: tuple[str, ...]
    options: Callable[[str, Mapping[str, Any]], Any]
    kind: Callable[[str, Mapping[str, Any]], str]
    patch_size: Callable[[str, Mapping[str, Any]], int | None]
    build: Callable[..., Backbone]


SPEC_FAMILIES: dict[str, SpecFamily] = {}  # name prefix -> family


def spec_family(name: Any) -> SpecFamily | None:
    """The family of a prefixed backbone name (``timm:resnet18`` -> timm's), None for a short name."""
    if isinstance(name, str):
        for prefix, family in SPEC_FAMILIES.items():
            if name.startswith(prefix):
                return family
    return None


def known_backbones() -> list[str]:
    """The short names; ``timm:<model_name>``, ``hf-hub:<repo>`` and ``torchvision:<resnet>`` specs are accepted too."""
    return sorted(BACKBONES)


def backbone_options(name: str, options: Mapping[str, Any]) -> Any:
    """Backbone ``name``'s options dataclass built from the plain dict ``options`` (values coerced as from JSON
    or the CLI). An unknown backbone, an unknown option or a value out of range is a ConfigError naming it.
    A ``timm:``/``hf-hub:``/``torchvision:`` spec gets ``TimmOptions`` / ``TorchvisionOptions`` (see
    ``workbench.models.external``)."""
    family = spec_family(name)
    if family is not None:
        return family.options(name, options)
    if name not in BACKBONES:
        forms = sorted({f for fam in SPEC_FAMILIES.values() for f in fam.forms})
        raise ConfigError(f"unknown backbone {name!r}; known backbones: {known_backbones()}"
                          + (f", or a spec {forms}" if forms else ""))
    cls = BACKBONES[name][0]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"backbone {name!r} has no option(s) {unknown}; allowed options: {allowed}")
    try:
        return from_dict(cls, options)
    except ConfigError as e:
        raise ConfigError(f"backbone {name!r}: {e}") from None


def backbone_kind(name: str, options: Mapping[str, Any]) -> str:
    """``"vit"`` (patch tokens and attention) or ``"cnn"`` for backbone ``name`` with ``options``, without
    building it (a timm spec is looked at on the meta device)."""
    family = spec_family(name)
    if family is not None:
        return family.kind(name, options)
    backbone_options(name, options)
    return "vit" if BACKBONES[name][0] is ViTOptions else "cnn"


def backbone_patch_size(name: str, options: Mapping[str, Any]) -> int | None:
    """The patch size in px of a ViT backbone ``name`` with ``options`` (None for a CNN)."""
    family = spec_family(name)
    if family is not None:
        return family.patch_size(name, options)
    return getattr(backbone_options(name, options), "patch_size", None)


def build_backbone(name: str, image_size: int = 32, in_chans: int = 3, **options: Any) -> Backbone:
    """Backbone ``name`` (see ``known_backbones()``, or a ``timm:``/``hf-hub:``/``torchvision:`` spec) for
    ``image_size`` px images with ``in_chans`` channels.

    ``options``: the fields of the backbone's options dataclass (``SmallCNNOptions``, ``ResNetOptions``,
    ``ViTOptions``; for a spec: ``pretrained``, ``weights`` and the library's own keyword arguments); anything
    else is a ConfigError listing the allowed ones.
    """
    family = spec_family(name)
    opts = None if family is not None else backbone_options(name, options)
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is too small; backbones need images of at least 8 px")
    if family is not None:
        return family.build(name, image_size, in_chans, **options)
    return BACKBONES[name][1](opts, image_size, in_chans)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
