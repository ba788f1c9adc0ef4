"""Backbones and heads."""
from workbench.models.backbones import (BACKBONES, Backbone, Features, ResNet, SmallCNN, ViT, build_backbone,
                                        count_parameters, known_backbones)
from workbench.models.heads import mlp

__all__ = ["BACKBONES", "Backbone", "Features", "ResNet", "SmallCNN", "ViT", "build_backbone", "count_parameters",
           "known_backbones", "mlp"]
