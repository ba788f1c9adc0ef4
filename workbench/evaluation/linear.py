"""Linear probe on frozen features: multinomial logistic regression in torch, full-batch L-BFGS.

Features are standardised with the train split's mean and std; the weight decay is chosen on a validation
split carved from train (``val_fraction``), then the probe is refit on all of train and scored on test.
The objective is ``mean cross-entropy + weight_decay / 2 * ||W||^2`` (bias not decayed), i.e. scikit-learn's
``LogisticRegression(C=1 / (weight_decay * N))``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from workbench.device import resolve_device
from workbench.trained import FeatureSet
from workbench.evaluation.knn import topk_accuracy

DEFAULT_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
SMALL_PROBLEM = 1 << 22  # below this many feature entries, one CPU thread beats several (no sync overhead)


@contextlib.contextmanager
def cpu_threads_for(x: torch.Tensor) -> Iterator[None]:
    """Run small CPU problems on one thread: L-BFGS makes thousands of tiny matmuls, where thread
    start-up and contention dominate (measured 40x slower with 2 threads on a busy 2-core machine)."""
    if x.device.type != "cpu" or x.numel() >= SMALL_PROBLEM or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class LinearProbeResult:
    """Test top-1 (and top-5 where > 10 classes), the chosen weight decay, validation accuracy per weight
    decay, and the fitted probe (``weight`` [C, D], ``bias`` [C], standardisation ``mean``/``std`` [D])."""

    top1: float
    top5: float | None
    weight_decay: float
    val_top1: dict[float, float]
    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    settings: dict = field(default_factory=dict)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Raw features [N, D] -> class logits [N, C] (standardised with the train statistics)."""
        x = (features.float().cpu() - self.mean) / self.std
        return x @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(1)


def standardize_stats(x: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean [D] and std [D] of x [N, D]; constant dimensions get std 1 (they become 0)."""
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    return mean, torch.where(std > eps, std, torch.ones_like(std))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 100,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None,
                 tolerance: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean CE(x W^T + b, y) + weight_decay/2 ||W||^2 with full-batch L-BFGS (strong Wolfe).

    x [N, D] float, y int64 [N] -> (W [C, D], b [C]) on x's device; ``init`` warm-starts (weight-decay path).
    """
    d = x.shape[1]
    w = (init[0].clone() if init is not None else torch.zeros(num_classes, d, device=x.device)).requires_grad_(True)
    b = (init[1].clone() if init is not None else torch.zeros(num_classes, device=x.device)).requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=tolerance, tolerance_change=1e-10)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(torch.addmm(b, x, w.T), y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), cpu_threads_for(x):
        opt.step(closure)
    return w.detach(), b.detach()


def _accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    return float(((x @ w.T + b).argmax(1) == y).float().mean())


def linear_probe(train: FeatureSet, test: FeatureSet, weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
                 val_fraction: float = 0.1, max_iter: int = 100, search_iter: int = 50,
                 search_rows: int = 20000, seed: int = 0, device: str | torch.device = "auto") -> LinearProbeResult:
    """Fit a multinomial logistic-regression probe on ``train`` features and score it on ``test``.

    The weight decay is picked from ``weight_decays`` by accuracy on a random ``val_fraction`` of train: fits
    (``search_iter`` L-BFGS iterations each) go from the strongest decay to the weakest, each warm-started from
    the previous, on at most ``search_rows`` of the remaining rows. Then the probe is refit on all of train
    (``max_iter`` iterations). When the search used m < N rows, the chosen decay is rescaled by m / N, which
    keeps the prior strength of the sum-of-losses objective (scikit-learn's C) that was validated.
    """
    if not train.has_labels or not test.has_labels:
        raise ValueError("the linear probe needs labels on both splits; this data set is unlabeled "
                         "(use the label-free metrics: --metrics label_free,kmeans)")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1), e.g. 0.1")
    if not weight_decays:
        raise ValueError("weight_decays must list at least one value, e.g. (1e-5, 1e-4, 1e-3)")
    dev = resolve_device(device)
    num_classes = max(train.num_classes, int(train.labels.max()) + 1, int(test.labels.max()) + 1)
    x_all = train.features.float()
    mean, std = standardize_stats(x_all)
    x_all = ((x_all - mean) / std).to(dev)
    y_all = train.labels.to(dev)
    x_test = ((test.features.float() - mean) / std).to(dev)

    decays = sorted(float(w) for w in weight_decays)
    val_top1: dict[float, float] = {}
    if len(decays) > 1:
        n = x_all.shape[0]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(dev)
        n_val = max(1, int(round(val_fraction * n)))
        if n - n_val < 2:
            raise ValueError(f"train split has {n} rows: too few to carve a validation split of {val_fraction}")
        val_idx, fit_idx = perm[:n_val], perm[n_val:n_val + search_rows]
        xf, yf, xv, yv = x_all[fit_idx], y_all[fit_idx], x_all[val_idx], y_all[val_idx]
        init = None
        for wd in reversed(decays):  # strongest first: each solution warm-starts the next, weaker one
            init = fit_logistic(xf, yf, num_classes, wd, max_iter=search_iter, init=init)
            val_top1[wd] = _accuracy(xv, yv, *init)
        chosen = max(decays, key=lambda wd: (val_top1[wd], wd))  # ties -> the stronger decay
        n_search = int(fit_idx.numel())
        best = chosen * n_search / n if n_search < n - n_val else chosen
    else:
        chosen = best = decays[0]
        n_search = 0
    w, b = fit_logistic(x_all, y_all, num_classes, best, max_iter=max_iter)
    scores = x_test @ w.T + b
    top1 = topk_accuracy(scores, test.labels, 1)
    top5 = topk_accuracy(scores, test.labels, 5) if num_classes > 10 else None
    return LinearProbeResult(top1, top5, best, val_top1, w.cpu(), b.cpu(), mean, std,
                             {"weight_decays": decays, "val_fraction": val_fraction, "max_iter": max_iter,
                              "search_iter": search_iter, "search_rows": n_search, "chosen_on_search": chosen,
                              "seed": seed, "num_classes": num_classes, "solver": "lbfgs"})
