"""The training engine: configs, setup (data on the device, method, precision, optimizer, DDP), the loop,
checkpoints and resume, callbacks. It only trains: loading trained models and extracting features live in
``workbench.trained``.

``pretrain(PretrainConfig(method="simclr", train=TrainConfig(epochs=5)))`` -> Run;
``start_pretrain(config)`` -> PretrainHandle (background thread).
"""
from workbench.train.config import (DataConfig, ModelConfig, PretrainConfig, ResolvedTrain, TrainConfig,
                                    augment_config, resolve_train, schedule_steps)
from workbench.train.background import PretrainHandle, start_pretrain
from workbench.train.engine import Callback, Trainer, TrainingDiverged, pretrain
from workbench.train.optim import LARS, build_optimizer, build_scheduler, param_groups, warmup_cosine

__all__ = ["DataConfig", "ModelConfig", "PretrainConfig", "TrainConfig", "ResolvedTrain", "augment_config",
           "resolve_train", "schedule_steps", "Callback", "PretrainHandle", "Trainer", "TrainingDiverged",
           "pretrain", "start_pretrain", "LARS", "build_optimizer", "build_scheduler", "param_groups",
           "warmup_cosine"]
