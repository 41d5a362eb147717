"""What this CPU can do fast: instruction-set features read from the operating system.

Fast paths (bf16 models, 16-bit search kernels) check these before they are chosen: without native
bf16 instructions torch emulates bfloat16, about 7x slower than fp32 (measured on AVX2-only EPYC).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["BF16_FEATURES", "cpu_flags", "missing_bf16_feature", "native_bf16"]

# Any one of these gives native bfloat16 arithmetic: x86 AVX512-BF16 or AMX, ARM's BF16 extension.
BF16_FEATURES = {"x86": ("avx512_bf16", "amx_bf16"), "arm": ("bf16",)}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them ("flags" on x86, "Features" on ARM); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _family() -> str:
    machine = platform.machine().lower()
    return "arm" if machine.startswith(("arm", "aarch64")) else "x86"


def native_bf16() -> bool:
    """True when the CPU computes in bfloat16 natively (see BF16_FEATURES)."""
    return not missing_bf16_feature()


def missing_bf16_feature() -> str:
    """'' when bf16 is native here, else the features that are missing, for messages."""
    wanted = BF16_FEATURES[_family()]
    flags = cpu_flags()
    return "" if any(flag in flags for flag in wanted) else " or ".join(wanted)
