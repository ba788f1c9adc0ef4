"""Factor probes: which generative factors (shape, colour, size, position, ...) a representation kept.

One linear probe per factor on frozen features. Discrete factors (integer tensors, e.g. colour id) are scored
as classification accuracy of the same logistic-regression probe as ``linear_probe``; continuous factors
(float tensors, e.g. scale, rotation) as test R^2 of ridge regression on standardised features (ridge
strength chosen on a validation split), or, with ``continuous="bins"``, discretised into ``bins``
equal-frequency bins (train quantiles) and scored as accuracy. The ``chance`` column gives what a
representation that kept nothing of the factor would score (majority-class frequency, or R^2 = 0).
A circular factor such as ``rotation`` (degrees) is poorly read by a linear regression (359 and 0 are
neighbours); probe it with ``continuous="bins"`` or read the R^2 as a lower bound.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from workbench.trained import FeatureSet
from workbench.evaluation.linear import cpu_threads_for, linear_probe, standardize_stats

RIDGE_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


class RidgeProbe:
    """Ridge regression from standardised features to any number of targets, for a grid of strengths.

    Each design matrix X [n, D] (the fit part of train, and all of train) is eigendecomposed once through its
    smaller Gram matrix (X^T X when D <= n, else X X^T), so every target and alpha costs only small products;
    w minimises mean squared error + alpha ||w||^2 (free intercept). float64 throughout.
    """

    def __init__(self, train_x: torch.Tensor, test_x: torch.Tensor, val_fraction: float = 0.1, seed: int = 0):
        mean, std = standardize_stats(train_x.double())
        self.xa = (train_x.double() - mean) / std
        self.xt = (test_x.double() - mean) / std
        n = self.xa.shape[0]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_val = max(1, int(round(val_fraction * n)))
        self.vi, self.fi = perm[:n_val], perm[n_val:]
        with cpu_threads_for(self.xa):
            self._fit = self._decompose(self.xa[self.fi])
            self._all = self._decompose(self.xa)

    @staticmethod
    def _decompose(x: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]:
        n, d = x.shape
        if d <= n:
            lam, vec = torch.linalg.eigh(x.T @ x)
            return "primal", x, lam.clamp_min(0), vec
        lam, vec = torch.linalg.eigh(x @ x.T)
        return "dual", x, lam.clamp_min(0), vec

    @staticmethod
    def _solve(dec: tuple, y: torch.Tensor, alpha: float) -> torch.Tensor:
        kind, x, lam, vec = dec
        n = x.shape[0]
        yc = y - y.mean()
        inv = 1.0 / (lam + alpha * n)
        if kind == "primal":  # w = (X^T X + a n I)^-1 X^T y
            return vec @ (inv * (vec.T @ (x.T @ yc)))
        return x.T @ (vec @ (inv * (vec.T @ yc)))  # w = X^T (X X^T + a n I)^-1 y

    @staticmethod
    def _r2(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, offset: torch.Tensor) -> float:
        pred = x @ w + offset
        sst = ((y - y.mean()) ** 2).sum()
        return float(1 - ((y - pred) ** 2).sum() / sst) if sst > 0 else 0.0

    def r2(self, train_y: torch.Tensor, test_y: torch.Tensor, alphas: Sequence[float] = RIDGE_ALPHAS
           ) -> tuple[float, float]:
        """(test R^2, chosen alpha) for targets train_y [N], test_y [M]; alpha chosen by validation R^2."""
        ya, yt = train_y.double(), test_y.double()
        yf, yv = ya[self.fi], ya[self.vi]
        scores = {a: self._r2(self.xa[self.vi], yv, self._solve(self._fit, yf, a), yf.mean()) for a in alphas}
        best = max(alphas, key=lambda a: (scores[a], a))
        return self._r2(self.xt, yt, self._solve(self._all, ya, best), ya.mean()), float(best)


def ridge_r2(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
             alphas: Sequence[float] = RIDGE_ALPHAS, val_fraction: float = 0.1, seed: int = 0) -> tuple[float, float]:
    """Test R^2 of ridge regression x [N, D] -> y [N] on standardised features, alpha picked on validation.

    The objective is mean squared error + alpha ||w||^2 (intercept free). Returns (r2, alpha).
    """
    return RidgeProbe(train_x, test_x, val_fraction, seed).r2(train_y, test_y, alphas)


def _is_discrete(values: torch.Tensor) -> bool:
    return not (values.is_floating_point() or values.is_complex())


def _bin(train_v: torch.Tensor, test_v: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    edges = torch.quantile(train_v.double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
    return torch.bucketize(train_v.double(), edges), torch.bucketize(test_v.double(), edges)


def factor_probes(train: FeatureSet, test: FeatureSet, factors: Sequence[str] | None = None,
                  include_label: bool = True, continuous: str = "r2", bins: int = 4,
                  weight_decays: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2), max_iter: int = 100,
                  seed: int = 0, device: str = "auto") -> pd.DataFrame:
    """One linear probe per factor -> DataFrame(factor, kind, metric, value, chance, num_values).

    ``factors``: names to probe (default: all in ``train.factors``); ``include_label`` adds the class label as
    factor ``"label"``. ``continuous``: ``"r2"`` (ridge regression) or ``"bins"`` (``bins`` quantile bins).
    """
    if continuous not in ("r2", "bins"):
        raise ValueError(f"continuous={continuous!r} is not allowed; use 'r2' (ridge regression) or 'bins'")
    names = list(train.factors) if factors is None else list(factors)
    missing = [f for f in names if f not in train.factors or f not in test.factors]
    if missing:
        raise ValueError(f"factor(s) {missing} not found; this data set has factors {sorted(train.factors)}")
    targets: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    if include_label and train.has_labels and test.has_labels:
        targets.append(("label", train.labels, test.labels))
    targets += [(f, train.factors[f], test.factors[f]) for f in names]
    if not targets:
        raise ValueError("nothing to probe: the data set has no factors and no labels")
    rows = []
    ridge: RidgeProbe | None = None
    for name, ytr, yte in targets:
        if _is_discrete(ytr) or continuous == "bins":
            kind = "discrete" if _is_discrete(ytr) else f"continuous->{bins} bins"
            if not _is_discrete(ytr):
                ytr, yte = _bin(ytr, yte, bins)
            values, inverse = torch.unique(torch.cat([ytr.long(), yte.long()]), return_inverse=True)
            ytr_i, yte_i = inverse[:len(ytr)], inverse[len(ytr):]
            if len(values) < 2:
                rows.append({"factor": name, "kind": kind, "metric": "accuracy", "value": float("nan"),
                             "chance": 1.0, "num_values": 1})
                continue
            res = linear_probe(FeatureSet(train.features, ytr_i), FeatureSet(test.features, yte_i),
                               weight_decays=weight_decays, max_iter=max_iter, seed=seed, device=device)
            chance = float(torch.bincount(yte_i, minlength=len(values)).max()) / len(yte_i)
            rows.append({"factor": name, "kind": kind, "metric": "accuracy", "value": res.top1,
                         "chance": chance, "num_values": int(len(values))})
        else:
            if ridge is None:  # one SVD of the features serves every continuous factor
                ridge = RidgeProbe(train.features, test.features, seed=seed)
            r2, _ = ridge.r2(ytr, yte)
            rows.append({"factor": name, "kind": "continuous", "metric": "r2", "value": r2, "chance": 0.0,
                         "num_values": int(torch.unique(ytr).numel())})
    return pd.DataFrame(rows, columns=["factor", "kind", "metric", "value", "chance", "num_values"])
