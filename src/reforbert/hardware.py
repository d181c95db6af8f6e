"""What this machine's CPU can do, read from ``/proc/cpuinfo``: its feature flags, its clock, bf16 units.

Pretraining and fine-tuning choose their default precision from it, and the FLOPs accounting its peak.
Where ``/proc/cpuinfo`` cannot be read (not Linux), the CPU reports no flags and no clock.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

# The flags of units that compute in bf16 natively. Without one, PyTorch emulates bf16 on the CPU: on a
# 2-core AVX2 EPYC a length-128 training step of `mini` took 27 times as long as in fp32 (README).
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags_and_mhz() -> tuple[set[str], float | None]:
    """The CPU's feature flags and its maximum clock in MHz (the current clock when no maximum is known)."""
    flags: set[str] = set()
    mhz: float | None = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "cpu MHz" and mhz is None:
                mhz = float(value)
    with contextlib.suppress(OSError, ValueError):
        mhz = float(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000
    return flags, mhz


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes in bf16 natively (AMX or AVX512-BF16)."""
    flags, _ = cpu_flags_and_mhz()
    return not flags.isdisjoint(NATIVE_BF16_FLAGS)
