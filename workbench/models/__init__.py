"""Backbones (with typed options per family), heads, and the one batched forward pass (``encode``)."""
from workbench.models.backbones import (BACKBONES, Backbone, Features, ResNet, ResNetOptions, SmallCNN, SmallCNNOptions,
                                        ViT, ViTOptions, backbone_options, build_backbone, count_parameters,
                                        known_backbones)
from workbench.models.encode import encode
from workbench.models.heads import mlp

__all__ = ["BACKBONES", "Backbone", "Features", "ResNet", "ResNetOptions", "SmallCNN", "SmallCNNOptions", "ViT",
           "ViTOptions", "backbone_options", "build_backbone", "count_parameters", "encode", "known_backbones", "mlp"]
