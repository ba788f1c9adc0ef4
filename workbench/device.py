"""Which torch device a run or an evaluation uses: one rule for the engine, the evaluation suite and the widgets."""
from __future__ import annotations

import torch

from workbench.config import ConfigError


def resolve_device(device: str | torch.device | None = "auto", local_rank: int = 0,
                   field: str = "device", distributed: bool = False) -> torch.device:
    """``"auto"``/None -> ``cuda:<local_rank>`` when CUDA is available, else CPU; ``"cuda"`` -> ``cuda:<local_rank>``.

    ``distributed`` (a process of a torchrun job): a ``"cuda:N"`` is read as "CUDA" and each process takes its own
    ``cuda:<LOCAL_RANK>`` (with a warning), as every process would otherwise share GPU N.
    Asking for CUDA where there is none is a ConfigError naming ``field`` (e.g. ``TrainConfig.device``).
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if distributed and str(device).startswith("cuda:") and str(device) != f"cuda:{local_rank}":
        import warnings

        warnings.warn(f"{field}={str(device)!r} under torchrun: each process uses its own GPU, cuda:LOCAL_RANK "
                      f"(this one cuda:{local_rank}); pass 'cuda' or 'auto'", stacklevel=2)
        device = "cuda"
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
    "auto" -> bfloat16 on CUDA, None on a CPU; "fast" -> bfloat16 wherever the hardware computes it natively (CUDA,
    or a CPU with AVX512-BF16/AMX: ``cpu_has_native_bf16``), None elsewhere (emulated bf16 is slower than fp32).

    On a CPU bf16 stays opt-in: with native bf16 it is ~2x faster and the quickstart's kNN/linear results stay
    within seed noise, but some results move (RankMe of a collapsed embedding rises from 2.9 to 3.9; one 2-epoch
    VICReg run fell below its margin; a timm ResNet-18 at 16 px diverged at step 1 where fp32 trains).
    """
    if precision == "bf16":
        return torch.bfloat16
    if precision in ("auto", "fast") and device.type == "cuda":
        return torch.bfloat16
    if precision == "fast" and device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


# ------------------------------------------------------------------------------------------- host syncs
_HOST_READS = [0]


class host_tensors:
    """Context marking reads (``float(t)``, ``.tolist()``) of tensors the code knows live on the host (a CPU
    generator's draws that set shapes): no device sync on any device. HostSyncCounter counts them as
    ``host_scalars``, not as syncs, so a CPU profile predicts a GPU's syncs."""

    def __enter__(self) -> "host_tensors":
        _HOST_READS[0] += 1
        return self

    def __exit__(self, *exc: object) -> None:
        _HOST_READS[0] -= 1


class HostSyncCounter:
    """Counts, while active (``with HostSyncCounter() as c``), the eager aten ops run and the host syncs among them:
    ``.item()``/``bool()``/``float()`` of a tensor (``_local_scalar_dense``), ``nonzero``, boolean-mask indexing
    and ``masked_select`` (data-dependent shapes), ``.tolist()``/``.cpu()``/``.numpy()`` (device -> host copies on a
    GPU), ``equal``; and host -> device copies of Python data (``torch.tensor(...)``). On a CPU none of these wait,
    but on a GPU each one stalls the host until the device catches up, so counting them on a CPU predicts a GPU's
    idle time. ``ops`` total ops, ``syncs`` the sync count, ``h2d`` the copies, ``by_kind`` {kind: count};
    ``host_scalars``: ``.item()`` inside a torch optimizer's step (AdamW/SGD keep their step counters on the CPU
    beside CUDA parameters, so these are no device syncs there; on a CPU run they look the same as syncs);
    ``sites`` {kind: {"file:line": count}} of the first frame in ``workbench/`` (where to look). Counting works on
    any device; the counter is a TorchDispatchMode plus a TorchFunctionMode (ops inside torch.compile'd graphs
    compiled by inductor are not seen)."""

    SYNC_OPS = {"aten::_local_scalar_dense": "item/bool", "aten::nonzero": "nonzero",
                "aten::masked_select": "masked_select", "aten::equal": "equal", "aten::_unique2": "unique",
                "aten::unique_consecutive": "unique", "aten::unique_dim": "unique"}
    HOST_METHODS = {"tolist", "cpu", "numpy"}

    def __init__(self, sites: bool = True):
        self.ops = 0
        self.syncs = 0
        self.h2d = 0
        self.host_scalars = 0
        self.by_kind: dict[str, int] = {}
        self.sites: dict[str, dict[str, int]] = {}
        self._track_sites = sites
        self._modes: list = []

    @staticmethod
    def _in_optimizer() -> bool:
        """Whether the op runs inside a torch optimizer's step (its step counters: see ``host_scalars``)."""
        import sys

        f = sys._getframe(1)
        while f is not None:
            name = f.f_code.co_filename
            if name.endswith("workbench/device.py"):
                f = f.f_back
                continue
            if "/torch/optim/" in name:
                return True
            if "/workbench/" in name:
                return False
            f = f.f_back
        return False

    def _site(self) -> str:
        import sys

        f = sys._getframe(2)
        while f is not None:
            name = f.f_code.co_filename
            if "/workbench/" in name and not name.endswith("device.py"):
                return f"{name.rsplit('/workbench/', 1)[1]}:{f.f_lineno}"
            f = f.f_back
        return "?"

    def _op(self, name: str) -> None:
        self.ops += 1

    def _host_scalar(self) -> None:
        self.host_scalars += 1

    def _note(self, kind: str, sync: bool = True) -> None:
        if sync:
            self.syncs += 1
        else:
            self.h2d += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if self._track_sites:
            where = self.sites.setdefault(kind, {})
            site = self._site()
            where[site] = where.get(site, 0) + 1

    def __enter__(self) -> "HostSyncCounter":
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class _Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = func.name()
                counter._op(name)
                kind = counter.SYNC_OPS.get(name)
                if kind == "item/bool" and (_HOST_READS[0] > 0 or counter._in_optimizer()):
                    counter._host_scalar()  # a step counter: a CPU tensor beside CUDA parameters, no sync there
                elif kind is not None:
                    counter._note(kind)
                elif name in ("aten::index.Tensor", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_"):
                    idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
                    if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (idx or ())):
                        counter._note("bool-index")
                elif name == "aten::repeat_interleave.Tensor" and kwargs.get("output_size") is None:
                    counter._note("repeat_interleave")
                elif name == "aten::lift_fresh":
                    counter._note("torch.tensor(data)", sync=False)
                return func(*args, **kwargs)

        class _Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                if name in counter.HOST_METHODS and args and isinstance(args[0], torch.Tensor):
                    if _HOST_READS[0] > 0 or args[0].device.type == "meta":
                        counter._host_scalar()
                    else:
                        counter._note(f".{name}()")
                return func(*args, **(kwargs or {}))

        self._modes = [_Function(), _Dispatch()]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)
        self._modes = []


# ------------------------------------------------------------------------------------------- CUDA policy
def configure_cuda(deterministic: bool = False) -> None:
    """The training precision policy on CUDA (process-wide): cuDNN autotuning (``cudnn.benchmark``) unless
    ``deterministic``; TF32 for float32 matmuls and convolutions of the model (``float32_matmul_precision="high"``:
    10-bit mantissa inputs, fp32 accumulation; what the fp32 runs of every recipe here tolerate). Code that needs
    IEEE float32 matmuls (the augmentation's resampling matrices, whose sums of weights must be 1 to ~1e-6) runs
    under :func:`full_fp32`. Under bf16 autocast the model's matmuls are bf16 anyway."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True


class full_fp32:
    """Context: float32 matmuls in full IEEE precision (no TF32) inside, the previous setting restored after."""

    def __enter__(self) -> "full_fp32":
        self._prev = torch.get_float32_matmul_precision()
        if self._prev != "highest":
            torch.set_float32_matmul_precision("highest")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._prev != "highest":
            torch.set_float32_matmul_precision(self._prev)
