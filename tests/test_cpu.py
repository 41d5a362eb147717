"""CPU feature detection (clipwidgets.cpu) and the benchmarks' bf16 check on it, flags mocked."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipwidgets import cpu


def test_cpu_flags_reads_this_machine():
    cpu.cpu_flags.cache_clear()
    found = cpu.cpu_flags()
    assert isinstance(found, frozenset)
    assert cpu.native_bf16() == (cpu.missing_bf16_feature() == "")


@pytest.mark.parametrize("values, machine, native, missing", [
    ({"avx2", "avx512f", "avx512_bf16"}, "x86_64", True, ""),
    ({"avx2", "amx_bf16", "amx_tile"}, "x86_64", True, ""),
    ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "x86_64", False, "avx512_bf16 or amx_bf16"),
    ({"avx2"}, "x86_64", False, "avx512_bf16 or amx_bf16"),
    ({"asimd", "bf16"}, "aarch64", True, ""),
    ({"asimd"}, "aarch64", False, "bf16"),
    (set(), "x86_64", False, "avx512_bf16 or amx_bf16"),
])
def test_native_bf16_by_flags(cpu_flags, values, machine, native, missing):
    cpu_flags(values, machine)
    assert cpu.native_bf16() is native
    assert cpu.missing_bf16_feature() == missing


def test_benchmarks_use_the_cpu_flags_not_onednn(cpu_flags, monkeypatch):
    """oneDNN reports bf16 support on AVX512 CPUs without bf16 instructions; the benchmarks must not."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed
    from benchmarks import bench_model
    from benchmarks.common import bf16_skip_note, cpu_supports_bf16

    cpu_flags({"avx2", "avx512f", "avx512bw"})
    assert cpu_supports_bf16() is False
    assert ("cpu", "bf16") not in bench_model.precisions()
    assert "avx512_bf16 or amx_bf16" in bf16_skip_note()
    cpu_flags({"avx2", "avx512f", "avx512_bf16"})
    assert cpu_supports_bf16() is True
    assert ("cpu", "bf16") in bench_model.precisions()
