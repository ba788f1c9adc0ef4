"""Each batched augmentation op against torchvision.transforms.v2.functional applied per sample
with the parameters the op recorded; crop parameters against RandomResizedCrop.get_params."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms as T1
import torchvision.transforms.v2.functional as TF
from scipy.stats import ks_2samp

from workbench.augment import ops

TOL = 1e-5  # on [0, 1] floats


def _images(b: int = 24, c: int = 3, h: int = 20, w: int = 28, seed: int = 0) -> torch.Tensor:
    """Random float images in [0, 1] on the uint8 grid, with some grey and saturated pixels (edge cases)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, w), generator=g).float() / 255
    if c == 3:
        x[:, :, :2] = x[:, :1, :2]  # grey rows: max == min
        x[:, 0, 2] = x[:, 1, 2]  # ties between the max channels
    x[:, :, -1, :3] = 1.0
    x[:, :, -1, 3:6] = 0.0
    return x


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------------------- crop params
def _tv_crop_params(n: int, h: int, w: int, scale, ratio, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    img = torch.zeros(1, h, w)
    return torch.tensor([T1.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])


@pytest.mark.parametrize("h,w", [(32, 32), (24, 40)])
def test_crop_params_follow_torchvision_distribution(h, w):
    scale, ratio, n = (0.08, 1.0), (3 / 4, 4 / 3), 3000
    ours = ops.sample_crop_params(n, h, w, scale, ratio, _gen(1))
    ref = _tv_crop_params(n, h, w, scale, ratio, seed=2)
    for boxes in (ours, ref):
        top, left, ch, cw = boxes.T
        assert bool(((top >= 0) & (left >= 0) & (top + ch <= h) & (left + cw <= w) & (ch > 0) & (cw > 0)).all())

    def stats(b):
        top, left, ch, cw = b.T.double()
        rel_top = torch.where(ch < h, top / (h - ch).clamp(min=1), torch.full_like(top, 0.5))
        return {"area": (ch * cw / (h * w)).numpy(), "log_aspect": torch.log(cw / ch).numpy(),
                "rel_top": rel_top.numpy(), "height": ch.numpy()}

    so, sr = stats(ours), stats(ref)
    for key in so:
        assert ks_2samp(so[key], sr[key]).pvalue > 1e-3, key


def test_crop_params_ks_detects_wrong_ratio_sampling():
    """The KS comparison above has power: a sampler with uniform (not log-uniform) ratio is rejected."""
    h = w = 64
    n, scale, ratio = 3000, (0.08, 1.0), (1 / 3, 3.0)
    g = _gen(3)
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    aspect = ratio[0] + (ratio[1] - ratio[0]) * u[:, 1]  # wrong: uniform
    wrong = torch.log(torch.round(torch.sqrt(area * aspect)) / torch.round(torch.sqrt(area / aspect)))
    ref = _tv_crop_params(n, h, w, scale, ratio, seed=4)
    ref_aspect = torch.log(ref[:, 3].double() / ref[:, 2].double())
    ours = ops.sample_crop_params(n, h, w, scale, ratio, _gen(5))
    ours_aspect = torch.log(ours[:, 3].double() / ours[:, 2].double())
    assert ks_2samp(wrong.numpy(), ref_aspect.numpy()).pvalue < 1e-6
    assert ks_2samp(ours_aspect.numpy(), ref_aspect.numpy()).pvalue > 1e-3


@pytest.mark.parametrize("h,w,scale,ratio", [(32, 32, (0.95, 1.0), (3.0, 4.0)), (20, 60, (0.99, 1.0), (0.5, 0.6)),
                                             (60, 20, (0.99, 1.0), (1.0, 1.2))])
def test_crop_params_fallback_is_torchvision_centre_crop(h, w, scale, ratio):
    ours = ops.sample_crop_params(16, h, w, scale, ratio, _gen(0))
    ref = _tv_crop_params(16, h, w, scale, ratio, seed=0)
    # no attempt can be valid here, so both use the deterministic fallback
    assert torch.equal(ours, ref)


def test_crop_params_generator_determinism():
    a = ops.sample_crop_params(64, 32, 32, (0.08, 1), (0.75, 4 / 3), _gen(7))
    b = ops.sample_crop_params(64, 32, 32, (0.08, 1), (0.75, 4 / 3), _gen(7))
    c = ops.sample_crop_params(64, 32, 32, (0.08, 1), (0.75, 4 / 3), _gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_params_with_per_sample_sizes_match_one_size_per_draw():
    """Per-sample sizes (full-size images of a streamed batch): row b is what the same draws give for its own size,
    fallback included (the last two rows cannot fit the ratio range)."""
    heights, widths = torch.tensor([32, 24, 60, 20, 7, 32]), torch.tensor([32, 40, 20, 60, 300, 32])
    for scale, ratio in (((0.08, 1.0), (3 / 4, 4 / 3)), ((0.95, 1.0), (3.0, 4.0))):
        mixed = ops.sample_crop_params(6, heights, widths, scale, ratio, _gen(1))
        for b in range(6):
            alone = ops.sample_crop_params(6, int(heights[b]), int(widths[b]), scale, ratio, _gen(1))
            assert torch.equal(mixed[b], alone[b]), (scale, b)
    fallback = ops.sample_crop_params(2, torch.tensor([20, 60]), torch.tensor([60, 20]), (0.99, 1.0), (1.0, 1.2),
                                      _gen(0))
    assert fallback.tolist() == [_tv_crop_params(1, 20, 60, (0.99, 1.0), (1.0, 1.2), 0)[0].tolist(),
                                 _tv_crop_params(1, 60, 20, (0.99, 1.0), (1.0, 1.2), 0)[0].tolist()]


def test_resized_crop_image_is_torchvision_on_uint8_and_rounds_the_float_path():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 23, 37), generator=g, dtype=torch.uint8)
    box = ops.sample_crop_params(8, 23, 37, (0.08, 1.0), (3 / 4, 4 / 3), _gen(2))
    for k in range(8):
        out = ops.resized_crop_image(img, box[k], 16, flip=bool(k % 2))
        ref = TF.resized_crop(img, *box[k].tolist(), [16, 16], antialias=True)
        assert out.dtype == torch.uint8 and torch.equal(out, TF.horizontal_flip(ref) if k % 2 else ref)
        batched = ops.resized_crop(img[None].float() / 255, box[k:k + 1], 16, torch.tensor([bool(k % 2)]))[0]
        assert _max_err(out.float() / 255, batched) <= 1.01 / 255  # uint8 rounding of the same resampling


# ----------------------------------------------------------------------------------------- resize / flip
@pytest.mark.parametrize("size", [(32, 32), (12, 12), (20, 9), (28, 20)])
@pytest.mark.parametrize("antialias", [True, False])
def test_resized_crop_matches_torchvision(size, antialias):
    x = _images(b=16, h=24, w=30)
    boxes = ops.sample_crop_params(16, 24, 30, (0.08, 1.0), (0.5, 2.0), _gen(1))
    flip = torch.arange(16) % 3 == 0
    out = ops.resized_crop(x, boxes, size, flip, antialias=antialias)
    assert out.shape == (16, 3, *size)
    for i in range(16):
        ref = TF.resized_crop(x[i], *[int(v) for v in boxes[i]], list(size), antialias=antialias)
        if flip[i]:
            ref = TF.horizontal_flip(ref)
        assert _max_err(out[i], ref) < TOL, i


def test_random_resized_crop_records_its_params():
    x = _images(b=32, h=32, w=32)
    out, p = ops.random_resized_crop(x, 16, (0.2, 1.0), (0.75, 4 / 3), _gen(3), flip_p=0.5)
    assert p["crop"].shape == (32, 4) and p["flip"].dtype == torch.bool
    assert 0 < int(p["flip"].sum()) < 32
    for i in range(32):
        ref = TF.resized_crop(x[i], *[int(v) for v in p["crop"][i]], [16, 16], antialias=True)
        ref = TF.horizontal_flip(ref) if p["flip"][i] else ref
        assert _max_err(out[i], ref) < TOL


def test_horizontal_flip():
    x = _images(b=20)
    out, p = ops.horizontal_flip(x, 0.5, _gen(2))
    assert 0 < int(p["flip"].sum()) < 20
    for i in range(20):
        assert torch.equal(out[i], TF.horizontal_flip(x[i]) if p["flip"][i] else x[i])


# ----------------------------------------------------------------------------------------- colour
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name,low,high", [("brightness", 0.0, 2.0), ("contrast", 0.0, 2.0),
                                           ("saturation", 0.0, 2.0), ("hue", -0.5, 0.5)])
def test_colour_adjustments_match_torchvision(name, low, high, channels):
    x = _images(b=32, c=channels)
    f = low + (high - low) * torch.rand(32, generator=_gen(4))
    ours = getattr(ops, f"adjust_{name}")(x, f)
    ref_fn = getattr(TF, f"adjust_{name}")
    for i in range(32):
        assert _max_err(ours[i], ref_fn(x[i], float(f[i]))) < TOL, (name, i, float(f[i]))


def test_color_jitter_replays_with_recorded_order_and_factors():
    x = _images(b=64)
    b, c, s, h = 0.8, 0.8, 0.8, 0.2
    out, p = ops.color_jitter(x, 0.8, b, c, s, h, _gen(5))
    applied = p["jitter"]
    assert 30 < int(applied.sum()) < 64
    orders = {tuple(o.tolist()) for o in p["jitter_order"]}
    assert len(orders) > 6  # per-sample random orders
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    for name, x_ in zip(("brightness", "contrast", "saturation"), (b, c, s)):
        v = p[name][applied]
        assert float(v.min()) >= 1 - x_ - 1e-6 and float(v.max()) <= 1 + x_ + 1e-6
        assert torch.all(p[name][~applied] == 1.0)
    assert float(p["hue"].abs().max()) <= h + 1e-6
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    names = ["brightness", "contrast", "saturation", "hue"]
    for i in range(64):
        ref = x[i]
        if applied[i]:
            for op in p["jitter_order"][i].tolist():
                ref = fns[op](ref, float(p[names[op]][i]))
        assert _max_err(out[i], ref) < 2 * TOL, i


def test_color_jitter_order_matters_and_is_respected():
    """Same factors, two orders: the result differs and each matches torchvision in its own order."""
    x = _images(b=2)
    params = {"jitter": torch.tensor([True, True]), "jitter_order": torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]),
              "brightness": torch.tensor([1.7, 1.7]), "contrast": torch.tensor([0.3, 0.3]),
              "saturation": torch.tensor([1.8, 1.8]), "hue": torch.tensor([0.2, 0.2])}
    x[1] = x[0]
    out = ops.apply_jitter(x, params)
    assert _max_err(out[0], out[1]) > 1e-2
    ref0 = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x[0], 1.7), 0.3), 1.8), 0.2)
    ref1 = TF.adjust_brightness(TF.adjust_contrast(TF.adjust_saturation(TF.adjust_hue(x[0], 0.2), 1.8), 0.3), 1.7)
    assert _max_err(out[0], ref0) < 2 * TOL and _max_err(out[1], ref1) < 2 * TOL


def test_random_grayscale_matches_torchvision():
    x = _images(b=40)
    out, p = ops.random_grayscale(x, 0.5, _gen(6))
    assert 0 < int(p["grayscale"].sum()) < 40
    for i in range(40):
        ref = TF.rgb_to_grayscale(x[i], num_output_channels=3) if p["grayscale"][i] else x[i]
        assert _max_err(out[i], ref) < TOL


def test_grayscale_is_identity_for_one_channel():
    x = _images(b=8, c=1)
    out, p = ops.random_grayscale(x, 1.0, _gen(0))
    assert torch.equal(out, x) and bool(p["grayscale"].all())


@pytest.mark.parametrize("kernel", [3, 5, 9])
def test_random_blur_matches_torchvision(kernel):
    x = _images(b=24)
    out, p = ops.random_blur(x, 0.5, (0.1, 2.0), kernel, _gen(7))
    assert 0 < int(p["blur"].sum()) < 24
    assert float(p["sigma"].min()) >= 0.1 and float(p["sigma"].max()) <= 2.0
    for i in range(24):
        s = float(p["sigma"][i])
        ref = TF.gaussian_blur(x[i], [kernel, kernel], [s, s]) if p["blur"][i] else x[i]
        assert _max_err(out[i], ref) < TOL, i


def test_random_solarize_matches_torchvision():
    x = _images(b=30)
    out, p = ops.random_solarize(x, 0.5, 0.5, _gen(8))
    assert 0 < int(p["solarize"].sum()) < 30
    for i in range(30):
        ref = TF.solarize(x[i], 0.5) if p["solarize"][i] else x[i]
        assert _max_err(out[i], ref) < 1e-7


def test_to_float_and_normalize_match_torchvision():
    g = _gen(9)
    u8 = torch.randint(0, 256, (4, 3, 8, 8), generator=g, dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    ours = ops.normalize_float(ops.to_float(u8), mean, std)
    ref = torch.stack([TF.normalize(TF.to_dtype(u8[i], torch.float32, scale=True), mean, std) for i in range(4)])
    assert _max_err(ours, ref) < 1e-6
    with pytest.raises(ValueError, match="mean"):
        ops.normalize_float(ops.to_float(u8), (0.5, 0.5), (0.2, 0.2))


def test_ops_draw_on_generator_device_and_return_on_image_device():
    x = _images(b=4)
    out, p = ops.color_jitter(x, 1.0, 0.4, 0.4, 0.4, 0.1, _gen(0))
    assert out.device == x.device and all(v.device == x.device for v in p.values())
    assert math.isfinite(float(out.sum()))
