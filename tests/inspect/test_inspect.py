"""Known-answer tests of workbench.inspect (pure functions behind the widgets)."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from workbench import inspect as wi
from workbench.inspect import attention as A
from workbench.inspect.attention import attention_share, patch_fractions
from workbench.models.backbones import build_backbone


def _attn(b: int, heads: int, L: int, peak: int, strength: float = 10.0) -> torch.Tensor:
    """Softmax attention [b, heads, 1+L, 1+L] whose CLS row peaks at patch ``peak``."""
    logits = torch.randn(b, heads, 1 + L, 1 + L, generator=torch.Generator().manual_seed(0)) * 0.1
    logits[:, :, 0, 1 + peak] += strength
    return logits.softmax(-1)


def test_cls_attention_finds_known_peak_and_upsamples_to_its_block():
    L, grid, peak = 16, (4, 4), 6  # row 1, col 2
    maps = [_attn(2, 3, L, peak=0), _attn(2, 3, L, peak)]
    a = A.head_attention(maps, layer=-1, head="mean")
    assert a.shape == (2, 16) and (a.argmax(1) == peak).all()
    assert torch.allclose(A.head_attention(maps, -1, 1), maps[-1][:, 1, 0, 1:])
    heat = A.attention_image(maps, grid, 32, kind="attention")  # [2, 32, 32] in [0, 1]
    assert heat.shape == (2, 32, 32)
    rows, cols = np.nonzero(heat[0] == 1.0)
    assert rows.min() == 8 and rows.max() == 15 and cols.min() == 16 and cols.max() == 23


def test_threshold_mass_keeps_the_stated_share():
    attn = torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]])
    keep = A.threshold_mass(attn, share=0.6)
    # descending 0.4, 0.3 -> 0.7 >= 0.6 with two patches; one patch (0.4) is not enough
    assert keep.tolist() == [[False, True, False, True, False]]
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 64, generator=g) ** 4
    for share in (0.3, 0.6, 0.9):
        keep = A.threshold_mass(x, share)
        p = x / x.sum(1, keepdim=True)
        kept = (p * keep).sum(1)
        assert (kept >= share - 1e-6).all()
        # minimal: dropping the smallest kept patch falls below the share
        smallest = torch.where(keep, p, torch.full_like(p, 9)).min(1).values
        assert (kept - smallest < share + 1e-6).all()
        # kept patches are the largest ones
        assert (torch.where(keep, p, torch.full_like(p, 9)).min(1).values
                >= torch.where(keep, torch.zeros_like(p), p).max(1).values).all()


def test_rollout_of_identity_is_identity_and_matches_hand_product():
    T = 5
    eye = torch.eye(T).expand(2, 3, T, T)
    r = A.attention_rollout([eye, eye, eye])
    assert torch.allclose(r, torch.eye(T).expand(2, T, T))
    g = torch.Generator().manual_seed(0)
    a1, a2 = torch.rand(1, 2, T, T, generator=g).softmax(-1), torch.rand(1, 2, T, T, generator=g).softmax(-1)

    def step(a):
        m = 0.5 * torch.eye(T) + 0.5 * a[0].mean(0)
        return m / m.sum(-1, keepdim=True)

    assert torch.allclose(A.attention_rollout([a1, a2])[0], step(a2) @ step(a1), atol=1e-6)


def test_cnn_backbone_refused_with_hint_and_wrong_size_refused():
    cnn = build_backbone("small_cnn", image_size=16, width=4)
    with pytest.raises(A.NotAViTError, match="patch-similarity and PCA"):
        A.attention_maps(cnn, torch.zeros(1, 3, 16, 16))
    vit = build_backbone("vit_tiny", image_size=16, patch_size=4, depth=1)
    with pytest.raises(ValueError, match="16x16"):
        A.attention_maps(vit, torch.zeros(1, 3, 24, 24))
    maps = A.attention_maps(vit.eval(), torch.randn(2, 3, 16, 16))
    assert len(maps) == 1 and maps[0].shape == (2, 3, 17, 17)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 3, 17))


def test_attention_share_against_hand_values():
    masks = torch.zeros(2, 4, 4)
    masks[:, :2, :2] = 1.0  # the top-left patch of a 2x2 grid
    frac = patch_fractions(masks, (2, 2))
    torch.testing.assert_close(frac, torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
    attn = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    share, area = attention_share(attn, masks, (2, 2))
    torch.testing.assert_close(share, torch.tensor([0.7, 0.25]))
    torch.testing.assert_close(area, torch.tensor([0.25, 0.25]))  # uniform attention scores exactly the area
    with pytest.raises(ValueError, match="patch grid"):
        patch_fractions(torch.zeros(1, 5, 5), (2, 2))


def test_overlay_compositing_arithmetic():
    img = np.full((2, 2, 3), 100, np.uint8)
    rgba = np.zeros((2, 2, 4), np.float32)
    rgba[..., 0] = 1.0
    rgba[0, 0, 3] = 0.5
    out = wi.composite(img, rgba)
    assert out[0, 0].tolist() == [178, 50, 50]  # 0.5*100 + 0.5*255 = 177.5 -> 178
    assert out[1, 1].tolist() == [100, 100, 100]
    heat = np.array([[0.0, 1.0], [0.5, 0.25]])
    ov = wi.overlay(img, heat, opacity=1.0)
    assert ov[0, 1].tolist() == [252, 255, 164]  # top of inferno


def test_patch_similarity_same_and_cross_image():
    tokens = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.0]])
    s = wi.patch_similarity(tokens, 0)
    assert torch.allclose(s, torch.tensor([1.0, 0.0, math.sqrt(0.5), -1.0]), atol=1e-6)
    other = torch.tensor([[0.0, 5.0], [2.0, 0.0]])
    assert torch.allclose(wi.patch_similarity(tokens, 1, other), torch.tensor([1.0, 0.0]))
    assert wi.patch_at_pixel(31, 0, 32, (4, 4)) == (0, 3)
    assert wi.patch_index(1, 2, (4, 4)) == 6


def test_pca_image_recovers_planted_direction_and_foreground():
    g = torch.Generator().manual_seed(0)
    B, h, w, D = 2, 6, 6, 32
    u = torch.randn(D, generator=g)
    u = u / u.norm()
    coeff = torch.linspace(-3, 3, B * h * w)[torch.randperm(B * h * w, generator=g)]
    tokens = (coeff[:, None] * u + 0.05 * torch.randn(B * h * w, D, generator=g)).reshape(B, h * w, D)
    rgb, fg = wi.pca_rgb(tokens, (h, w))
    assert rgb.shape == (B, h, w, 3) and fg.all()
    assert rgb.min() >= 0 and rgb.max() <= 1 and np.isclose(rgb[..., 0].max(), 1) and np.isclose(rgb[..., 0].min(), 0)
    red = rgb[..., 0].reshape(-1)
    assert abs(np.corrcoef(red, coeff.numpy())[0, 1]) > 0.99
    # foreground = patches on one side of the planted direction
    rgb2, fg2 = wi.pca_rgb(tokens, (h, w), foreground_threshold=0.5)
    first = (coeff - coeff.min()) / (coeff.max() - coeff.min())
    truth = (first > 0.5) if np.corrcoef(red, coeff.numpy())[0, 1] > 0 else (first < 0.5)
    assert (fg2.reshape(-1) == truth.numpy()).mean() > 0.97
    assert (rgb2.reshape(-1, 3)[~fg2.reshape(-1)] == 0).all()


def test_pca_deterministic_signed_padded_and_leaves_rng_alone():
    x = torch.randn(300, 40, generator=torch.Generator().manual_seed(3)) * torch.linspace(4, 0.1, 40)
    state = torch.random.get_rng_state()
    mean, comps = wi.pca(x, 5)
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded under a forked RNG
    mean2, comps2 = wi.pca(x, 5)
    assert torch.equal(mean, mean2) and torch.equal(comps, comps2)
    # matches the exact eigenvectors of the covariance (up to sign) and makes each largest projection positive
    xc = (x - x.mean(0)).double()
    evals, evecs = torch.linalg.eigh(xc.T @ xc)
    exact = evecs[:, evals.argsort(descending=True)[:5]].float()
    assert torch.allclose((exact * comps).sum(0).abs(), torch.ones(5), atol=1e-4)
    proj = (x - mean) @ comps
    assert (proj.gather(0, proj.abs().argmax(0, keepdim=True)) > 0).all()
    # more components than rows: the extra ones are zero
    _, few = wi.pca(x[:3], 5)
    assert few.shape == (40, 5) and (few[:, 3:] == 0).all()


def test_patch_pixel_images_similarity_outline_and_pca():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])  # 2x2 grid
    b = torch.tensor([[-1.0, 0.0], [0.0, -1.0], [0.5, 0.5], [0.0, 1.0]])
    ha, hb = wi.similarity_images(a, b, 0, (2, 2), 8)
    sims = torch.cat([wi.patch_similarity(a, 0), wi.patch_similarity(a, 0, b)])
    lo, hi = float(sims.min()), float(sims.max())
    assert ha.shape == hb.shape == (8, 8) and ha.dtype == np.float32
    # one scale for both images: a's query patch is 1, b's least similar patch (-1) is 0
    assert np.allclose(ha[:4, :4], 1.0) and np.allclose(hb[:4, :4], 0.0)
    assert np.allclose(hb[4:, :4], (float(sims[6]) - lo) / (hi - lo))
    assert np.allclose(ha[4:, 4:], (-1 / math.sqrt(1.25) - lo) / (hi - lo)) and ha.min() > 0.05  # not a's own min
    pic = wi.outline_patch(np.zeros((16, 16, 3), np.uint8), (1, 2), (4, 4), color=(0, 255, 0))
    border = np.zeros((16, 16), bool)
    border[4:8, 8:12] = True
    border[5:7, 9:11] = False  # only the patch's border pixels
    assert np.array_equal((pic == (0, 255, 0)).all(-1), border) and (pic[~border] == 0).all()
    tokens = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))

    def blocks(a: np.ndarray) -> np.ndarray:  # [2, 2, 2(, 3)] per patch -> per pixel, 4x4 blocks
        return np.repeat(np.repeat(a, 4, axis=1), 4, axis=2)

    for thr in (None, 0.5):
        pics = wi.pca_images(tokens, (2, 2), 8, foreground_threshold=thr)
        rgb, fg = wi.pca_rgb(tokens, (2, 2), foreground_threshold=thr)
        assert pics.shape == (2, 8, 8, 3) and pics.dtype == np.uint8
        assert np.array_equal(pics, (blocks(rgb) * 255).round().astype(np.uint8))
    assert not fg.all() and (pics[~blocks(fg)] == 0).all()  # background black


def test_knn_correct_hand_built_leave_one_out():
    # rows 0, 1 (class 0) and 2 (class 1) point right, rows 3, 4 (class 1) up; k = 2
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, -0.2], [0.0, 1.0], [0.1, 1.0]])
    y = np.array([0, 0, 1, 1, 1])
    # row 2 without itself: its neighbours are rows 0 and 1 (class 0), so it is wrong; counting itself
    # (similarity 1) it would outvote row 0 and look right
    assert wi.knn_correct(x, y, k=2).tolist() == [True, True, False, True, True]


def test_nearest_neighbors_hand_made_set_chunked():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7], [1.0, -0.05]])
    idx, sim = wi.nearest_neighbors(x, [0, 2], k=3, chunk_size=2)
    assert idx[0].tolist() == [5, 1, 4]
    assert idx[1].tolist() == [4, 1, 0]
    assert np.allclose(sim[1, 0], 0.7 / math.hypot(0.7, 0.7), atol=1e-6)
    idx2, _ = wi.nearest_neighbors(x, 0, k=1, exclude_self=False)
    assert idx2[0].tolist() == [0]


def test_knn_correct_and_kmeans_on_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(4, 16) * 5
    labels = torch.arange(4).repeat_interleave(30)
    x = centers[labels] + 0.3 * torch.randn(120, 16, generator=g)
    wrong = labels.clone()
    wrong[0] = 3  # a mislabeled point sits among class-0 points
    ok = wi.knn_correct(x, wrong, k=10)
    assert ok.dtype == bool and not ok[0] and ok[1:].all()
    km = wi.kmeans_labels(x, 4)
    from sklearn.metrics import adjusted_rand_score
    assert adjusted_rand_score(labels.numpy(), km) == 1.0


def test_pca_2d_matches_sklearn_and_cache_roundtrip(tmp_path):
    from sklearn.decomposition import PCA

    x = torch.randn(200, 10, generator=torch.Generator().manual_seed(0)) * torch.linspace(3, 0.1, 10)
    ours = wi.pca_2d(x)
    ref = PCA(2).fit_transform(x.numpy())
    for j in range(2):
        assert abs(np.corrcoef(ours[:, j], ref[:, j])[0, 1]) > 0.9999
    c1 = wi.embedding_2d(x, "pca", cache_dir=tmp_path)
    files = list(tmp_path.glob("embedding-pca-*.npy"))
    assert len(files) == 1 and np.array_equal(np.load(files[0]), c1)
    np.save(files[0], np.zeros_like(c1))  # a cached file is read, not recomputed
    assert (wi.embedding_2d(x, "pca", cache_dir=tmp_path) == 0).all()


@pytest.mark.slow  # ~20-45 s: umap-learn's numba compilation on first use
def test_umap_small_separates_clusters(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(40)
    x = torch.eye(3, 8)[labels] * 4 + 0.2 * torch.randn(120, 8, generator=g)
    c = wi.embedding_2d(x, "umap", cache_dir=tmp_path, n_epochs=50)
    assert c.shape == (120, 2) and np.isfinite(c).all()
    from sklearn.metrics import silhouette_score
    assert silhouette_score(c, labels.numpy()) > 0.5
    assert len(list(tmp_path.glob("embedding-umap-*.npy"))) == 1


def test_collapse_rule_fires_on_std_and_rankme():
    healthy = [{"kind": "step", "step": i, "std": 1 / math.sqrt(64), "rankme": 40.0} for i in range(10)]
    assert not wi.collapse_status(healthy, dim=64).collapsed
    falling = healthy + [{"kind": "step", "step": 10 + i, "std": 0.01, "rankme": 3.0} for i in range(5)]
    st = wi.collapse_status(falling, dim=64)
    assert st.collapsed and len(st.reasons) == 2 and st.std_threshold == pytest.approx(0.3 / 8)
    st2 = wi.collapse_status(falling, dim=None)
    assert st2.collapsed and "early value" in st2.reasons[0]
    assert "learning rate" in st.message  # the warning says what to try
    # measured on a tiny BYOL run (D = 128): RankMe 47 -> 10.9 (0.23x of its random-init value) while the std rose;
    # below 0.25x but above 0.05 x 128 = 6.4 effective dimensions: not flagged; 5.4 (SimSiam's) is
    learning = [{"kind": "step", "step": i, "std": 0.055, "rankme": r} for i, r in enumerate([47.1, 48.5, 45.2, 20.0,
                                                                                              11.0, 10.4, 10.9])]
    assert not wi.collapse_status(learning, dim=128).collapsed
    assert wi.collapse_status(learning[:-3] + [dict(r, rankme=5.4) for r in learning[-3:]], dim=128).collapsed
    x, y = wi.series(falling + [{"kind": "epoch", "step": 15, "knn_acc": 0.5}], "knn_acc")
    assert x.tolist() == [15.0] and y.tolist() == [0.5]


def test_augmentation_grid_captions_follow_drawn_params():
    from workbench.augment import make_preset

    imgs = torch.randint(0, 256, (3, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    cfg = make_preset("dino", 16, local_views=2)
    pic, caps, vb = wi.augmentation_grid(imgs, cfg, seed=3)
    assert len(caps) == 3 and len(caps[0]) == 4
    for n in range(3):
        for v, p in enumerate(vb.params):
            t, l, h, w = p["crop"][n].tolist()
            assert caps[n][v].startswith(f"crop {h}x{w}@({t},{l})")
            assert ("flip" in caps[n][v]) == bool(p["flip"][n])
            assert ("blur" in caps[n][v]) == bool(p["blur"][n])
    _, caps2, _ = wi.augmentation_grid(imgs, cfg, seed=3)
    assert caps2 == caps
    _, caps3, _ = wi.augmentation_grid(imgs, cfg, seed=4)
    assert caps3 != caps


def test_augmentation_grid_shows_and_labels_gram_teacher_views(monkeypatch):
    import workbench.inspect.views as views_module
    from workbench.augment import make_preset

    imgs = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    plain = make_preset("dino", 16, local_views=1)
    gram = make_preset("dino", 16, local_views=1, gram_scale=2.0)
    pic, caps, vb = wi.augmentation_grid(imgs, plain, seed=0)
    pic_g, caps_g, vb_g = wi.augmentation_grid(imgs, gram, seed=0)
    assert len(vb_g.views) == len(vb.views) + 2  # two 32 px Gram views after the same drawn views
    for n in range(2):
        assert caps_g[n][:3] == caps[n]
        for g in range(2):  # each Gram view: its global view's crop and flip, no colour op
            assert caps_g[n][3 + g] == ", ".join(caps[n][g].split(", ")[:2 if "flip" in caps[n][g] else 1])
    assert pic_g.shape[1] > pic.shape[1] + 2 * 32  # their columns are drawn, each at least as wide as the view
    headed, draw = [], views_module.image_grid
    monkeypatch.setattr(views_module, "image_grid", lambda rows, **kw: headed.append(kw["titles"][0]) or draw(rows, **kw))
    wi.augmentation_grid(imgs, gram, seed=0)
    assert headed[0][-2:] == ["Gram teacher: view 1 at 32 px", "Gram teacher: view 2 at 32 px"]
    assert len(headed[0]) == 1 + len(vb_g.views)  # every column has its heading


def test_mask_pictures_cover_the_masked_share():
    imgs = torch.full((2, 3, 16, 16), 255, dtype=torch.uint8)
    pics, mask = wi.mae_mask_images(imgs, patch_size=4, mask_ratio=0.75, seed=0)
    assert mask.sum(1).tolist() == [12.0, 12.0]
    gray = (pics[0] != 255).any(-1)
    assert gray.mean() == pytest.approx(0.75)
    pics2, bm = wi.ijepa_mask_images(imgs, patch_size=4, seed=0, min_keep=1)
    assert len(pics2) == 2 and pics2[0].shape == (16, 16, 3) and (pics2[0] != 255).any()


def test_png_and_pil_figure_export(tmp_path):
    arr = np.zeros((4, 5, 3), np.uint8)
    arr[1, 2] = (10, 20, 30)
    assert np.array_equal(wi.images.decode_png(wi.png_bytes(arr)), arr)
    assert wi.thumbnail_uri(torch.zeros(1, 8, 8, dtype=torch.uint8), 32).startswith("data:image/png;base64,")
    import plotly.graph_objects as go
    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[0, 1, 0], line=dict(color="#ff0000")))
    png = wi.figure_to_png_pil(fig, 200, 100)
    pic = wi.images.decode_png(png)
    assert pic.shape == (100, 200, 3) and ((pic[..., 0] > 200) & (pic[..., 1] < 50)).any()
    # figures are stored with a palette: a picture of <= 256 colours comes back exactly, transparency on white
    from PIL import Image
    import io
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[:20, :, :] = (255, 0, 0, 255)  # opaque red on top, transparent below
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    flat = wi.images.decode_png(wi.images.palette_png(buf.getvalue()))
    assert (flat[:20] == (255, 0, 0)).all() and (flat[20:] == 255).all()
    assert np.array_equal(wi.images.decode_png(wi.images.palette_png(png)), pic)  # the figure: few colours, kept


def test_colors_from_plotly_scales_and_marker_round_trip():
    d3 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    pal = wi.palette()
    assert list(pal[:10]) == d3 and len(set(pal)) == 20 and wi.palette_rgb()[0] == (31, 119, 180)
    assert wi.to_rgb("rgba(10.4, 20, 30, 0.5)") == (10, 20, 30) and wi.to_rgb("#FF0000") == (255, 0, 0)
    assert wi.to_rgb("red") == (255, 0, 0) and wi.to_rgb(None) == (31, 119, 180) and wi.to_rgb("nope", (1, 2, 3)) == (1, 2, 3)
    # colour maps: plotly's anchors at the ends, linear between them (Inferno's 10 anchors: 1/9 apart)
    ends = (wi.colormap(np.array([0.0, 1.0, np.nan]), "inferno") * 255).round()
    assert ends.tolist() == [[0, 0, 4], [252, 255, 164], [0, 0, 4]]
    mid = wi.colormap(0.5 / 9, "Viridis") * 255
    assert np.allclose(mid, (np.array([68, 1, 84]) + np.array([72, 40, 120])) / 2, atol=1e-3)
    with pytest.raises(ValueError, match="unknown colour scale"):
        wi.colormap(0.5, "no-such-scale")
    # marker specs map back to the colours a viewer sees
    assert wi.spec_colors(wi.color_spec(np.array([0, 3, 21, -1]))) == [pal[0], pal[3], pal[1], "#bbbbbb"]
    assert wi.spec_colors(wi.color_spec(np.array([True, False]))) == ["#2ca02c", "#d62728"]
    assert wi.spec_colors(wi.color_spec(np.array([0.0, 2.0, 1.0])))[:2] == ["#440154", "#fde725"]


def test_png_export_through_kaleido_with_the_system_browser(tmp_path):
    import os
    import plotly.graph_objects as go

    browser = wi.browser_path()
    if browser is None:
        pytest.skip("no Chrome/Chromium for kaleido (scripts/setup.sh installs chromium where apt is usable)")
    env = dict(os.environ)
    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[0, 1, 0], line=dict(color="#ff0000")))
    assert wi.write_figure(fig, str(tmp_path / "k.png"), 240, 130) == "kaleido"
    pic = wi.images.decode_png((tmp_path / "k.png").read_bytes())
    assert pic.shape == (130, 240, 3) and ((pic[..., 0] > 200) & (pic[..., 1] < 50)).any()
    assert dict(os.environ) == env  # the browser is passed to kaleido, not put in the environment


def test_png_export_falls_back_to_pil_without_a_browser(tmp_path, monkeypatch):
    import plotly.graph_objects as go

    monkeypatch.setattr(wi.images, "browser_path", lambda: None)
    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[0, 1, 0], line=dict(color="#ff0000")))
    with pytest.warns(RuntimeWarning, match="no Chrome or Chromium"):
        assert wi.write_figure(fig, str(tmp_path / "p.png"), 200, 100) == "pil"
    assert wi.images.decode_png((tmp_path / "p.png").read_bytes()).shape == (100, 200, 3)


def test_image_grid_draws_titles_and_coloured_notes_in_a_canvas_sized_to_them():
    from workbench.inspect.images import text_font, wrap_text

    font = text_font(13)
    text = "crop 22x25@(4,3), flip, jitter b0.85 c0.89 s1.10 h+0.08, gray"
    lines = wrap_text(text, font, 120)
    assert len(lines) > 1 and all(font.getlength(ln) <= 120 for ln in lines) and " ".join(lines) == text
    assert all(font.getlength(ln) <= 40 for ln in wrap_text("x" * 30, font, 40))  # one long word is split
    black = np.zeros((20, 30, 3), np.uint8)
    bare = wi.image_grid([[black, black], [black, None]])
    assert bare.shape == (2 * 20 + 3 * 2, 2 * 30 + 3 * 2, 3)  # no text: the bare grid, as before
    pic = wi.image_grid([[black, black], [black, None]], titles=[["a", "b"], None],
                        notes=["plain note", [("red note", (255, 0, 0))]], title="the title")
    assert pic.shape[0] > bare.shape[0] and pic.shape[1] > bare.shape[1]
    assert (pic == 0).all(-1).sum() == 3 * 20 * 30  # every cell drawn whole, text outside the cells
    red = (pic[..., 0] > 180) & (pic[..., 1] < 90) & (pic[..., 2] < 90)
    rows, cols = np.nonzero(red)
    assert red.sum() > 10 and cols.min() > 2 * 30 and rows.min() > pic.shape[0] // 2  # beside row 2, to the right


def test_patch_edges_outline_and_grid_lines_follow_the_nearest_blocks_of_any_grid():
    from workbench.inspect.patches import patch_edges, patch_grid_lines

    grid, size, zoom = (7, 5), 32, 3  # neither 7 nor 5 divides 32: uneven blocks
    blocks = wi.upsample(torch.arange(35.0).view(1, 7, 5), size, "nearest")[0].numpy()
    ys, xs = patch_edges(7, size), patch_edges(5, size)
    assert ys[0] == 0 and ys[-1] == size and len(ys) == 8
    for r in range(7):
        for c in range(5):
            assert (blocks[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] == r * 5 + c).all()
            assert wi.patch_at_pixel(xs[c], ys[r + 1] - 1, size, grid) == (r, c)
    picture = np.zeros((size * zoom, size * zoom, 3), np.uint8)
    out = wi.outline_patch(picture, (3, 2), grid, color=(0, 255, 0), image_size=size, width=1)
    green = (out == (0, 255, 0)).all(-1)
    top, bottom, left, right = ys[3] * zoom, ys[4] * zoom - 1, xs[2] * zoom, xs[3] * zoom - 1
    rr, cc = np.nonzero(green)
    assert (rr.min(), rr.max(), cc.min(), cc.max()) == (top, bottom, left, right)
    assert green[top, left:right + 1].all() and not green[top + 1:bottom, left + 1:right].any()  # border only
    lined = patch_grid_lines(picture, grid, size)
    changed = (lined != 0).any(-1)
    assert changed[ys[1] * zoom].all() and changed[:, xs[4] * zoom].all() and not changed[ys[1] * zoom + 1].all()
    assert np.array_equal(patch_grid_lines(picture, (32, 32), size), picture)  # 3 px patches: no lines
    with pytest.raises(ValueError, match="integer zoom"):
        wi.outline_patch(np.zeros((50, 50, 3), np.uint8), (0, 0), grid, image_size=size)
