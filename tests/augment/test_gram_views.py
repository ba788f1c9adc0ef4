"""DINOv3's Gram-teacher crops (``AugmentConfig.gram_scale``): each global view's crop box and flip rendered larger
and undistorted after all the views, on the in-memory and the streaming path, without changing the other views."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from workbench.augment import ViewOps, crop_images, finish_views, generate_views, make_preset, sample_geometry
from workbench.config import ConfigError, from_dict, to_dict

NO_COLOUR = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _smooth_u8(b: int = 8, s: int = 48, seed: int = 0) -> torch.Tensor:
    """Images whose content varies over ~8 px (6x6 noise upsampled), so resampling them twice differs little."""
    low = torch.rand(b, 3, 6, 6, generator=_gen(seed))
    return (F.interpolate(low, size=s, mode="bicubic", align_corners=False).clamp(0, 1) * 255).round().to(torch.uint8)


def _unnormalise(x: torch.Tensor, cfg) -> torch.Tensor:
    return x * torch.tensor(cfg.std).reshape(1, -1, 1, 1) + torch.tensor(cfg.mean).reshape(1, -1, 1, 1)


def test_gram_view_shows_the_global_crop_at_twice_the_size():
    cfg = make_preset("dino", 16, local_views=2, gram_scale=2.0, **NO_COLOUR)
    vb = generate_views(_smooth_u8(), cfg, _gen(1))
    assert [v.shape[-1] for v in vb.views] == [16, 16, 6, 6, 32, 32] and vb.num_global == 2 and vb.num_gram == 2
    for i in range(2):
        gram, glob = vb.params[4 + i], vb.params[i]
        assert torch.equal(gram["crop"], glob["crop"]) and torch.equal(gram["flip"], glob["flip"])
        down = F.interpolate(_unnormalise(vb.views[4 + i], cfg), size=16, mode="bilinear", antialias=True)
        err = (down - _unnormalise(vb.views[i], cfg)).abs()
        other = (down - _unnormalise(vb.views[1 - i], cfg)).abs()  # the other global crop: other content
        # measured on seeds 0-2: max 0.020-0.025, mean 0.0037-0.0040 (in [0, 1] pixels); the other crop's mean 0.23
        assert err.max() < 0.05 and err.mean() < 0.01, (err.max(), err.mean())
        assert other.mean() > 10 * err.mean()


def test_gram_views_replay_through_torchvision_undistorted_and_leave_the_other_views_alone():
    images = torch.randint(0, 256, (6, 3, 24, 24), generator=_gen(2), dtype=torch.uint8)
    plain = make_preset("dino", 16, local_views=2)  # colour ops on: the Gram views still take none
    cfg = make_preset("dino", 16, local_views=2, gram_scale=2.0)
    a, b = generate_views(images, plain, _gen(3), _gen(4)), generate_views(images, cfg, _gen(3), _gen(4))
    assert len(b.views) == len(a.views) + 2
    for va, vb_, pa, pb in zip(a.views, b.views, a.params, b.params):  # every drawn view is unchanged
        assert torch.equal(va, vb_) and pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    for i in range(2):
        p = b.params[i]
        for s in range(images.shape[0]):
            x = TF.to_dtype(images[s], torch.float32, scale=True)
            x = TF.resized_crop(x, *[int(v) for v in p["crop"][s]], [32, 32], antialias=True)
            x = TF.horizontal_flip(x) if p["flip"][s] else x
            torch.testing.assert_close(b.views[4 + i][s], TF.normalize(x, list(cfg.mean), list(cfg.std)),
                                       atol=2e-5, rtol=0)
    assert b.params[0]["jitter"].any()  # the global views were distorted, their Gram renderings not


def test_gram_views_on_the_streaming_path_match_the_in_memory_ones():
    images = _smooth_u8(b=4, s=40, seed=5)
    cfg = make_preset("dino", 16, local_views=1, gram_scale=1.5)
    geometry = sample_geometry(4, 40, 40, cfg, _gen(7))
    crops = crop_images(list(images), geometry, cfg)  # what the workers send: uint8 crops
    assert [c.shape[-1] for c in crops] == [16, 16, 6, 24, 24] and crops[3].dtype == torch.uint8
    streamed = finish_views(crops, geometry, cfg, _gen(8))
    memory = generate_views(images, cfg, _gen(8), _gen(7))
    assert streamed.num_gram == memory.num_gram == 2
    for s, m in zip(streamed.views[3:], memory.views[3:]):
        assert (s - m).abs().max() < 0.03  # uint8 rounding of the streamed crops (1/255 over std ~0.22)


def test_gram_scale_config():
    cfg = make_preset("dino", 32, gram_scale=2.0)
    assert [v.size for v in cfg.gram_views] == [64, 64] and cfg.num_views == 8
    assert all(v.jitter_p == v.grayscale_p == v.blur_p == v.solarize_p == 0 for v in cfg.gram_views)
    assert [(v.scale, v.ratio, v.flip_p) for v in cfg.gram_views] == [(v.scale, v.ratio, v.flip_p)
                                                                      for v in cfg.views[:2]]
    assert from_dict(type(cfg), to_dict(cfg)).gram_views == cfg.gram_views
    assert make_preset("dino", 32).gram_views == [] and isinstance(cfg.gram_views[0], ViewOps)
    with pytest.raises(ConfigError, match="gram_scale"):
        make_preset("dino", 32, gram_scale=0.0)
