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


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo).

    There ``train.precision="bf16"`` roughly doubles the throughput of convolutions and matmuls; elsewhere oneDNN
    emulates bf16 and it is slower than fp32.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` setting on ``device``: "bf16" -> bfloat16, "fp32" -> None (no autocast),
    "auto" -> bfloat16 on CUDA, None on a CPU.

    On a CPU bf16 stays opt-in: with native bf16 it is ~2x faster and the quickstart's kNN/linear results stay
    within seed noise, but some results move (RankMe of a collapsed embedding rises from 2.9 to 3.9; one 2-epoch
    VICReg run fell below its margin; a timm ResNet-18 at 16 px diverged at step 1 where fp32 trains).
    """
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda":
        return torch.bfloat16
    return None
