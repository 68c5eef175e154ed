"""What the CPU is and can do (model name, cores, the vector extensions that matter to scoring), read from
the operating system: a low module that the backends, the doctor, the recommendation and the benchmarks
all import, and which imports nothing of theirs."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

CPU_FLAGS = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx_vnni"),
    "BF16": ("avx512_bf16",),
    "AMX": ("amx_bf16", "amx_tile"),
}


@dataclass(frozen=True)
class CpuInfo:
    name: str = ""
    cores: int = 0
    usable_cores: int = 0
    flags: tuple[str, ...] = ()  # our names: AVX2, AVX-512, VNNI, BF16, AMX


def collect_cpu() -> CpuInfo:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    name, raw_flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            if key.strip() == "flags":
                raw_flags = set(value.split())
                if name:
                    break
    except OSError:
        pass
    if sys.platform == "darwin" and platform.machine() == "arm64":
        name = name or "Apple silicon"
    flags = tuple(ours for ours, theirs in CPU_FLAGS.items() if raw_flags & set(theirs))
    return CpuInfo(name, cores, usable, flags)
