"""Evaluation suite: what did the representation learn, with and without labels.

On features from ``workbench.trained`` (extracted and cached per run there): DINO weighted kNN, linear probe, few-label fine-tuning and SimCLRv2
distillation, factor probes, label-free metrics (RankMe, alignment/uniformity, std, k-means NMI/ARI, UMAP
silhouette), and ``evaluate(run, ...)`` which reports them all beside random-init and raw-pixel baselines.
"""
from workbench.evaluation.factors import factor_probes, ridge_r2
from workbench.evaluation.finetune import (Classifier, FinetuneResult, class_balanced_subset, distill,
                                         distillation_loss, few_label_finetune)
from workbench.evaluation.knn import knn_eval, topk_accuracy
from workbench.evaluation.label_free import kmeans_scores, label_free_metrics, umap_silhouette, view_features
from workbench.evaluation.linear import LinearProbeResult, fit_logistic, linear_probe
from workbench.evaluation.prefixes import nested_dims, prefix_metrics
from workbench.evaluation.report import BASELINES, DEFAULT_METRICS, METRICS, EvalOptions, evaluate, parse_metrics

__all__ = [
    "BASELINES", "Classifier", "DEFAULT_METRICS", "EvalOptions", "FinetuneResult", "LinearProbeResult", "METRICS",
    "class_balanced_subset", "distill", "distillation_loss", "evaluate", "factor_probes",
    "few_label_finetune", "fit_logistic", "kmeans_scores", "knn_eval", "label_free_metrics", "linear_probe",
    "nested_dims", "parse_metrics", "prefix_metrics", "ridge_r2", "topk_accuracy", "umap_silhouette",
    "view_features",
]

