"""Backbones (with typed options per family; timm / Hugging Face / torchvision models by spec, see ``external``),
heads, and the one batched forward pass (``encode``)."""
from workbench.models.backbones import (BACKBONES, Backbone, Features, ResNet, ResNetOptions, SmallCNN, SmallCNNOptions,
                                        ViT, ViTOptions, backbone_kind, backbone_options, backbone_patch_size,
                                        build_backbone, count_parameters, known_backbones)
from workbench.models.encode import encode
from workbench.models.external import (BackboneSpec, TimmBackbone, TimmOptions, TorchvisionOptions, WeightsNotAvailable,
                                       build_external, is_spec)
from workbench.models.heads import mlp

__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "Features", "ResNet", "ResNetOptions", "SmallCNN", "SmallCNNOptions",
           "TimmBackbone", "TimmOptions", "TorchvisionOptions", "ViT", "ViTOptions", "WeightsNotAvailable",
           "backbone_kind", "backbone_options", "backbone_patch_size", "build_backbone", "build_external",
           "count_parameters", "encode", "is_spec", "known_backbones", "mlp"]
