"""SSL methods, one module each, registered by name on import (``build_method("simclr", backbone)``)."""
from __future__ import annotations

import importlib

from workbench.methods.base import (METHODS, Batch, Method, Progress, Recipe, StepOutput, build_method,
                                    cosine_momentum, ema_update, gather, known_methods, make_method_config,
                                    method_class, rank, register, world_size)

METHOD_MODULES = ("simclr", "mocov3", "byol", "simsiam", "barlow_twins", "vicreg", "dino", "swav", "mae", "ijepa",
                  "data2vec2", "nepa", "random_teacher", "dinov2")

for _name in METHOD_MODULES:  # importing a method module registers it
    importlib.import_module(f"workbench.methods.{_name}")
importlib.import_module("workbench.methods.matryoshka")  # registers the shared nesting options with base

__all__ = ["METHODS", "METHOD_MODULES", "Batch", "Method", "Progress", "Recipe", "StepOutput", "build_method",
           "cosine_momentum", "ema_update", "gather", "known_methods", "make_method_config", "method_class", "rank",
           "register", "world_size"]
