"""Options shared by every command, declared once. Each loader option is also an environment variable.

Choice options are Enums, so ``--help`` lists their values and Typer validates them; the loader options
are added to a command by :func:`loader_options`, which builds one :class:`LoaderConfig` from them.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer

from ..config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_MAX_CHUNKS,
    DEFAULT_MAX_LENGTH,
    DEFAULT_MODEL,
    DEVICE_CHOICES,
    Backend,
    Choice,
    Dtype,
    LoaderConfig,
    LongDocs,
    Quantize,
    ScoreOptions,
    Template,
    valid_device,
)
from ..errors import InvalidOption, UsageError
from ..jobs import OnError

T = TypeVar("T")


class Format(Choice):
    """How ranked results are shown: ``auto`` is a table on a terminal and JSONL when piped or written to
    a file."""

    AUTO = "auto"
    JSONL = "jsonl"
    TABLE = "table"
    CHART = "chart"
    TSV = "tsv"
    TREC = "trec"


class ScoreFormat(Choice):
    """How pair scores are shown: :class:`Format` without ``trec`` (pair scores are not a ranking)."""

    AUTO = "auto"
    JSONL = "jsonl"
    TABLE = "table"
    CHART = "chart"
    TSV = "tsv"


class ReportFormat(Choice):
    """How a report command (doctor, bench, eval) prints: a table on a terminal, JSON when piped."""

    AUTO = "auto"
    TABLE = "table"
    JSON = "json"


def wants_json(fmt: str) -> bool:
    """For a report command's --format: JSON when asked, or when stdout is not a terminal."""
    import sys

    return fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())


class Engine(Choice):
    LOCAL = "local"
    RAY = "ray"


def _device(value: str) -> str:
    if not valid_device(value):
        raise typer.BadParameter(f"must be {DEVICE_CHOICES}, got {value!r}.")
    return value


INPUT = "Input"  # the section helpformat lists first
LOADER = "Model"
SPEED = "Speed"
OUTPUT = "Output"

Model = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        metavar="ID|DIR",
        envvar="BGE_RERANK_MODEL",
        help="Hugging Face model id or local directory of a reranker: a cross-encoder, or a decoder "
        "reranker (see --template).",
        rich_help_panel=LOADER,
    ),
]
Device = Annotated[
    str,
    typer.Option(
        envvar="BGE_RERANK_DEVICE",
        parser=_device,
        metavar="[auto|cpu|cuda|cuda:N|mps]",
        help="auto: CUDA, then MPS, then CPU.",
        rich_help_panel=SPEED,
    ),
]
Fp16 = Annotated[
    bool | None,
    typer.Option(
        "--fp16/--no-fp16",
        envvar="BGE_RERANK_FP16",
        show_default="on for CUDA, off elsewhere",
        help="Half precision. Shorthand for --dtype fp16 / fp32. On the CPU it warns and runs fp32.",
        rich_help_panel=SPEED,
    ),
]
DtypeOption = Annotated[
    Dtype,
    typer.Option(
        envvar="BGE_RERANK_DTYPE",
        help="auto: fp16 on CUDA, fp32 elsewhere. "
        "bf16 on the CPU is an explicit opt-in: faster on CPUs with BF16 support, scores shift slightly.",
        rich_help_panel=SPEED,
    ),
]
MaxLength = Annotated[
    int,
    typer.Option(
        envvar="BGE_RERANK_MAX_LENGTH",
        help="Tokens per (query, passage) pair. Longer pairs lose passage tokens first; "
        "the query keeps up to 3/4 of this.",
        rich_help_panel=LOADER,
    ),
]
BatchSize = Annotated[
    int,
    typer.Option(
        envvar="BGE_RERANK_BATCH_SIZE",
        help="Sets the batch token budget: batch size x --max-length padded tokens per forward pass. "
        "Pairs are sorted by length, so short pairs share big batches and long pairs small ones.",
        rich_help_panel=SPEED,
    ),
]
BatchTokens = Annotated[
    int | None,
    typer.Option(
        envvar="BGE_RERANK_BATCH_TOKENS",
        help="Padded tokens per forward pass, overriding --batch-size x --max-length. "
        "On CUDA a batch that runs out of memory is split and retried.",
        rich_help_panel=SPEED,
    ),
]
Offline = Annotated[
    bool,
    typer.Option(
        "--offline",
        envvar="BGE_RERANK_OFFLINE",
        help="No network calls: use the local cache or a local directory only (HF_HUB_OFFLINE=1 works too).",
        rich_help_panel=LOADER,
    ),
]
CacheDir = Annotated[
    str | None,
    typer.Option(
        metavar="DIR",
        envvar="BGE_RERANK_CACHE_DIR",
        help="Hugging Face cache directory (default: HF_HUB_CACHE, i.e. ~/.cache/huggingface/hub).",
        rich_help_panel=LOADER,
    ),
]
Revision = Annotated[
    str | None,
    typer.Option(
        metavar="REV",
        envvar="BGE_RERANK_REVISION",
        help="Model revision (branch, tag or commit).",
        rich_help_panel=LOADER,
    ),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        envvar="BGE_RERANK_TRUST_REMOTE_CODE",
        help="Allow models that ship their own Python code. Off by default.",
        rich_help_panel=LOADER,
    ),
]

FormatOption = Annotated[
    Format,
    typer.Option(
        "--format",
        "-f",
        envvar="BGE_RERANK_FORMAT",
        help="auto: a table on a terminal, JSONL when piped. chart: score bars. "
        "trec: qid Q0 docid rank score tag.",
        rich_help_panel=OUTPUT,
    ),
]
ScoreFormatOption = Annotated[
    ScoreFormat,
    typer.Option(
        "--format",
        "-f",
        envvar="BGE_RERANK_FORMAT",
        help="auto: a table on a terminal, JSONL when piped. chart: score bars.",
        rich_help_panel=OUTPUT,
    ),
]
ReportFormatOption = Annotated[
    ReportFormat,
    typer.Option("--format", "-f", help="auto: a table on a terminal, JSON when piped."),
]
Output = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="Write results to this file instead of stdout.",
        rich_help_panel=OUTPUT,
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        envvar="BGE_RERANK_QUIET",
        help="No progress bar or summary on stderr.",
        rich_help_panel=OUTPUT,
    ),
]

LONG = "Long passages"

LongDocsOption = Annotated[
    LongDocs,
    typer.Option(
        envvar="BGE_RERANK_LONG_DOCS",
        help="truncate: cut passages that do not fit --max-length (flagged in the output). "
        "chunk: score them in overlapping windows and keep the best window (best_chunk gives its offsets).",
        rich_help_panel=LONG,
    ),
]
ChunkOverlap = Annotated[
    int,
    typer.Option(
        envvar="BGE_RERANK_CHUNK_OVERLAP", help="Tokens shared by neighbouring windows.", rich_help_panel=LONG
    ),
]
MaxChunks = Annotated[
    int,
    typer.Option(
        envvar="BGE_RERANK_MAX_CHUNKS",
        help="At most this many windows per passage; the rest is dropped and flagged.",
        rich_help_panel=LONG,
    ),
]

JOBS = "Long jobs"

OnErrorOption = Annotated[
    OnError,
    typer.Option(
        envvar="BGE_RERANK_ON_ERROR",
        help="fail: stop at the first bad input line (exit 3, line number given). "
        "skip: leave it out, log it to --errors, and go on.",
        rich_help_panel=JOBS,
    ),
]
ErrorsFile = Annotated[
    str | None,
    typer.Option(
        "--errors",
        metavar="FILE",
        help='Write each rejected input line here as JSONL {"line", "reason", "raw"}.',
        rich_help_panel=JOBS,
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted -o FILE job where its output stops, without redoing or duplicating records.",
        rich_help_panel=JOBS,
    ),
]

SCALE = "Scale-out (Ray)"

EngineOption = Annotated[
    Engine,
    typer.Option(
        envvar="BGE_RERANK_ENGINE",
        help="ray: run on a Ray cluster with Ray Data (input: files, directories or URIs; -o DIR). "
        "Needs pip install 'bge-rerank-cli[ray]'.",
        rich_help_panel=SCALE,
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        metavar="ADDRESS",
        envvar="RAY_ADDRESS",
        help="Ray cluster to join (auto, or ray://host:port); default: start a local Ray.",
        rich_help_panel=SCALE,
    ),
]
Actors = Annotated[int, typer.Option(min=1, help="Model replicas (Ray actors).", rich_help_panel=SCALE)]
GpusPerActor = Annotated[
    float | None,
    typer.Option(
        help="GPUs per actor (default: 1 when the cluster has GPUs, else 0).", rich_help_panel=SCALE
    ),
]
CpusPerActor = Annotated[float, typer.Option(help="CPUs per actor.", rich_help_panel=SCALE)]

BackendOption = Annotated[
    Backend,
    typer.Option(
        envvar="BGE_RERANK_BACKEND",
        help="auto: the backend `bge-rerank bench --recommend` measured fastest for this model on this CPU, "
        "else torch. onnx: export the model once to ONNX (cached under ~/.cache/bge-rerank) and run it with "
        "onnxruntime, without importing torch. Needs pip install 'bge-rerank-cli[onnx]'.",
        rich_help_panel=SPEED,
    ),
]
QuantizeOption = Annotated[
    Quantize,
    typer.Option(
        envvar="BGE_RERANK_QUANTIZE",
        help="int8 (runs on --backend onnx): dynamic int8 weights, the fastest CPU path. An explicit opt-in: "
        "scores shift (up to ~0.01 on random weights), so check your ranking with bge-rerank eval.",
        rich_help_panel=SPEED,
    ),
]

TemplateOption = Annotated[
    Template,
    typer.Option(
        envvar="BGE_RERANK_TEMPLATE",
        help="How a pair becomes model input. auto: a sequence classifier is a cross-encoder; a causal LM "
        "reranker is recognised from its config or name (qwen3-reranker: Qwen/Qwen3-Reranker-0.6B/4B/8B; "
        "bge-gemma: BAAI/bge-reranker-v2-gemma; mxbai-v2: mixedbread-ai/mxbai-rerank-base-v2/large-v2). "
        "Name one to force it.",
        rich_help_panel=LOADER,
    ),
]
Instruction = Annotated[
    str | None,
    typer.Option(
        metavar="TEXT",
        envvar="BGE_RERANK_INSTRUCTION",
        help="The task instruction of a decoder reranker's prompt (default: the model's published one).",
        show_default=False,
        rich_help_panel=LOADER,
    ),
]
CutoffLayers = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        envvar="BGE_RERANK_CUTOFF_LAYERS",
        help="BGE layerwise / lightweight rerankers: score with layer N's head; the layers after it do "
        "not run (default: the last layer; the model cards' examples use 28).",
        show_default=False,
        rich_help_panel=LOADER,
    ),
]
CompressRatio = Annotated[
    int,
    typer.Option(
        metavar="R",
        envvar="BGE_RERANK_COMPRESS_RATIO",
        help="BGE lightweight reranker: merge every R passage tokens into one at --compress-layers "
        "(1, 2, 4 or 8; 1: no compression).",
        rich_help_panel=LOADER,
    ),
]
CompressLayers = Annotated[
    str,
    typer.Option(
        metavar="L[,L...]",
        envvar="BGE_RERANK_COMPRESS_LAYERS",
        help="BGE lightweight reranker: the layers at which --compress-ratio compresses (e.g. 24,40).",
        rich_help_panel=LOADER,
    ),
]
PrefixReuse = Annotated[
    bool,
    typer.Option(
        "--prefix-reuse/--no-prefix-reuse",
        envvar="BGE_RERANK_PREFIX_REUSE",
        help="Decoder rerankers on torch: compute the prompt part before the passage (instruction and "
        "query) once per query and reuse it for each of its passages. Same scores.",
        rich_help_panel=SPEED,
    ),
]


ScoreCacheOption = Annotated[
    str | None,
    typer.Option(
        "--score-cache",
        metavar="default|PATH|URL",
        envvar="BGE_RERANK_SCORE_CACHE",
        show_default=False,
        help="Remember each pair's score and never pay for it twice under the same settings: default (a "
        "SQLite file in bge-rerank's cache folder), a SQLite file, or redis://HOST:PORT shared by "
        "replicas. Off by default.",
        rich_help_panel=SPEED,
    ),
]
ScoreCacheMaxSize = Annotated[
    str | None,
    typer.Option(
        "--score-cache-max-size",
        metavar="SIZE",
        envvar="BGE_RERANK_SCORE_CACHE_MAX_SIZE",
        show_default=False,
        help="Bound of the score cache (e.g. 500MB, 2GiB; default 1GiB); the least recently used entries "
        "go first.",
        rich_help_panel=SPEED,
    ),
]


def open_score_cache(spec: str | None, max_size: str | None, *, service: bool = False) -> Any:
    """The store ``--score-cache`` names, or ``None`` without one (``--score-cache-max-size`` alone
    does nothing but is checked). ``service``: a SQLite file locked by another writer fails a call
    after 2 s rather than 30 s (the service goes on uncached and tries it again later)."""
    from ..score_cache import BUSY_TIMEOUT, SERVICE_BUSY_TIMEOUT, open_store, parse_size

    if not (spec and spec.strip()):
        if max_size is not None:
            parse_size(max_size)
        return None
    return open_store(spec, max_size, busy_timeout=SERVICE_BUSY_TIMEOUT if service else BUSY_TIMEOUT)


PRECISION_OPTIONS = ("fp16", "dtype", "backend", "quantize")


def _loader_parameters() -> list[tuple[str, Any, Any]]:
    return [
        ("model", Model, DEFAULT_MODEL),
        ("device", Device, "auto"),
        ("fp16", Fp16, None),
        ("dtype", DtypeOption, Dtype.AUTO),
        ("max_length", MaxLength, DEFAULT_MAX_LENGTH),
        ("batch_size", BatchSize, DEFAULT_BATCH_SIZE),
        ("batch_tokens", BatchTokens, None),
        ("offline", Offline, False),
        ("cache_dir", CacheDir, None),
        ("revision", Revision, None),
        ("trust_remote_code", TrustRemoteCode, False),
        ("backend", BackendOption, Backend.AUTO),
        ("quantize", QuantizeOption, Quantize.NONE),
        ("template", TemplateOption, Template.AUTO),
        ("instruction", Instruction, None),
        ("prefix_reuse", PrefixReuse, True),
        ("cutoff_layers", CutoffLayers, None),
        ("compress_ratio", CompressRatio, 1),
        ("compress_layers", CompressLayers, "8"),
    ]


def build_config(
    *,
    fp16: bool | None = None,
    dtype: str = "auto",
    compress_layers: str | tuple[int, ...] = "8",
    **options: Any,
) -> LoaderConfig:
    """One :class:`LoaderConfig` from the loader flags; ``--fp16/--no-fp16`` is shorthand for ``--dtype``."""
    if isinstance(compress_layers, str):
        try:
            compress_layers = tuple(int(part) for part in compress_layers.split(",") if part.strip())
        except ValueError:
            raise InvalidOption(
                "compress_layers", f"must be layer numbers separated by commas, got {compress_layers!r}."
            ) from None
    options["compress_layers"] = compress_layers
    if fp16 is not None:
        wanted = "fp16" if fp16 else "fp32"
        if dtype not in ("auto", wanted):
            raise UsageError(
                f"--{'no-' if not fp16 else ''}fp16 contradicts --dtype {dtype}; give one of them."
            )
        dtype = wanted
    return LoaderConfig(dtype=dtype, **options)


Parameter = tuple[str, Any, Any]  # name, Annotated option, default


def shared_options(
    parameters: list[Parameter], build: Callable[..., Any], into: str
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Give a command options declared once elsewhere: they appear in its ``--help`` after its own, and
    are built into one value (``build(**options)``) passed as the keyword ``into``."""
    from .exits import reported_errors

    def decorate(command: Callable[..., T]) -> Callable[..., T]:
        names = [name for name, _, _ in parameters]
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != into]
        extra = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
            for n, a, d in parameters
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> T:
            values = {name: kwargs.pop(name) for name in names}
            with reported_errors():
                built = build(**values)
            return command(**{into: built}, **kwargs)

        params = own + extra
        wrapper.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


ServeModels = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        metavar="[NAME=]ID|DIR",
        help="Hugging Face model id or local directory of a reranker (else BGE_RERANK_MODEL). Repeat to "
        "serve several, each named NAME=ID: a request picks one by its model field (per-model options: "
        "--config).",
        show_default=False,
        rich_help_panel=LOADER,
    ),
]


@dataclass(frozen=True)
class ServeFlags:
    """``serve``'s loader flags: the ``--model`` values as given, and every other loader flag (applied to
    each model unless the config file says otherwise for it)."""

    models: tuple[str, ...]
    base: LoaderConfig


def serve_loader_options() -> Callable[[Callable[..., T]], Callable[..., T]]:
    """:func:`loader_options` with a repeatable ``--model [NAME=]ID``, as ``config: ServeFlags``."""
    shared = [("models", ServeModels, None) if p[0] == "model" else p for p in _loader_parameters()]

    def build(models: list[str] | None = None, **options: Any) -> ServeFlags:
        # Read here, not by Click: Click splits a repeatable option's variable at spaces (a path with one).
        named = os.environ.get("BGE_RERANK_MODEL", "").strip()
        return ServeFlags(tuple(models or ([named] if named else [])), build_config(**options))

    return shared_options(shared, build, "config")


def loader_options(*, precision: bool = True) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Give a command the shared model, device and batching options as ``config: LoaderConfig``
    (validated before the command runs). ``precision=False`` leaves out --fp16/--dtype/--backend/--quantize,
    for a command that chooses those itself."""
    shared = [p for p in _loader_parameters() if precision or p[0] not in PRECISION_OPTIONS]
    return shared_options(shared, build_config, "config")


LONG_DOCS_PARAMETERS: list[Parameter] = [
    ("long_docs", LongDocsOption, LongDocs.TRUNCATE),
    ("chunk_overlap", ChunkOverlap, DEFAULT_CHUNK_OVERLAP),
    ("max_chunks", MaxChunks, DEFAULT_MAX_CHUNKS),
]


def long_docs_options() -> Callable[[Callable[..., T]], Callable[..., T]]:
    """--long-docs/--chunk-overlap/--max-chunks as ``options: ScoreOptions``."""
    return shared_options(LONG_DOCS_PARAMETERS, ScoreOptions, "options")
