"""The student against its own teacher: the same probes on the student's backbone and on the teacher's.

Random-teacher distillation (``workbench.methods.random_teacher``) asks whether a student learns features its
frozen random teacher does not have; DINO and BYOL ask the same of their EMA teachers. Both backbones are read
from one trained method (an in-memory Method, a run folder or a checkpoint), normalised alike and scored with the
workbench's weighted kNN and linear probe.
"""
from __future__ import annotations

from typing import Any, Sequence

from workbench.data import ImageDataset
from workbench.evaluation.knn import knn_eval
from workbench.evaluation.linear import linear_probe
from workbench.trained import extract_features, load_trained

PROBES = ("knn", "linear")


def student_vs_teacher(source: Any, train: ImageDataset | None = None, test: ImageDataset | None = None, *,
                       probes: Sequence[str] = PROBES, k: int = 20, checkpoint: str = "last",
                       device: str = "auto") -> dict[str, dict[str, float]]:
    """{"student": {...}, "teacher": {...}, "gain": student - teacher} with ``knn_top1_k{k}`` and/or
    ``linear_top1`` (fractions 0-1) on ``test``, fitted on ``train``.

    ``source``: a Method with a ``teacher_backbone`` or a run/checkpoint of one; ``train``/``test`` default to the
    splits of the data set it was trained on. The teacher's features use the student's recorded normalisation.
    """
    unknown = sorted(set(probes) - set(PROBES))
    if unknown or not probes:
        raise ValueError(f"probes={list(probes)!r}: choose one or more of {list(PROBES)}")
    trained = load_trained(source, checkpoint)
    method = trained.method()
    teacher_backbone = getattr(method, "teacher_backbone", None)
    if teacher_backbone is None:
        raise ValueError(f"method {getattr(method, 'name', type(method).__name__)!r} has no teacher_backbone; "
                         "use a method with a teacher (random_teacher, dino, byol, mocov3)")
    train = train if train is not None else trained.dataset("train")
    test = test if test is not None else trained.dataset("test")
    mean, std = trained.stats(train.images.shape[1])
    out: dict[str, dict[str, float]] = {}
    for who, backbone in (("student", trained.backbone), ("teacher", teacher_backbone)):
        feats = [extract_features((backbone, {}), split, mean=mean, std=std, device=device, cache=False)
                 for split in (train, test)]
        scores: dict[str, float] = {}
        if "knn" in probes:
            scores[f"knn_top1_k{k}"] = knn_eval(*feats, ks=(k,), device=device)[f"knn_top1_k{k}"]
        if "linear" in probes:
            scores["linear_top1"] = linear_probe(*feats, device=device).top1
        out[who] = scores
    out["gain"] = {name: out["student"][name] - out["teacher"][name] for name in out["student"]}
    return out
