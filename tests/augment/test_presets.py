"""Presets, config validation and round trip, and the whole view pipeline replayed through torchvision."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from workbench.augment import (AugmentConfig, ViewBatch, ViewOps, generate_views, known_presets, make_preset,
                               normalize)
from workbench.config import ConfigError, from_dict, to_dict


def _u8(b: int = 16, c: int = 3, s: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, s, s), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _replay(img_u8: torch.Tensor, view: ViewOps, p: dict, i: int, mean, std) -> torch.Tensor:
    """One sample of one view through torchvision.transforms.v2.functional with the recorded params."""
    x = TF.to_dtype(img_u8, torch.float32, scale=True)
    x = TF.resized_crop(x, *[int(v) for v in p["crop"][i]], [view.size, view.size], antialias=True)
    if p["flip"][i]:
        x = TF.horizontal_flip(x)
    if p["jitter"][i]:
        fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
        names = ["brightness", "contrast", "saturation", "hue"]
        for op in p["jitter_order"][i].tolist():
            x = fns[op](x, float(p[names[op]][i]))
    if p["grayscale"][i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=x.shape[0])
    if p["blur"][i]:
        s = float(p["sigma"][i])
        x = TF.gaussian_blur(x, [view.kernel_size] * 2, [s, s])
    if p["solarize"][i]:
        x = TF.solarize(x, view.solarize_threshold)
    return TF.normalize(x, list(mean), list(std))


@pytest.mark.parametrize("preset,channels", [("simclr", 3), ("byol", 3), ("dino", 3), ("simclr", 1)])
def test_generate_views_replays_through_torchvision(preset, channels):
    mean, std = ((0.5,), (0.25,)) if channels == 1 else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    cfg = make_preset(preset, 32, mean=mean, std=std, **({"local_views": 2} if preset == "dino" else {}))
    images = _u8(b=12, c=channels, s=32, seed=1)
    vb = generate_views(images, cfg, _gen(2))
    assert isinstance(vb, ViewBatch) and len(vb.views) == len(cfg.views) == len(vb.params)
    for view, out, p in zip(cfg.views, vb.views, vb.params):
        assert out.shape == (12, channels, view.size, view.size) and out.dtype == torch.float32
        for i in range(12):
            ref = _replay(images[i], view, p, i, mean, std)
            # 1e-5 on [0, 1] before normalization; std 0.225 scales it by ~4.5
            assert float((out[i] - ref).abs().max()) < 1e-4, (preset, i)


def test_generate_views_deterministic_under_seed_and_seed_sensitive():
    cfg = make_preset("simclr", 32)
    images = _u8()
    a, b, c = (generate_views(images, cfg, _gen(s)) for s in (3, 3, 4))
    assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))
    assert not torch.equal(a.views[0], c.views[0])
    assert not torch.equal(a.views[0], a.views[1])  # the two views differ


def test_views_are_geometry_then_colour_and_the_geometry_stream_can_be_separate():
    """generate_views = sample_geometry (crop, flip of every view) + crops + finish_views (colour, normalisation);
    with a geometry generator the boxes depend on it alone, the colours on the other generator alone, and full-size
    images of different sizes cropped by crop_images give the same views to uint8 rounding."""
    from workbench.augment import crop_images, finish_views, sample_geometry

    cfg = make_preset("byol", 16, mean=(0.5,) * 3, std=(0.25,) * 3)
    images = _u8(b=6, s=24, seed=3)
    a = generate_views(images, cfg, _gen(1), _gen(9))
    b = generate_views(images, cfg, _gen(2), _gen(9))
    c = generate_views(images, cfg, _gen(1), _gen(8))
    assert all(torch.equal(x["crop"], y["crop"]) and torch.equal(x["flip"], y["flip"]) for x, y in zip(a.params, b.params))
    assert not torch.equal(a.params[0]["brightness"], b.params[0]["brightness"])
    assert torch.equal(a.params[0]["brightness"], c.params[0]["brightness"])
    assert not torch.equal(a.params[0]["crop"], c.params[0]["crop"])
    geometry = sample_geometry(6, 24, 24, cfg, _gen(9))
    assert all(torch.equal(g["crop"], p["crop"]) for g, p in zip(geometry, a.params))
    per_image = finish_views(crop_images(list(images), geometry, cfg), geometry, cfg, _gen(1))
    for x, y in zip(a.views, per_image.views):
        assert float((x - y).abs().max()) < 8 / 255 / 0.25
    # one generator: geometry of every view first, then colour
    one = generate_views(images, cfg, _gen(4))
    g = _gen(4)
    assert torch.equal(sample_geometry(6, 24, 24, cfg, g)[1]["crop"], one.params[1]["crop"])
    assert torch.equal(finish_views([v.clone() for v in crop_images(list(images), one.params, cfg)], one.params,
                                    cfg, g).params[0]["hue"], one.params[0]["hue"])


def test_none_preset_is_normalized_resize_without_randomness():
    images = _u8(b=6, s=24)
    cfg = make_preset("none", 16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    vb1, vb2 = generate_views(images, cfg, _gen(0)), generate_views(images, cfg, _gen(1))
    ref = torch.stack([TF.normalize(TF.resize(TF.to_dtype(im, torch.float32, scale=True), [16, 16], antialias=True),
                                    [0.5] * 3, [0.5] * 3) for im in images])
    for v in vb1.views + vb2.views:
        assert float((v - ref).abs().max()) < 1e-5
    assert torch.equal(vb1.views[0], vb1.views[1])


def test_normalize_is_eval_transform():
    images = _u8(b=3)
    out = normalize(images, (0.5,), (0.25,))
    ref = (images.float() / 255 - 0.5) / 0.25
    assert float((out - ref).abs().max()) < 1e-5


def test_known_presets_and_shapes():
    assert known_presets() == ["byol", "dino", "mae", "none", "simclr"]
    for name, n_views, n_global in [("simclr", 2, 2), ("byol", 2, 2), ("dino", 8, 2), ("mae", 1, 1), ("none", 2, 2)]:
        cfg = make_preset(name, 32)
        assert len(cfg.views) == n_views and cfg.num_global == n_global, name
        assert all(v.size == 32 for v in cfg.views[:n_global])


def test_simclr_small_image_recipe_is_the_papers_cifar_one():
    """solo-learn's CIFAR jitter (0.8, 0.8, 0.8, 0.2); no blur, as in the SimCLR paper's CIFAR-10 recipe (its
    Appendix B.9: blur hurts 32 px images); blur 0.5 again for large images."""
    v = make_preset("simclr", 32).views[0]
    assert (v.scale, v.jitter_p, v.brightness, v.contrast, v.saturation, v.hue) == ((0.08, 1.0), 0.8, 0.8, 0.8, 0.8, 0.2)
    assert (v.grayscale_p, v.blur_p, v.solarize_p, v.flip_p) == (0.2, 0.0, 0.0, 0.5)
    assert make_preset("simclr", 96).views[0].blur_p == 0.5


def test_dino_local_crops():
    cfg = make_preset("dino", 32)
    assert [v.size for v in cfg.views] == [32, 32] + [12] * 6
    assert cfg.views[0].scale == (0.4, 1.0) and cfg.views[2].scale == (0.05, 0.4)
    cfg = make_preset("dino", 96, local_views=3, local_size=40)
    assert [v.size for v in cfg.views] == [96, 96, 40, 40, 40]
    vb = generate_views(_u8(b=4, s=32), make_preset("dino", 32, local_views=2), _gen(0))
    assert [tuple(v.shape[-2:]) for v in vb.views] == [(32, 32), (32, 32), (12, 12), (12, 12)]
    assert vb.num_global == 2
    # local crops cover a small area, global ones a large one
    area = [(p["crop"][:, 2] * p["crop"][:, 3]).float().mean() / 32 ** 2 for p in vb.params]
    assert float(area[2]) < 0.45 < float(area[0])
    assert len(make_preset("dino", 32, local_views=0).views) == 2


def test_simclr_multi_crop_keeps_its_colour_recipe_on_smaller_local_crops():
    plain = make_preset("simclr", 28)
    assert len(plain.views) == 2 and plain.views[0].scale == (0.08, 1.0)  # no local crops unless asked
    cfg = make_preset("simclr", 28, local_views=3, local_size=12, global_scale=(0.3, 1.0), local_scale=(0.05, 0.3))
    assert [v.size for v in cfg.views] == [28, 28, 12, 12, 12] and cfg.num_global == 2
    assert cfg.views[0].scale == (0.3, 1.0) and cfg.views[4].scale == (0.05, 0.3)
    assert all(v.jitter_p == 0.8 and v.brightness == 0.8 for v in cfg.views)
    vb = generate_views(_u8(b=4, s=28), cfg, _gen(0))
    assert [tuple(v.shape[-2:]) for v in vb.views] == [(28, 28)] * 2 + [(12, 12)] * 3


@pytest.mark.parametrize("image_size,blur", [(96, (1.0, 0.1)), (32, (0.0, 0.0))])
def test_byol_asymmetry_in_drawn_params(image_size, blur):
    cfg = make_preset("byol", image_size, size=8)  # tiny views: only the draw frequencies matter here
    vb = generate_views(_u8(b=2000, s=8, seed=5), cfg, _gen(6))
    p1, p2 = vb.params
    sol1, sol2 = float(p1["solarize"].float().mean()), float(p2["solarize"].float().mean())
    blur1, blur2 = float(p1["blur"].float().mean()), float(p2["blur"].float().mean())
    assert sol1 == 0.0 and abs(sol2 - 0.2) < 0.04
    assert abs(blur1 - blur[0]) < 0.04 and abs(blur2 - blur[1]) < 0.04
    assert abs(float(p1["jitter"].float().mean()) - 0.8) < 0.04
    assert abs(float(p1["grayscale"].float().mean()) - 0.2) < 0.04


def test_mae_preset_is_crop_and_flip_only():
    cfg = make_preset("mae", 32)
    vb = generate_views(_u8(b=200), cfg, _gen(0))
    p = vb.params[0]
    assert cfg.views[0].scale == (0.2, 1.0)
    assert not bool(p["jitter"].any() | p["grayscale"].any() | p["blur"].any() | p["solarize"].any())
    assert 0 < int(p["flip"].sum()) < 200
    area = (p["crop"][:, 2] * p["crop"][:, 3]).float() / 32 ** 2
    assert float(area.min()) > 0.15


def test_overrides_apply_to_every_view_and_views_replace():
    cfg = make_preset("dino", 32, jitter_p=0.0, local_views=2)
    assert all(v.jitter_p == 0.0 for v in cfg.views) and len(cfg.views) == 4
    views = [ViewOps(size=16, scale=(0.5, 1.0)), {"size": 8, "flip_p": 0.0}]
    cfg = make_preset("simclr", 32, views=views, num_global=1)
    assert [v.size for v in cfg.views] == [16, 8] and cfg.num_global == 1 and cfg.views[1].flip_p == 0.0
    with pytest.raises(ConfigError, match="jiter_p"):
        make_preset("simclr", 32, jiter_p=0.1)
    with pytest.raises(ConfigError, match="local_views"):
        make_preset("byol", 32, local_views=2)  # a multi-crop key of dino and simclr only
    with pytest.raises(ConfigError, match="local_size"):
        make_preset("simclr", 32, local_views=2, local_size=0)
    with pytest.raises(ConfigError, match="simclr"):
        make_preset("simclr2", 32)


def test_config_round_trip_through_plain_dicts():
    for name in known_presets():
        cfg = make_preset(name, 32, mean=(0.5,), std=(0.2,))
        d = json.loads(json.dumps(to_dict(cfg)))
        back = from_dict(AugmentConfig, d)
        assert back == cfg and isinstance(back.views[0], ViewOps)


@pytest.mark.parametrize("kwargs,field", [
    ({"size": 0}, "size"), ({"scale": (0.5, 0.2)}, "scale"), ({"scale": (0.0, 1.0)}, "scale"),
    ({"ratio": (0.0, 1.0)}, "ratio"), ({"jitter_p": 1.5}, "jitter_p"), ({"hue": 0.7}, "hue"),
    ({"brightness": -0.1}, "brightness"), ({"blur_kernel": 4}, "blur_kernel"),
    ({"blur_sigma": (0.0, 1.0)}, "blur_sigma"), ({"solarize_threshold": 2.0}, "solarize_threshold"),
])
def test_viewops_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ViewOps(**{"size": 32, **kwargs})


def test_augment_config_validation():
    v = ViewOps(size=8)
    with pytest.raises(ConfigError, match="num_global"):
        AugmentConfig(views=[v, v], num_global=3)
    with pytest.raises(ConfigError, match="views"):
        AugmentConfig(views=[])
    with pytest.raises(ConfigError, match="std"):
        AugmentConfig(views=[v], num_global=1, mean=(0.5, 0.5), std=(0.5,))
    with pytest.raises(ConfigError, match="std"):
        AugmentConfig(views=[v], num_global=1, mean=(0.5,), std=(0.0,))


def test_generate_views_input_errors():
    cfg = make_preset("simclr", 8)
    with pytest.raises(ValueError, match="channels"):
        generate_views(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), cfg, _gen())
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        generate_views(torch.zeros(4, 8, 8, dtype=torch.uint8), cfg, _gen())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generate_views_on_cuda_matches_cpu_replay():
    images = _u8(b=8).cuda()
    cfg = make_preset("byol", 32)
    for gen in (torch.Generator(device="cuda").manual_seed(0), _gen(0)):
        vb = generate_views(images, cfg, gen)
        assert all(v.is_cuda for v in vb.views)
        for view, out, p in zip(cfg.views, vb.views, vb.params):
            for i in range(8):
                ref = _replay(images[i].cpu(), view, {k: t.cpu() for k, t in p.items()}, i, cfg.mean, cfg.std)
                assert float((out[i].cpu() - ref).abs().max()) < 1e-4


def test_views_of_shapes_images_replay_through_torchvision():
    """Real (procedural) images with flat backgrounds and grey pixels: ties in hue, saturated edges."""
    data = pytest.importorskip("workbench.data")
    if "shapes" not in data.known_datasets():
        pytest.skip("the shapes data set is not registered")
    images = data.load("shapes", split="train", n=16).images[:16]
    cfg = make_preset("byol", images.shape[-1])
    vb = generate_views(images, cfg, _gen(11))
    for view, out, p in zip(cfg.views, vb.views, vb.params):
        for i in range(images.shape[0]):
            ref = _replay(images[i], view, p, i, cfg.mean, cfg.std)
            assert float((out[i] - ref).abs().max()) < 1e-4, i
