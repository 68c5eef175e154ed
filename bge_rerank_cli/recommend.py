"""``--backend auto``: the exact (fp32) backend measured fastest for this model on this CPU.

Which of torch and ONNX Runtime is faster depends on the CPU and the model (measured: ONNX fp32 1.3x
torch on a 2-core AVX2 EPYC, within a few percent of it on an AVX-512 one), so it is measured, not
guessed: ``bge-rerank bench --recommend`` runs both on the user's own model and requests and writes the
winner here, keyed by model and CPU (name, ISA flags, threads). ``auto`` reads it; with no
recommendation for this model and CPU it is torch, the loader of record, because ONNX's first use costs
a one-time export (minutes, ~2.5x the weights in memory) that a default must not spring on anyone.
int8 is never chosen by ``auto``: it changes scores; ``bench`` says when it pays and by how much.

The file is ``$BGE_RERANK_CACHE/recommend.json`` (default ``~/.cache/bge-rerank``): one entry per
model and CPU, plain JSON, safe to delete.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from .config import LoaderConfig

EXACT = ("torch-fp32", "onnx-fp32")  # the setups auto chooses between: same scores, fp32


@dataclass(frozen=True)
class Recommendation:
    """What ``bench --recommend`` measured and chose for one model on one CPU."""

    model: str
    cpu: str
    backend: str  # torch or onnx
    pairs_per_s: dict[str, float]  # per setup measured
    int8_speedup: float | None = None  # onnx-int8 over the chosen backend, when measured
    int8_max_delta: float | None = None  # its largest score change, when measured
    written: str = ""

    def summary(self) -> str:
        rates = self.pairs_per_s
        other = next((s for s in EXACT if s.split("-")[0] != self.backend and s in rates), None)
        line = f"--backend auto will use {self.backend} for {self.model} on this CPU"
        if other:
            mine = rates[f"{self.backend}-fp32"]
            line += f" ({mine / rates[other]:.2f}x {other.split('-')[0]}: {mine:.2f} vs {rates[other]:.2f} pairs/s)"
        line += "."
        if self.int8_speedup is not None:
            pays = "pays" if self.int8_speedup >= 1.1 else "does not pay"
            line += (
                f" int8 {pays} here: {self.int8_speedup:.2f}x, scores move by up to "
                f"{self.int8_max_delta or 0:.1e} (opt-in: --backend onnx --quantize int8)."
            )
        return line


def cpu_signature() -> str:
    """This CPU as the recommendation's key: its name, the ISA flags that change kernels, and threads."""
    from .config import cpu_threads
    from .cpuinfo import collect_cpu

    cpu = collect_cpu()
    return f"{cpu.name or 'cpu'} | {' '.join(cpu.flags) or '-'} | {cpu_threads()} threads"


def model_key(config: LoaderConfig) -> str:
    """A directory by its resolved path, a Hub id with its revision."""
    local = Path(config.model).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return config.model + (f"@{config.revision}" if config.revision else "")


def store_path() -> Path:
    from .hub import own_cache

    return own_cache() / "recommend.json"


def choose(measured: Sequence[Any]) -> Recommendation | None:
    """The fastest exact setup among ``measured`` (``benchmark.Measurement``s that ran), with what int8
    would add over it; None when neither exact setup ran."""
    rates = {m.setup: m.pairs_per_s for m in measured if m.error is None and m.pairs_per_s > 0}
    exact = [s for s in EXACT if s in rates]
    if not exact:
        return None
    best = max(exact, key=lambda s: rates[s])
    int8 = next((m for m in measured if m.setup == "onnx-int8" and m.error is None), None)
    return Recommendation(
        model="",
        cpu="",
        backend=best.split("-")[0],
        pairs_per_s={s: round(r, 4) for s, r in rates.items()},
        int8_speedup=None if int8 is None else round(int8.pairs_per_s / rates[best], 3),
        int8_max_delta=None if int8 is None else int8.max_abs_delta,
    )


def save(config: LoaderConfig, chosen: Recommendation) -> Recommendation:
    """Record ``chosen`` for this model and CPU (replacing an earlier one); returns it as stored."""
    stored = replace(chosen, model=model_key(config), cpu=cpu_signature(),
                     written=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # fmt: skip
    path = store_path()
    entries = [e for e in _entries(path) if (e.get("model"), e.get("cpu")) != (stored.model, stored.cpu)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps([*entries, asdict(stored)], option=orjson.OPT_INDENT_2))
    tmp.replace(path)
    return stored


def lookup(config: LoaderConfig) -> Recommendation | None:
    entries = _entries(store_path())
    if not entries:  # the common case: nothing recorded, nothing more to read
        return None
    key, cpu = model_key(config), cpu_signature()
    for entry in entries:
        if entry.get("model") == key and entry.get("cpu") == cpu:
            try:
                return Recommendation(**entry)
            except TypeError:  # written by another version
                return None
    return None


def _entries(path: Path) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, ValueError):
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def resolve_backend(config: LoaderConfig, *, onnx_ok: bool = True) -> LoaderConfig:
    """``config`` with ``backend="auto"`` made concrete (see the module docs); other backends unchanged.
    ``onnx_ok=False``: the model's family runs on torch only (``auto`` is torch then)."""
    if config.backend != "auto":
        return config
    if not onnx_ok:
        return replace(config, backend="torch")
    if config.quantize != "none":  # int8 runs on ONNX Runtime only
        return replace(config, backend="onnx")
    found = lookup(config)
    backend = found.backend if found is not None else "torch"
    if backend == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        backend = "torch"
    return replace(config, backend=backend)
