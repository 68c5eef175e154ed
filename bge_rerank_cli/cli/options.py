"""Options shared by every command, declared once. Each loader option is also an environment variable."""

from __future__ import annotations

from typing import Annotated

import typer

LOADER = "Model"
OUTPUT = "Output"

Model = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        envvar="BGE_RERANK_MODEL",
        help="Hugging Face model id or local directory of a cross-encoder.",
        rich_help_panel=LOADER,
    ),
]
Device = Annotated[
    str,
    typer.Option(
        envvar="BGE_RERANK_DEVICE",
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.",
        rich_help_panel=LOADER,
    ),
]
Fp16 = Annotated[
    bool | None,
    typer.Option(
        "--fp16/--no-fp16",
        envvar="BGE_RERANK_FP16",
        show_default="on for CUDA, off elsewhere",
        help="Half precision. Shorthand for --dtype fp16 / fp32. On the CPU it warns and runs fp32.",
        rich_help_panel=LOADER,
    ),
]
Dtype = Annotated[
    str,
    typer.Option(
        envvar="BGE_RERANK_DTYPE",
        help="auto (fp16 on CUDA, fp32 elsewhere), fp32, fp16 or bf16. "
        "bf16 on the CPU is an explicit opt-in: faster on CPUs with BF16 support, scores shift slightly.",
        rich_help_panel=LOADER,
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
        rich_help_panel=LOADER,
    ),
]
BatchTokens = Annotated[
    int | None,
    typer.Option(
        envvar="BGE_RERANK_BATCH_TOKENS",
        help="Padded tokens per forward pass, overriding --batch-size x --max-length. "
        "On CUDA a batch that runs out of memory is split and retried.",
        rich_help_panel=LOADER,
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
        envvar="BGE_RERANK_CACHE_DIR",
        help="Hugging Face cache directory (default: HF_HUB_CACHE, i.e. ~/.cache/huggingface/hub).",
        rich_help_panel=LOADER,
    ),
]
Revision = Annotated[
    str | None,
    typer.Option(
        envvar="BGE_RERANK_REVISION", help="Model revision (branch, tag or commit).", rich_help_panel=LOADER
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

Format = Annotated[
    str,
    typer.Option(
        "--format",
        "-f",
        envvar="BGE_RERANK_FORMAT",
        help="auto (table on a terminal, JSONL when piped), jsonl, table, chart or tsv.",
        rich_help_panel=OUTPUT,
    ),
]
ReportFormat = Annotated[
    str,
    typer.Option("--format", "-f", help="auto (table on a terminal, JSON when piped), table or json."),
]
Output = Annotated[
    str | None,
    typer.Option(
        "--output", "-o", help="Write results to this file instead of stdout.", rich_help_panel=OUTPUT
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

LongDocs = Annotated[
    str,
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

OnError = Annotated[
    str,
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

Engine = Annotated[
    str,
    typer.Option(
        envvar="BGE_RERANK_ENGINE",
        help="local, or ray: run on a Ray cluster with Ray Data (input: files, directories or URIs; -o DIR). "
        "Needs pip install 'bge-rerank-cli[ray]'.",
        rich_help_panel=SCALE,
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
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

Backend = Annotated[
    str,
    typer.Option(
        envvar="BGE_RERANK_BACKEND",
        help="torch, or onnx: export the model once to ONNX (cached under ~/.cache/bge-rerank) and run it with "
        "onnxruntime, without importing torch. Needs pip install 'bge-rerank-cli[onnx]'.",
        rich_help_panel=LOADER,
    ),
]
Quantize = Annotated[
    str,
    typer.Option(
        envvar="BGE_RERANK_QUANTIZE",
        help="none, or int8 (with --backend onnx): dynamic int8 weights, the fastest CPU path; an explicit "
        "opt-in, since scores shift (by up to ~0.01 on random weights; real-weight ranking quality is not "
        "measured by us: check yours with bge-rerank eval and bge-rerank bench).",
        rich_help_panel=LOADER,
    ),
]
