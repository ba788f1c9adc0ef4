"""The one home of a trained model: any source -> backbone + what describes it; features, extracted and cached.

``load_trained(source)`` turns a run folder, a checkpoint file, an in-memory Method or a backbone into a
:class:`Trained` (backbone, name and options, image size, mean/std, the data it saw, its run); so does a
backbone spec (``"timm:vit_small_patch14_dinov2.lvd142m"``; ``load_backbone`` for local weights);
``extract_features(source, dataset)`` gives a :class:`FeatureSet` of it (or of a random-init / raw-pixel
baseline built the same way), cached with the run. ``workbench.evaluation``, ``workbench.inspect`` and the
widgets get their models and features only from here.
"""
from workbench.trained.features import (BASELINES, FeatureSet, RawPixels, adapt_dataset, as_dataset,
                                        check_compatible, dataset_fingerprint, extract_features, module_fingerprint)
from workbench.trained.source import (DEFAULT_MEAN, DEFAULT_STD, Trained, load_backbone, load_trained,
                                      random_init_like, user_cache_dir)

__all__ = ["BASELINES", "DEFAULT_MEAN", "DEFAULT_STD", "FeatureSet", "RawPixels", "Trained", "adapt_dataset",
           "as_dataset", "check_compatible", "dataset_fingerprint", "extract_features", "load_backbone", "load_trained",
           "module_fingerprint", "random_init_like", "user_cache_dir"]
