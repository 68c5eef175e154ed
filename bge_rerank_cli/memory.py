"""Memory said before it is spent: what the one-time ONNX export needs, against what this machine has free.

The export holds the torch model, the traced graph and the serialised ONNX weights at once; measured on
bge-reranker-v2-m3's full-size shape its peak RSS stays under :data:`EXPORT_FACTOR` times the weight
files (see docs/speed.md). Reading the weights' size and the free memory costs no imports beyond the
standard library, so the check runs before anything heavy loads.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from .errors import ModelError, option


def human_bytes(n: int) -> str:
    """Bytes for people: GiB from 1 GiB, MiB from 100 KiB (a small model is "0.3 MiB", not "0.00 GiB"),
    KiB from 1 KiB, else bytes."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 100 * 2**10:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} B"


log = logging.getLogger("bge_rerank_cli")
GIB = 2**30
EXPORT_FACTOR = 3.0  # peak RSS of an export over its weight files' size; measured 2.x, see docs/speed.md
SKIP_ENV = "BGE_RERANK_SKIP_MEMORY_CHECK"


def weight_bytes(folder: Path) -> int | None:
    """The size of the weights a model folder loads: its ``*.safetensors`` files (which transformers
    prefers), else its ``*.bin`` ones; None when it has neither. Follows the Hub cache's symlinks."""
    for pattern in ("*.safetensors", "*.bin"):
        files = [p for p in folder.glob(pattern) if p.is_file()]
        if files:
            return sum(p.stat().st_size for p in files)
    return None


def parse_meminfo(text: str) -> int | None:
    """``MemAvailable`` from the text of /proc/meminfo, in bytes."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "MemAvailable":
            parts = value.split()
            if parts and parts[0].isdigit():
                return int(parts[0]) * 1024
    return None


def cgroup_available(limit: str, current: str, stat: str = "") -> int | None:
    """Room left under a cgroup v2 memory limit (memory.max, memory.current, memory.stat texts): the
    limit less what is in use, counting reclaimable file cache (``inactive_file``) as free; None if
    there is no limit."""
    limit = limit.strip()
    if not limit.isdigit() or not current.strip().isdigit():
        return None
    reclaimable = 0
    for line in stat.splitlines():
        key, _, value = line.partition(" ")
        if key == "inactive_file" and value.strip().isdigit():
            reclaimable = int(value)
    return max(0, int(limit) - int(current) + reclaimable)


def available_bytes() -> int | None:
    """Memory this process could still get: /proc/meminfo's MemAvailable, capped by a cgroup v2 limit;
    None where neither can be read (not Linux)."""
    figures = []
    with contextlib.suppress(OSError):
        figures.append(parse_meminfo(Path("/proc/meminfo").read_text(encoding="ascii")))
    try:
        cgroup = Path("/sys/fs/cgroup")
        figures.append(
            cgroup_available(
                (cgroup / "memory.max").read_text(),
                (cgroup / "memory.current").read_text(),
                (cgroup / "memory.stat").read_text() if (cgroup / "memory.stat").is_file() else "",
            )
        )
    except OSError:
        pass
    known = [f for f in figures if f is not None]
    return min(known) if known else None


def export_need(weights: int, factor: float = EXPORT_FACTOR) -> int:
    """Bytes of free memory an ONNX export of ``weights`` bytes of weights needs."""
    return int(weights * factor)


def check_export_memory(model: str, weights: int, available: int, factor: float = EXPORT_FACTOR) -> None:
    """Raise :class:`ModelError` when exporting ``model`` would need more memory than is ``available``:
    the message says how much it needs and how much there is, in GiB."""
    need = export_need(weights, factor)
    if need <= available:
        return
    raise ModelError(
        f"exporting {model} to ONNX needs about {need / GIB:.1f} GiB of free memory "
        f"({factor:g}x its {weights / GIB:.1f} GiB of weights), but only {available / GIB:.1f} GiB is "
        "available; stopped before loading it, instead of being killed by the kernel part-way.",
        hint=f"Free some memory, or export once on a machine with more and copy its export folder "
        f"(BGE_RERANK_CACHE), or score with {option('backend', 'torch')}. "
        f"To try anyway: {SKIP_ENV}=1.",
    )


def precheck_export(model: str, revision: str | None = None, cache_dir: str | None = None) -> None:
    """:func:`check_export_memory` for ``model`` (a folder or a cached Hub id), before it loads. Skipped,
    with a debug note, where the weights' size or the free memory is unknown (a model not yet
    downloaded, a system without /proc/meminfo), or when ``BGE_RERANK_SKIP_MEMORY_CHECK=1``."""
    from .hub import env_flag, model_folder

    if env_flag(SKIP_ENV):
        log.debug("export memory check skipped: %s is set.", SKIP_ENV)
        return
    folder = model_folder(model, revision, cache_dir)
    weights = weight_bytes(folder) if folder else None
    available = available_bytes()
    if weights is None or available is None:
        log.debug(
            "export memory check skipped: %s unknown.", "weight size" if weights is None else "free memory"
        )
        return
    log.debug(
        "export memory check: needs ~%.1f GiB, %.1f GiB available.",
        export_need(weights) / GIB,
        available / GIB,
    )
    check_export_memory(model, weights, available)


def peak_rss_bytes(maxrss: int) -> int:
    """``ru_maxrss`` in bytes (Linux reports KiB, macOS bytes)."""
    import sys

    return maxrss if sys.platform == "darwin" else maxrss * 1024


def run_peak(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, int, float, str, str]:
    """Run ``cmd`` to its end: (exit status, its peak RSS in bytes, seconds, its stdout, its stderr's
    tail). Output goes to files, not pipes, so a chatty child cannot block before wait4 reaps it. (For
    the benchmarks under bench/, which measure whole processes; POSIX only.)"""
    import os
    import subprocess
    import tempfile
    import time

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        tail = err.read().decode(errors="replace")[-2000:]
    return proc.returncode, peak_rss_bytes(usage.ru_maxrss), seconds, stdout, tail
