"""The training engine: configs, optimizers and schedules, the loop, checkpoints and resume, callbacks.

``pretrain(PretrainConfig(method="simclr", train=TrainConfig(epochs=5)))`` -> Run;
``start_pretrain(config)`` -> PretrainHandle (background thread); ``load_pretrained(run)`` -> (backbone, info).
"""
from workbench.train.config import (DataConfig, ModelConfig, PretrainConfig, ResolvedTrain, TrainConfig,
                                    augment_config, resolve_train, schedule_steps)
from workbench.train.engine import (Callback, PretrainHandle, Trainer, TrainingDiverged, channel_stats,
                                    extract_features, load_method, load_pretrained, pretrain, start_pretrain)
from workbench.train.optim import LARS, build_optimizer, build_scheduler, param_groups, warmup_cosine
from workbench.train.quickstart import quickstart, quickstart_config

__all__ = ["DataConfig", "ModelConfig", "PretrainConfig", "TrainConfig", "ResolvedTrain", "augment_config",
           "resolve_train", "schedule_steps", "Callback", "PretrainHandle", "Trainer", "TrainingDiverged",
           "channel_stats", "extract_features", "load_method", "load_pretrained", "pretrain", "start_pretrain",
           "LARS", "build_optimizer", "build_scheduler", "param_groups", "warmup_cosine", "quickstart",
           "quickstart_config"]
