"""Which torch device a run or an evaluation uses: one rule for the engine, the evaluation suite and the widgets."""
from __future__ import annotations

import torch

from workbench.config import ConfigError


def resolve_device(device: str | torch.device | None = "auto", local_rank: int = 0,
                   field: str = "device") -> torch.device:
    """``"auto"``/None -> ``cuda:<local_rank>`` when CUDA is available, else CPU; ``"cuda"`` -> ``cuda:<local_rank>``.

    Asking for CUDA where there is none is a ConfigError naming ``field`` (e.g. ``TrainConfig.device``).
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field}={str(device)!r} but CUDA is not available on this machine; use 'cpu' or 'auto'")
    return dev
