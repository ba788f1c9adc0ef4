"""Precision rules: which autocast dtype a setting gives on which device."""
import builtins
import io

import torch

from workbench.device import autocast_dtype, cpu_has_native_bf16


def _fake_cpuinfo(monkeypatch, flags: str) -> None:
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            return io.StringIO(f"processor\t: 0\nflags\t\t: {flags}\n")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch):
    _fake_cpuinfo(monkeypatch, "fpu sse2 avx2 avx512f avx512_bf16")
    assert cpu_has_native_bf16()
    _fake_cpuinfo(monkeypatch, "fpu sse2 avx2 amx_tile amx_bf16")
    assert cpu_has_native_bf16()
    _fake_cpuinfo(monkeypatch, "fpu sse2 avx2 avx512f avx512bw")  # bf16 only emulated: slower than fp32
    assert not cpu_has_native_bf16()


def test_auto_precision_is_bf16_on_cuda_only_and_explicit_settings_win():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("fp32", cuda) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16 and autocast_dtype("bf16", cuda) is torch.bfloat16
    assert autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("auto", cpu) is None  # opt-in on a CPU: it moves some results (see its docstring)


def test_fast_precision_is_bf16_where_it_is_native_and_fp32_where_it_would_be_emulated(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert autocast_dtype("fast", cuda) is torch.bfloat16
    _fake_cpuinfo(monkeypatch, "fpu sse2 avx2 avx512f avx512_bf16")
    assert autocast_dtype("fast", cpu) is torch.bfloat16
    _fake_cpuinfo(monkeypatch, "fpu sse2 avx2 avx512f avx512bw")
    assert autocast_dtype("fast", cpu) is None
