"""Evaluation metrics against independent references: numpy/scikit-learn re-computations and hand-built cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.trained import FeatureSet
from workbench.evaluation import (class_balanced_subset, factor_probes, fit_logistic, kmeans_scores,
                                knn_eval, label_free_metrics, linear_probe, ridge_r2, topk_accuracy)
from workbench.evaluation.linear import standardize_stats
from workbench.metrics import (alignment, lidar, normalized_spectrum, normalized_std, rankme, uniformity,
                               wasserstein_uniformity, weighted_knn_predict)


def clusters(n: int, dim: int, classes: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * spread
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + torch.randn(n, dim, generator=g), y


# -- kNN -------------------------------------------------------------------------------------------------
def numpy_weighted_knn(train: np.ndarray, ytr: np.ndarray, test: np.ndarray, k: int, t: float, c: int) -> np.ndarray:
    """DINO weighted kNN written directly: cosine similarity, top-k, votes exp(sim / T)."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    sim = b @ a.T
    idx = np.argsort(-sim, axis=1)[:, :k]
    votes = np.zeros((len(test), c))
    for j in range(k):
        np.add.at(votes, (np.arange(len(test)), ytr[idx[:, j]]), np.exp(sim[np.arange(len(test)), idx[:, j]] / t))
    return votes


def test_knn_matches_numpy_and_sklearn():
    from sklearn.neighbors import KNeighborsClassifier

    xtr, ytr = clusters(600, 16, 5, 1.0, 0)
    xte, yte = clusters(200, 16, 5, 1.0, 1)
    for k in (10, 20):
        scores = weighted_knn_predict(xtr, ytr, xte, k=k, temperature=0.07, num_classes=5, chunk_size=64)
        ref = numpy_weighted_knn(xtr.double().numpy(), ytr.numpy(), xte.double().numpy(), k, 0.07, 5)
        np.testing.assert_allclose(scores.numpy() / ref.sum(1, keepdims=True), ref / ref.sum(1, keepdims=True),
                                   rtol=1e-3, atol=1e-5)
        clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                                   weights=lambda d: np.exp((1.0 - d) / 0.07))
        sk_pred = clf.fit(xtr.numpy(), ytr.numpy()).predict(xte.numpy())
        agree = (scores.argmax(1).numpy() == sk_pred).mean()
        assert agree >= 0.99, agree
        res = knn_eval(FeatureSet(xtr, ytr), FeatureSet(xte, yte), ks=(k,))
        assert res[f"knn_top1_k{k}"] == pytest.approx((sk_pred == yte.numpy()).mean(), abs=0.011)
        assert 0.5 < res[f"knn_top1_k{k}"] <= 1.0


def test_knn_leave_one_out_equals_removing_the_row():
    x, y = clusters(60, 8, 3, 1.0, 2)
    loo = weighted_knn_predict(x, y, x, k=5, num_classes=3, chunk_size=16, leave_one_out=True)
    for i in (0, 17, 59):
        keep = torch.arange(60) != i
        ref = weighted_knn_predict(x[keep], y[keep], x[i:i + 1], k=5, num_classes=3)
        assert torch.allclose(loo[i], ref[0], rtol=1e-5)
    with pytest.raises(ValueError, match="leave_one_out"):
        weighted_knn_predict(x, y, x[:5], leave_one_out=True)


def test_knn_top5_only_for_many_classes_and_topk_accuracy_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 1])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    xtr, ytr = clusters(400, 8, 12, 2.0, 0)
    xte, yte = clusters(100, 8, 12, 2.0, 1)
    res = knn_eval(FeatureSet(xtr, ytr), FeatureSet(xte, yte), ks=(10,))
    assert "knn_top5_k10" in res and res["knn_top5_k10"] >= res["knn_top1_k10"]
    xtr, ytr = clusters(200, 8, 4, 2.0, 0)
    assert "knn_top5_k10" not in knn_eval(FeatureSet(xtr, ytr), FeatureSet(xtr, ytr), ks=(10,))


# -- linear probe ----------------------------------------------------------------------------------------
def test_logistic_fit_matches_sklearn_at_same_regularisation():
    from sklearn.linear_model import LogisticRegression

    x, y = clusters(1500, 20, 4, 0.6, 0)
    mean, std = standardize_stats(x)
    xs = (x - mean) / std
    wd = 1e-2
    w, b = fit_logistic(xs, y, 4, wd, max_iter=200, tolerance=1e-9)
    clf = LogisticRegression(C=1.0 / (wd * len(x)), tol=1e-10, max_iter=5000).fit(xs.double().numpy(), y.numpy())
    ours = torch.softmax(xs @ w.T + b, dim=1).numpy()
    np.testing.assert_allclose(ours, clf.predict_proba(xs.double().numpy()), atol=2e-3)


def test_linear_probe_accuracy_agrees_with_sklearn():
    from sklearn.linear_model import LogisticRegression

    xtr, ytr = clusters(3000, 64, 10, 0.35, 0)
    xte, yte = clusters(1000, 64, 10, 0.35, 1)
    res = linear_probe(FeatureSet(xtr, ytr), FeatureSet(xte, yte))
    mean, std = standardize_stats(xtr)
    a, b = ((xtr - mean) / std).numpy(), ((xte - mean) / std).numpy()
    # scikit-learn at the weight decay our validation split chose: the same objective, the same accuracy
    clf = LogisticRegression(C=1.0 / (res.weight_decay * len(xtr)), max_iter=2000).fit(a, ytr.numpy())
    sk = float((clf.predict(b) == yte.numpy()).mean())
    assert 0.3 < sk < 0.98  # not a trivial problem
    assert abs(res.top1 - sk) <= 0.01, (res.top1, sk)
    # and scikit-learn's default C: tuning the decay must not do worse
    default = float((LogisticRegression(max_iter=2000).fit(a, ytr.numpy()).predict(b) == yte.numpy()).mean())
    assert res.top1 >= default - 0.01, (res.top1, default)
    assert res.weight_decay in res.val_top1 and len(res.val_top1) == 6
    assert res.top5 is None
    assert (res.predict(xte) == yte).float().mean().item() == pytest.approx(res.top1)


def test_linear_probe_top5_and_errors():
    xtr, ytr = clusters(800, 16, 12, 1.0, 0)
    res = linear_probe(FeatureSet(xtr, ytr), FeatureSet(xtr, ytr), weight_decays=(1e-3,))
    assert res.top5 is not None and res.top5 >= res.top1
    unlabeled = FeatureSet(xtr, torch.full_like(ytr, -1))
    with pytest.raises(ValueError, match="label-free"):
        linear_probe(unlabeled, unlabeled)
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(FeatureSet(xtr, ytr), FeatureSet(xtr, ytr), val_fraction=1.5)


# -- RankMe, std, alignment, uniformity ------------------------------------------------------------------
def test_rankme_against_direct_svd_and_known_cases():
    z = torch.randn(300, 32, generator=torch.Generator().manual_seed(0)) @ torch.diag(torch.linspace(0.1, 3, 32))
    s = np.linalg.svd(z.double().numpy(), compute_uv=False)
    p = s / s.sum()
    assert rankme(z) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-4)
    eye = torch.eye(64).repeat(4, 1)  # identity-like: all singular values equal
    assert rankme(eye) == pytest.approx(64, rel=1e-3)
    u, v = torch.randn(500, 1), torch.randn(1, 40)
    assert rankme(u @ v) == pytest.approx(1.0, abs=0.01)
    lf = label_free_metrics(FeatureSet(eye, torch.zeros(256, dtype=torch.long)))
    assert lf["rankme"] == pytest.approx(64, rel=1e-3)


def test_normalized_spectrum_against_svdvals_and_rank_one_collapse():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 96, generator=g) * torch.linspace(3, 0.1, 96)  # decaying, 96 > 64 values
    x = z.double() / z.double().norm(dim=1, keepdim=True)  # reference: normalise, centre, svdvals by hand
    s = torch.linalg.svdvals(x - x.mean(dim=0))
    spec = normalized_spectrum(z)
    assert len(spec) == 64 and spec == pytest.approx((s[:64] / s.sum()).tolist(), rel=1e-9)
    assert all(a >= b for a, b in zip(spec, spec[1:])) and sum(spec) < 1
    assert len(normalized_spectrum(torch.randn(10, 4, generator=g))) == 4  # min(k, N, D) values
    # rank-1 embeddings (every row a multiple of one direction, up to noise): one dominant value
    u, v = torch.randn(200, 1, generator=g), torch.randn(1, 96, generator=g)
    spec = normalized_spectrum(u @ v + 1e-4 * torch.randn(200, 96, generator=g))
    assert spec[0] > 0.95 and max(spec[1:]) < 0.01
    spread = normalized_spectrum(torch.randn(200, 96, generator=g))
    assert spread[0] < 0.05 and spread[63] > 0.3 * spread[0]  # isotropic: a flat spectrum
    assert normalized_spectrum(torch.ones(5, 8)) == []  # all rows equal: no spread to divide


def test_alignment_uniformity_std_on_hand_built_points():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert alignment(a, a * 3) == pytest.approx(0.0, abs=1e-7)  # same direction -> aligned
    assert alignment(a, -a) == pytest.approx(4.0)  # antipodal: ||u - (-u)||^2 = 4
    assert alignment(a, a.flip(1) * torch.tensor([1.0, 1.0])) == pytest.approx(2.0)  # orthogonal: 2
    two = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(two) == pytest.approx(-8.0)  # one pair at squared distance 4, t = 2
    same = torch.ones(5, 3)
    assert uniformity(same) == pytest.approx(0.0, abs=1e-6)  # all identical: log E exp(0) = 0
    cross = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])  # 2 pairs at d^2 = 4, 4 pairs at d^2 = 2
    assert uniformity(cross) == pytest.approx(math.log((2 * math.exp(-8) + 4 * math.exp(-4)) / 6), rel=1e-5)
    assert normalized_std(same) == pytest.approx(0.0, abs=1e-7)
    spread = F.normalize(torch.randn(20000, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    assert normalized_std(spread) == pytest.approx(1 / math.sqrt(16), rel=0.02)
    lf = label_free_metrics(cross, views=(a, -a))
    assert lf["alignment"] == pytest.approx(4.0) and lf["uniformity"] == pytest.approx(uniformity(cross))


def test_wasserstein_uniformity_known_values_reference_and_dimensional_collapse():
    assert wasserstein_uniformity(torch.ones(100, 16)) == pytest.approx(math.sqrt(2))   # one point: mu = 1, S = 0
    z = torch.randn(4000, 128, generator=torch.Generator().manual_seed(0))
    assert wasserstein_uniformity(z) < 0.15                                         # isotropic: near the sphere
    # an independent reference: the formula evaluated with numpy's eigendecomposition
    x = F.normalize(torch.randn(500, 32, generator=torch.Generator().manual_seed(1)) + 0.5, dim=1).double().numpy()
    mu, cov = x.mean(0), np.cov(x.T, bias=True)
    lam, q = np.linalg.eigh(cov)
    root = q @ np.diag(np.sqrt(lam.clip(0))) @ q.T
    expected = math.sqrt(mu @ mu + 1 + np.trace(cov - 2 / math.sqrt(32) * root))
    assert wasserstein_uniformity(torch.from_numpy(x)) == pytest.approx(expected, rel=1e-7)
    # the paper's point: keep half the dimensions and Wang & Isola's uniformity barely moves, W2 jumps
    half = z.clone()
    half[:, 64:] = 0
    assert uniformity(half) - uniformity(z) < 0.1
    assert wasserstein_uniformity(half) - wasserstein_uniformity(z) > 0.5


def test_lidar_hand_built_lda_and_invariance():
    # 4 images, 2 views each: image means (2,0), (-2,0), (0,1), (0,-1) -> S_b = diag(2, 0.5); views at -+0.5 along
    # x (images 0, 1) or y (images 2, 3) -> S_w = diag(0.125, 0.125) + delta; whitened eigenvalues in ratio 4 : 1
    means = torch.tensor([[2.0, 0], [-2, 0], [0, 1], [0, -1]])
    offsets = torch.tensor([[0.5, 0], [0.5, 0], [0, 0.5], [0, 0.5]])
    views = torch.stack([means - offsets, means + offsets], dim=1)                  # [4, 2, 2]
    p = torch.tensor([0.8, 0.2]) + 1e-7
    assert lidar(views) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)
    # LDA does not care about an invertible linear map of the embedding (delta aside)
    g = torch.Generator().manual_seed(0)
    rich = torch.randn(300, 1, 16, generator=g) * 3 + torch.randn(300, 3, 16, generator=g)
    mix = torch.randn(16, 16, generator=g) + 4 * torch.eye(16)
    assert lidar(rich @ mix, delta=1e-9) == pytest.approx(lidar(rich, delta=1e-9), rel=1e-4)
    # more directions that separate images than augmentations move -> higher LiDAR
    few = torch.cat([torch.randn(300, 1, 2, generator=g) * 3, torch.zeros(300, 1, 14)], dim=2)
    assert lidar(few + torch.randn(300, 3, 16, generator=g)) < lidar(rich) - 5
    with pytest.raises(ValueError, match="q >= 2"):
        lidar(torch.randn(10, 1, 4))


# -- clustering ------------------------------------------------------------------------------------------
def test_kmeans_nmi_ari_on_known_partitions():
    # four tight clusters of 5 points on orthogonal axes: k-means (k=4) finds exactly them
    cluster = torch.arange(4).repeat_interleave(5)
    x = torch.eye(4, 8)[cluster] * 5 + 0.01 * torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    same = kmeans_scores(x, labels=torch.tensor([2, 0, 3, 1])[cluster], n_clusters=4)  # permuted names
    assert same["kmeans_nmi"] == pytest.approx(1.0) and same["kmeans_ari"] == pytest.approx(1.0)
    for algo in ("kmeans", "agglomerative"):      # Ward finds the same four clusters; AMI is 1 on a perfect match
        assert same[f"{algo}_ami"] == pytest.approx(1.0) and same[f"{algo}_nmi"] == pytest.approx(1.0)
    # labels merge clusters in pairs: I = H(labels) = ln 2, H(clusters) = ln 4 -> NMI = ln 2 / (1.5 ln 2) = 2/3;
    # ARI: sum_ij C(5,2) = 40, rows 40, columns 2 C(10,2) = 90, C(20,2) = 190
    #      -> (40 - 40*90/190) / (65 - 40*90/190) = 16/35
    merged = kmeans_scores(x, labels=cluster // 2, n_clusters=4)
    assert merged["kmeans_nmi"] == pytest.approx(2 / 3) and merged["kmeans_ari"] == pytest.approx(16 / 35)
    # labels independent of the features: about 0
    big = torch.eye(4, 8)[torch.arange(4).repeat_interleave(500)] * 5
    noise = torch.randint(0, 4, (2000,), generator=torch.Generator().manual_seed(1))
    indep = kmeans_scores(big, labels=noise, n_clusters=4)
    assert abs(indep["kmeans_nmi"]) < 0.01 and abs(indep["kmeans_ari"]) < 0.01
    assert abs(indep["kmeans_ami"]) < 0.01 and abs(indep["agglomerative_ami"]) < 0.01


def test_kmeans_scores_separated_vs_random():
    x, y = clusters(600, 8, 4, 6.0, 0)
    good = kmeans_scores(FeatureSet(x, y))
    assert good["kmeans_nmi"] > 0.95 and good["kmeans_ari"] > 0.95
    noise = kmeans_scores(torch.randn(600, 8), labels=y)
    assert noise["kmeans_nmi"] < 0.1 and abs(noise["kmeans_ari"]) < 0.1
    with pytest.raises(ValueError, match="labels"):
        kmeans_scores(torch.randn(10, 2))


# -- factor probes ---------------------------------------------------------------------------------------
def test_factor_probe_finds_planted_factors():
    g = torch.Generator().manual_seed(0)
    n = 1200
    colour = torch.randint(0, 6, (n,), generator=g)
    shape = torch.randint(0, 4, (n,), generator=g)
    scale = torch.rand(n, generator=g)
    rotation = torch.rand(n, generator=g)
    # features: one-hot colour, the scale linearly, noise; nothing about shape or rotation
    feats = torch.cat([F.one_hot(colour, 6).float(), scale[:, None] * 2.0, 0.1 * torch.randn(n, 10, generator=g)], 1)
    fs = FeatureSet(feats, shape, {"colour": colour, "scale": scale, "rotation": rotation})
    tr, te = fs.subset(torch.arange(900)), fs.subset(torch.arange(900, n))
    table = factor_probes(tr, te).set_index("factor")
    assert table.loc["colour", "value"] > 0.98 and table.loc["colour", "metric"] == "accuracy"
    assert table.loc["label", "value"] < table.loc["label", "chance"] + 0.08  # shape: ~chance
    assert table.loc["scale", "metric"] == "r2" and table.loc["scale", "value"] > 0.95
    assert table.loc["rotation", "value"] < 0.05
    binned = factor_probes(tr, te, factors=["scale"], include_label=False, continuous="bins", bins=4)
    assert binned.iloc[0]["value"] > 0.9 and binned.iloc[0]["chance"] < 0.35
    with pytest.raises(ValueError, match="has factors"):
        factor_probes(tr, te, factors=["hue"])


def test_ridge_r2_matches_sklearn():
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    for d in (5, 600):  # more rows than dims (primal solve) and more dims than rows (dual solve)
        x = torch.randn(400, d, generator=torch.Generator().manual_seed(1))
        y = x[:, :5] @ torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0]) \
            + 0.5 * torch.randn(400, generator=torch.Generator().manual_seed(2))
        r2, alpha = ridge_r2(x[:300], y[:300], x[300:], y[300:])
        mean, std = standardize_stats(x[:300].double())
        xs = ((x.double() - mean) / std).numpy()
        ref = Ridge(alpha=alpha * 300).fit(xs[:300], y[:300].numpy())  # sklearn: sum of squares + alpha ||w||^2
        assert r2 == pytest.approx(r2_score(y[300:].numpy(), ref.predict(xs[300:])), abs=1e-6)


# -- few-label subsets -----------------------------------------------------------------------------------
def test_class_balanced_subset():
    labels = torch.arange(10).repeat_interleave(100)[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    idx = class_balanced_subset(labels, 0.1, seed=3)
    assert torch.equal(torch.bincount(labels[idx], minlength=10), torch.full((10,), 10))
    assert torch.equal(idx, class_balanced_subset(labels, 0.1, seed=3))
    assert not torch.equal(idx, class_balanced_subset(labels, 0.1, seed=4))
    assert len(class_balanced_subset(labels, 0.01, seed=0)) == 10
    with pytest.raises(ValueError, match=r"0\.50 images per class.*fraction >= 0\.02.*n=1000"):
        class_balanced_subset(labels[:500], 0.01)


@pytest.mark.slow  # umap-learn's numba compilation takes ~15-30 s on first use
def test_umap_silhouette_separated_clusters_score_higher_than_noise():
    from workbench.evaluation import umap_silhouette

    x, _ = clusters(400, 16, 4, 6.0, 0)
    good = umap_silhouette(x, n_clusters=4, max_points=400)
    noise = umap_silhouette(torch.randn(400, 16, generator=torch.Generator().manual_seed(0)), n_clusters=4,
                            max_points=400)
    assert set(good) == {"umap2_silhouette", "umap10_silhouette"}
    assert good["umap2_silhouette"] > 0.7 and good["umap10_silhouette"] > 0.7
    assert good["umap2_silhouette"] > noise["umap2_silhouette"] + 0.2
    assert good["umap10_silhouette"] > noise["umap10_silhouette"] + 0.2
