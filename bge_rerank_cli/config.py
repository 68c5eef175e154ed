"""The frozen, picklable description of a scorer and of how pairs become model inputs, with the choices
each setting takes (as Enums, so every front end lists and validates the same values)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import InvalidOption, UsageError, option

DEFAULT_MODEL = "BAAI/bge-reranker-v2-m3"
DEFAULT_MAX_LENGTH = 512
DEFAULT_BATCH_SIZE = 32
MIN_MAX_LENGTH = 8

DEFAULT_CHUNK_OVERLAP = 64
DEFAULT_MAX_CHUNKS = 64


class Choice(str, Enum):
    """A setting with a fixed set of values; members compare equal to their string values."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, name: str, value: Any) -> str:
        """``value`` as the plain string of one of the members, or an :class:`InvalidOption` for ``name``."""
        try:
            return cls(value).value
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise InvalidOption(name, f"must be one of {choices}, got {value!r}.") from None


class Dtype(Choice):
    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class Backend(Choice):
    AUTO = "auto"  # what `bge-rerank bench --recommend` measured fastest here, else torch (see recommend.py)
    TORCH = "torch"
    ONNX = "onnx"


class Quantize(Choice):
    NONE = "none"
    INT8 = "int8"


class Template(Choice):
    """How a pair becomes the model's input. ``auto`` reads it from the model's config: a sequence
    classifier is a ``cross-encoder``; a causal LM is a decoder reranker whose prompt the model names
    (``qwen3-reranker``: Qwen/Qwen3-Reranker-*; ``bge-gemma``: BAAI/bge-reranker-v2-gemma; ``mxbai-v2``:
    mixedbread-ai/mxbai-rerank-*-v2; ``bge-layerwise``: BAAI/bge-reranker-v2-minicpm-layerwise;
    ``bge-lightweight``: BAAI/bge-reranker-v2.5-gemma2-lightweight)."""

    AUTO = "auto"
    CROSS_ENCODER = "cross-encoder"
    QWEN3_RERANKER = "qwen3-reranker"
    BGE_GEMMA = "bge-gemma"
    MXBAI_V2 = "mxbai-v2"
    BGE_LAYERWISE = "bge-layerwise"
    BGE_LIGHTWEIGHT = "bge-lightweight"


class LongDocs(Choice):
    TRUNCATE = "truncate"
    CHUNK = "chunk"


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
COMPRESS_RATIOS = (1, 2, 4, 8)  # FlagEmbedding's lightweight reranker: the ratios it was trained with


def valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda", "mps"):
        return True
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


@dataclass(frozen=True)
class LoaderConfig:
    """How to load and run one cross-encoder.

    ``device`` is ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    ``dtype`` ``auto`` means fp16 on CUDA and fp32 elsewhere. ``max_length`` is what the caller asks
    for; the backend clamps it to the model's own limit (see ``Scorer.max_length``). ``query_max_length``
    caps the query's share (default three quarters, as FlagEmbedding does); the passage is cut first.
    Choice fields accept the Enum members or their string values and are stored as plain strings.
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    max_length: int = DEFAULT_MAX_LENGTH
    query_max_length: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_tokens: int | None = None  # padded tokens per forward pass; default batch_size * max_length
    offline: bool = False
    cache_dir: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    backend: str = "auto"  # auto: what `bench --recommend` measured fastest here, else torch
    quantize: str = "none"
    template: str = "auto"
    instruction: str | None = None  # decoder rerankers: the task instruction (None: the model's default)
    prefix_reuse: bool = True  # decoder rerankers: compute a query's shared prompt prefix once
    # BGE layerwise / lightweight rerankers (FlagEmbedding's meanings and defaults): the layer whose head
    # scores (None: the last), and the lightweight model's token compression (ratio 1: none).
    cutoff_layers: int | None = None
    compress_ratio: int = 1
    compress_layers: tuple[int, ...] = (8,)

    def __post_init__(self) -> None:
        for name, choice in (
            ("dtype", Dtype),
            ("backend", Backend),
            ("quantize", Quantize),
            ("template", Template),
        ):
            object.__setattr__(self, name, choice.parse(name, getattr(self, name)))
        if self.max_length < MIN_MAX_LENGTH:
            raise InvalidOption(
                "max_length", f"must be at least {MIN_MAX_LENGTH} tokens, got {self.max_length}."
            )
        if self.batch_size < 1:
            raise InvalidOption("batch_size", f"must be at least 1, got {self.batch_size}.")
        if not valid_device(self.device):
            raise InvalidOption("device", f"must be {DEVICE_CHOICES}, got {self.device!r}.")
        if self.quantize != "none" and self.backend == "torch":
            raise UsageError(f"{option('quantize', self.quantize)} needs {option('backend', 'onnx')}.")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise InvalidOption("batch_tokens", f"must be positive, got {self.batch_tokens}.")
        if self.query_max_length is not None and self.query_max_length < 1:
            raise InvalidOption("query_max_length", f"must be positive, got {self.query_max_length}.")
        if self.instruction is not None and self.template == "cross-encoder":
            raise UsageError(
                f"{option('instruction')} is for decoder rerankers; {option('template', 'cross-encoder')} "
                "takes no instruction."
            )

        if self.compress_ratio not in COMPRESS_RATIOS:
            raise InvalidOption(
                "compress_ratio",
                f"must be one of {', '.join(map(str, COMPRESS_RATIOS))}, got {self.compress_ratio}.",
            )
        if self.cutoff_layers is not None and self.cutoff_layers < 1:
            raise InvalidOption(
                "cutoff_layers", f"must be a layer number (1 or more), got {self.cutoff_layers}."
            )
        if any(layer < 1 for layer in self.compress_layers):
            raise InvalidOption(
                "compress_layers", f"must be layer numbers (1 or more), got {list(self.compress_layers)}."
            )
        object.__setattr__(self, "compress_layers", tuple(self.compress_layers))

    @property
    def query_cap(self) -> int:
        return self.query_max_length or self.max_length * 3 // 4


@dataclass(frozen=True)
class ScoreOptions:
    """How pairs are turned into model inputs, independent of the model.

    ``long_docs="truncate"`` cuts a passage that does not fit; ``"chunk"`` scores it in windows of the
    room left after the query, overlapping by ``chunk_overlap`` tokens, at most ``max_chunks`` per passage,
    and keeps the best window's score.
    """

    long_docs: str = "truncate"
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    max_chunks: int = DEFAULT_MAX_CHUNKS

    def __post_init__(self) -> None:
        object.__setattr__(self, "long_docs", LongDocs.parse("long_docs", self.long_docs))
        if self.chunk_overlap < 0:
            raise InvalidOption("chunk_overlap", f"must be 0 or more, got {self.chunk_overlap}.")
        if self.max_chunks < 1:
            raise InvalidOption("max_chunks", f"must be at least 1, got {self.max_chunks}.")


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
