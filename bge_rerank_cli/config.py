"""The frozen, picklable description of a scorer: everything the loader needs, nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_MODEL = "BAAI/bge-reranker-v2-m3"
DEFAULT_MAX_LENGTH = 512
DEFAULT_BATCH_SIZE = 32

DEFAULT_CHUNK_OVERLAP = 64
DEFAULT_MAX_CHUNKS = 64

Dtype = Literal["auto", "fp32", "fp16", "bf16"]
LongDocs = Literal["truncate", "chunk"]
DTYPES: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class LoaderConfig:
    """How to load and run one cross-encoder.

    ``device`` is ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    ``dtype`` ``auto`` means fp16 on CUDA and fp32 elsewhere. ``query_max_length`` caps the query's
    share of ``max_length`` (default three quarters, as FlagEmbedding does); the passage is cut first.
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: Dtype = "auto"
    max_length: int = DEFAULT_MAX_LENGTH
    query_max_length: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_tokens: int | None = None  # padded tokens per forward pass; default batch_size * max_length
    offline: bool = False
    cache_dir: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    backend: str = "torch"  # torch | onnx
    quantize: str = "none"  # none | int8 (onnx only)

    def __post_init__(self) -> None:
        from .errors import UsageError

        if self.max_length < 8:
            raise UsageError(f"--max-length must be at least 8 tokens, got {self.max_length}.")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")
        if not _valid_device(self.device):
            raise UsageError(
                f"--device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}.",
            )
        if self.backend not in ("torch", "onnx"):
            raise UsageError(f"--backend must be torch or onnx, got {self.backend!r}.")
        if self.quantize not in ("none", "int8"):
            raise UsageError(f"--quantize must be none or int8, got {self.quantize!r}.")
        if self.quantize != "none" and self.backend != "onnx":
            raise UsageError("--quantize int8 needs --backend onnx.")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise UsageError(f"--batch-tokens must be positive, got {self.batch_tokens}.")
        if self.query_max_length is not None and self.query_max_length < 1:
            raise UsageError(f"query max length must be positive, got {self.query_max_length}.")

    @property
    def query_cap(self) -> int:
        return self.query_max_length or self.max_length * 3 // 4


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda", "mps"):
        return True
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


@dataclass(frozen=True)
class ScoreOptions:
    """How pairs are turned into model inputs, independent of the model.

    ``long_docs="truncate"`` cuts a passage that does not fit; ``"chunk"`` scores it in windows of the
    room left after the query, overlapping by ``chunk_overlap`` tokens, at most ``max_chunks`` per passage,
    and keeps the best window's score.
    """

    long_docs: LongDocs = "truncate"
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    max_chunks: int = DEFAULT_MAX_CHUNKS

    def __post_init__(self) -> None:
        from .errors import UsageError

        if self.long_docs not in ("truncate", "chunk"):
            raise UsageError(f"--long-docs must be truncate or chunk, got {self.long_docs!r}.")
        if self.chunk_overlap < 0:
            raise UsageError(f"--chunk-overlap must be 0 or more, got {self.chunk_overlap}.")
        if self.max_chunks < 1:
            raise UsageError(f"--max-chunks must be at least 1, got {self.max_chunks}.")


def cpu_threads() -> int:
    """Compute threads for CPU inference: ``OMP_NUM_THREADS`` if set, else the CPUs this process may use
    (its affinity mask, capped by a cgroup CPU quota), never the host's total inside a container."""
    import os

    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)
