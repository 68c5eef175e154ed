"""Throughput and accuracy of bge-rerank against its peers, side by side, on one workload.

Builds a random-weight model once (throughput does not depend on weight values) and caches it under
bench/.cache: the exact bge-reranker-v2-m3 architecture (24 layers, hidden 1024, 16 heads, FFN 4096,
vocab 250002) with a locally built tokenizer, or with --quick a scaled-down one. Generates a
reproducible mixed-length workload (queries 5-40 tokens, passages 20-1000 tokens, ~10% repeated
pairs). Peers: sentence-transformers `CrossEncoder.predict` and FlagEmbedding `FlagReranker`
(in its own venv under bench/.cache/flag-venv, created on first use: it needs transformers <= 5.23).
Each engine runs in its own fresh process (so peak memory is its own), engines interleaved round by
round, on the same pairs, batch size and max length; ONNX exports are made beforehand in a separate
process. Prints pairs/s, tokens/s, padding fraction, peak RSS (and GPU memory), the ratio to each peer
and max |Δscore| (sigmoid) against fp32 torch, and writes docs/benchmarks.md.

The machine's limit is measured in the same run: before the engines (and again after them) a fresh
process times each backend's own GEMM kernel on the model's layer-sized problem (tokens x hidden x ffn:
torch's linear fp32 for the torch engines, onnxruntime MatMul fp32, and the int8 MatMul quantize_dynamic
makes), the CPU's ISA flags are printed, and each engine is also given as % of its matching ceiling
(tokens/s x FLOPs per token / the best GEMM rate measured); see bge_rerank_cli/ceilings.py. Each ONNX
export made beforehand is run in its own process and its peak RSS reported against the weights' size.

    python bench/speed.py --quick                  # scaled-down model, < 2 minutes once set up
    python bench/speed.py --pairs 64 --rounds 2    # full-size architecture (~20 minutes on 2 cores)
    python bench/speed.py --device cuda            # the GPU set: fp16/bf16 against FlagReranker fp16
    python bench/speed.py --device cuda --pairs 2000 --passage-tokens 100-512 --repeats 0 --batch-size 64
                                                   # <=512-token passages, like the published GPU figures
    bash bench/gpu.sh                              # the GPU runs, as made on a lent GPU machine

Decoder rerankers (--model-kind qwen3): the exact Qwen3-Reranker-0.6B shape with random weights, 20
documents per query (passages 20-300 words), CPU fp32: the Qwen3-Reranker model card's transformers loop
(`qwen3-reference-fp32`: each query's documents in one left-padded batch, full-vocabulary logits) against
ours without (`ours-torch-noreuse-fp32`) and with prefix reuse (`ours-torch-fp32`), and ours on ONNX int8.

    python bench/speed.py --model-kind qwen3 --quick    # a 4-layer Qwen3, a minute
    python bench/speed.py --model-kind qwen3            # Qwen3-Reranker-0.6B shape (~15 minutes on 2 cores)

On a GPU add --warmup full: each engine scores the whole workload once, untimed, before its timed pass
(otherwise each new batch shape's first kernels are timed; the default 2-pair warm-up keeps CPU runs short).

On a machine without network (no venv can be built for FlagEmbedding) pass --flag-python PYTHON, e.g.
--flag-python current: FlagEmbedding is then imported by that interpreter (it must import there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
CACHE = ROOT / "bench" / ".cache"
ENGINES = ("st-predict-fp32", "flag-fp32", "ours-torch-fp32", "ours-onnx-fp32", "ours-onnx-int8")
GPU_ENGINES = (
    "st-predict-fp32",
    "st-predict-fp16",
    "flag-fp16",
    "ours-torch-fp32",
    "ours-torch-fp16",
    "ours-torch-bf16",
)
REFERENCE = "st-predict-fp32"  # fp32 torch, the scores every other engine is compared with
PEERS = {"st": "st-predict", "flag": "flag"}
QWEN3_ENGINES = ("qwen3-reference-fp32", "ours-torch-noreuse-fp32", "ours-torch-fp32", "ours-onnx-int8")
QWEN3_REFERENCE = "qwen3-reference-fp32"
GEMMA_ENGINES = ("flag-llm-fp32", "ours-torch-noreuse-fp32", "ours-torch-fp32")
GEMMA_REFERENCE = "flag-llm-fp32"
FLAG_VENV = CACHE / "flag-venv"
FLAG_REQUIREMENTS = ["FlagEmbedding==1.4.2", "transformers<=5.23"]  # FlagEmbedding breaks on 5.24


def model_dir(quick: bool) -> Path:
    path = CACHE / ("quick-xlmr" if quick else "bge-reranker-v2-m3-shape")
    if not (path / "config.json").is_file():
        from tools.random_model import build_bge_m3_architecture, build_xlmr

        if quick:
            build_xlmr(
                path, layers=4, hidden=256, heads=4, ffn=1024, max_positions=1026, initializer_range=0.02
            )
        else:
            build_bge_m3_architecture(path)
    return path


def qwen3_model_dir(quick: bool) -> Path:
    path = CACHE / ("quick-qwen3" if quick else "qwen3-reranker-0.6b-shape")
    if not (path / "config.json").is_file():
        from tools.random_model import build_qwen3_reranker, build_qwen3_reranker_architecture

        if quick:
            build_qwen3_reranker(path, layers=4, hidden=256, heads=4, kv_heads=2, head_dim=64, ffn=768,
                                 initializer_range=0.02)  # fmt: skip
        else:
            build_qwen3_reranker_architecture(path)
    return path


def gemma_model_dir(quick: bool) -> Path:
    """A random Gemma laid out as bge-reranker-v2-gemma (scaled down; the full 2.5B shape is not built)."""
    path = CACHE / "quick-gemma"
    if not (path / "config.json").is_file():
        from tools.random_model import build_bge_gemma

        build_bge_gemma(path, layers=4, hidden=256, heads=4, head_dim=64, ffn=768)
    return path


def query_workload(pairs: int, docs: int = 20, seed: int = 11, passage_words: tuple[int, int] = (20, 300)):
    """Rerank-shaped pairs: queries of 5-20 words, each with ``docs`` passages of mixed length."""
    from tools.random_model import _WORDS

    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    while len(out) < pairs:
        q = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 20)))
        for _ in range(min(docs, pairs - len(out))):
            out.append((q, " ".join(rng.choice(_WORDS) for _ in range(rng.randint(*passage_words)))))
    return out


def workload(
    pairs: int, seed: int = 7, passage_tokens: tuple[int, int] | None = None, repeats: float = 0.1
) -> list[tuple[str, str]]:
    """Queries of 5-40 words, passages of 20-1000 words (one token each in our vocabulary), ~10% repeats.

    ``passage_tokens=(lo, hi)`` draws passage lengths uniformly from lo..hi words instead; ``repeats`` is
    the share of pairs that repeat an earlier one (the defaults give the same workload as always)."""
    from tools.random_model import _WORDS

    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    while len(out) < pairs:
        if out and rng.random() < repeats:
            out.append(rng.choice(out))
            continue
        q = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 40)))
        if passage_tokens is None:
            n = int(min(1000, max(20, rng.lognormvariate(5.0, 0.8))))
        else:
            n = rng.randint(*passage_tokens)
        out.append((q, " ".join(rng.choice(_WORDS) for _ in range(n))))
    return out


def worker(
    engine: str,
    model: str,
    pairs_file: str,
    batch_size: int,
    max_length: int,
    device: str,
    batch_tokens: int | None = None,
    warmup: str = "2",
    spawned: float | None = None,
) -> dict[str, object]:
    """One engine's timed pass over the workload, after an untimed warm-up in the same process: two
    pairs (``warmup="2"``), or the whole workload once (``"full"``), so every batch shape has met its
    kernels (cuDNN/cuBLAS heuristics, allocator growth) before the clock starts."""
    from bge_rerank_cli.ceilings import attention_length

    pairs = [tuple(p) for p in json.loads(Path(pairs_file).read_text())]
    os.environ["HF_HUB_OFFLINE"] = "1"
    extra: dict[str, object] = {}
    precision = engine.rsplit("-", 1)[1]
    score: Callable[[list], list[float]]
    if engine.startswith("qwen3-reference"):
        from tools.reference_rerankers import Qwen3ModelCard

        card = Qwen3ModelCard(model, max_length=max_length)

        def score(batch: list) -> list[float]:  # the model card's code, one query's documents a batch
            return card.score_per_query(batch)

    elif engine.startswith("st-"):
        import torch
        from sentence_transformers import CrossEncoder

        kwargs = {"dtype": torch.float16} if precision == "fp16" else {}
        ce = CrossEncoder(model, device=device, max_length=max_length, model_kwargs=kwargs)

        def score(batch: list) -> list[float]:
            out = ce.predict(
                batch, batch_size=batch_size, show_progress_bar=False, activation_fn=torch.nn.Sigmoid()
            )
            return [float(s) for s in out]

    elif engine.startswith("flag-llm"):
        from FlagEmbedding import FlagLLMReranker

        llm = FlagLLMReranker(model, use_fp16=False, devices=[device], batch_size=batch_size)

        def score(batch: list) -> list[float]:
            out = llm.compute_score(batch, batch_size=batch_size, max_length=max_length, normalize=True)
            return [float(s) for s in (out if isinstance(out, list) else [out])]

    elif engine.startswith("flag-"):
        from FlagEmbedding import FlagReranker

        reranker = FlagReranker(
            model,
            use_fp16=precision == "fp16",
            devices=["cuda:0" if device == "cuda" else device],
            batch_size=batch_size,
        )

        def score(batch: list) -> list[float]:
            out = reranker.compute_score(batch, batch_size=batch_size, max_length=max_length, normalize=True)
            return [float(s) for s in (out if isinstance(out, list) else [out])]

    else:
        from bge_rerank_cli.backends import load_scorer
        from bge_rerank_cli.config import LoaderConfig
        from bge_rerank_cli.engine import JobControl, prefix_keys, score_pairs, token_batches
        from bge_rerank_cli.records import Pair

        backend = engine.split("-")[1]
        dtype = precision if backend == "torch" else "auto"
        quantize = "int8" if precision == "int8" else "none"
        config = LoaderConfig(
            model=model, device=device, dtype=dtype, batch_size=batch_size, max_length=max_length,  # type: ignore[arg-type]
            backend=backend, quantize=quantize, batch_tokens=batch_tokens, prefix_reuse="noreuse" not in engine,
        )  # fmt: skip
        scorer = load_scorer(config)

        def score(batch: list) -> list[float]:
            return [
                r.score for r in score_pairs(scorer, [Pair(q, p) for q, p in batch], control=JobControl())
            ]

    loaded_at = time.time()  # imports and model load done (wall clock: the parent timed the spawn)
    started = time.perf_counter()
    score(pairs if warmup == "full" else pairs[:2])  # untimed
    _sync(device)
    warm_seconds = time.perf_counter() - started
    first_at = time.time()
    started = time.perf_counter()
    scores = score(pairs)
    _sync(device)
    elapsed = time.perf_counter() - started
    if spawned is not None:  # whole process: start, load, first score (2 pairs), then every pair
        extra["whole"] = {"load_s": loaded_at - spawned, "first_score_s": first_at - spawned,
                          "whole_s": time.time() - spawned}  # fmt: skip
    if engine.startswith("qwen3-reference"):
        lengths, padded = [], 0
        for query in dict.fromkeys(q for q, _ in pairs):
            texts = [card.format_instruction(q, d) for q, d in pairs if q == query]
            mask = card.process_inputs(texts)["attention_mask"]
            lengths += mask.sum(-1).tolist()
            padded += mask.numel()
        padding = 1 - sum(lengths) / padded
        attention = _attention(None)
        extra["token_lengths"] = _prompt_lengths(model, pairs, max_length)
    elif engine.startswith("st-"):
        padding = _sorted_padding(model, pairs, batch_size, max_length, by_chars=True)
        attention = _attention(ce.model)
    elif engine.startswith("flag-llm"):
        padding, attention = float("nan"), _attention(llm.model)
        extra["token_lengths"] = _prompt_lengths(model, pairs, max_length)  # ours: the same pairs fit
    elif engine.startswith("flag-"):
        padding = _sorted_padding(model, pairs, batch_size, max_length, by_chars=False)
        attention = _attention(reranker.model)
    else:
        unique = list(dict.fromkeys(Pair(q, p) for q, p in pairs))
        encoded = scorer.encode(unique)
        lengths = [len(e.ids) for e in encoded]
        keys = prefix_keys(scorer, encoded)
        batches = token_batches(range(len(lengths)), lengths, scorer.batch_tokens, scorer.fill_tokens, keys)
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        padding = 1 - sum(lengths) / padded
        if getattr(scorer, "template", "cross-encoder") != "cross-encoder":  # prompt tokens count too
            extra["token_lengths"] = [len(e.ids) for e in scorer.encode([Pair(q, p) for q, p in pairs])]
            extra["prefix_runs"] = getattr(scorer, "prefix_runs", 0)
        attention = _attention(getattr(scorer, "_model", None))
        extra["fp32_fallbacks"] = getattr(scorer, "fp32_fallbacks", 0)
        extra["batch_tokens"] = scorer.batch_tokens
    if warmup == "full":
        extra["warmup_seconds"] = warm_seconds
    lengths = extra.pop("token_lengths", None) or _token_lengths(model, pairs, max_length)
    peak_gpu = None
    if device.startswith("cuda"):
        import torch

        peak_gpu = torch.cuda.max_memory_allocated() / 2**20
    return {
        "engine": engine,
        "seconds": elapsed,
        "pairs": len(pairs),
        "tokens": sum(lengths),
        "attention_length": attention_length(lengths),
        "padding": padding,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": peak_gpu,
        "attention": attention,
        **extra,
        "scores": scores,
    }


def _attention(model: object) -> str | None:
    """The attention kernel family transformers chose for a model (sdpa, eager, flash_attention_2)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _prompt_lengths(model: str, pairs: list[tuple[str, str]], max_length: int) -> list[int]:
    """A decoder reranker's prompt lengths per pair, as our template tokenises them (no model loaded)."""
    from transformers import AutoConfig, AutoTokenizer

    from bge_rerank_cli.backends.prompts import TEMPLATES, PromptTokenizer, model_template
    from bge_rerank_cli.records import Pair

    tok = AutoTokenizer.from_pretrained(model)
    template = model_template("auto", model, AutoConfig.from_pretrained(model))
    prompts = PromptTokenizer(tok.backend_tokenizer.to_str(), TEMPLATES[template], instruction=None,
                              max_length=max_length, query_cap=max_length * 3 // 4,
                              pad_id=tok.pad_token_id or 0, bos_id=tok.bos_token_id)  # fmt: skip
    return [len(e.ids) for e in prompts.encode([Pair(q, p) for q, p in pairs])]


def _token_lengths(model: str, pairs: list[tuple[str, str]], max_length: int) -> list[int]:
    """Each pair's real token count (truncated to ``max_length``), as the model's tokenizer gives it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    return [len(tok(q, p, truncation=True, max_length=max_length)["input_ids"]) for q, p in pairs]


def _sorted_padding(
    model: str, pairs: list[tuple[str, str]], batch_size: int, max_length: int, *, by_chars: bool
) -> float:
    """The padded share of a peer that sorts by length (characters for sentence-transformers, tokens
    for FlagEmbedding) and batches a fixed count."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lengths = [len(tok(q, p, truncation=True, max_length=max_length)["input_ids"]) for q, p in pairs]
    key = (lambda i: -(len(pairs[i][0]) + len(pairs[i][1]))) if by_chars else (lambda i: -lengths[i])
    order = sorted(range(len(pairs)), key=key)
    padded = sum(
        len(order[s : s + batch_size]) * max(lengths[i] for i in order[s : s + batch_size])
        for s in range(0, len(order), batch_size)
    )
    return 1 - sum(lengths) / padded


@dataclass
class Limits:
    """The machine's ceilings (best of before and after the engines), the model's shape and each ONNX
    export's peak memory, for the report."""

    ceilings: list[Any] = field(default_factory=list)  # bge_rerank_cli.ceilings.Ceiling
    before: list[Any] = field(default_factory=list)
    after: list[Any] = field(default_factory=list)
    shape: Any = None  # bge_rerank_cli.ceilings.EncoderShape
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        from bge_rerank_cli.ceilings import isa_flags

        return {
            "isa": isa_flags(),
            "shape": asdict(self.shape) if self.shape else None,
            "ceilings": [c.to_dict() for c in self.ceilings],
            "ceilings_before": [c.to_dict() for c in self.before],
            "ceilings_after": [c.to_dict() for c in self.after],
            "exports": self.exports,
        }


def measure_ceilings(model: Path, engines: Sequence[str], args: argparse.Namespace) -> list[Any]:
    """The GEMM ceilings the engines need, on the model's layer-sized problem, in a fresh process."""
    from bge_rerank_cli.ceilings import kinds_for, measure_for_model

    return measure_for_model(str(model), kinds_for(engines), args.device, tokens=args.gemm_tokens)


def prepare_export(model: Path, quantize: str, max_length: int, env: dict[str, str]) -> dict[str, Any]:
    """Export (and quantise) once, in a process of its own: how much memory that took, against the
    weights, or ``cached`` when an earlier run's export is reused."""
    from bge_rerank_cli.memory import run_peak, weight_bytes

    cmd = [sys.executable, __file__, "--worker", "prepare", "--model", str(model), "--pairs-file", quantize]
    code, peak, seconds, out, tail = run_peak([*cmd, "--max-length", str(max_length)], env)
    if code != 0:
        raise SystemExit(f"the {quantize} ONNX export failed (exit {code}):\n{tail}")
    weights = weight_bytes(model) or 0
    made = json.loads(out.strip().splitlines()[-1])[quantize]
    return {"cached": not made, "peak_rss_bytes": peak, "weights_bytes": weights, "seconds": seconds}


def machine(device: str = "cpu") -> str:
    import torch

    from bge_rerank_cli.cpuinfo import collect_cpu

    cpu = collect_cpu().name or "CPU"

    cap = torch.backends.cpu.get_cpu_capability()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = (
        f", {torch.cuda.get_device_name(0)}"
        if device.startswith("cuda") and torch.cuda.is_available()
        else ""
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM{gpu}, torch {torch.__version__} ({cap} kernels), "
        f"Python {platform.python_version()}"
    )


def flag_python(rebuild: bool = False, python_path: str | None = None) -> tuple[str | None, str]:
    """The Python of FlagEmbedding's own virtual environment, created on first use (it needs
    transformers <= 5.23, this project 5.24+). Returns (python, "") or (None, why not).

    ``python_path`` (``current`` for this interpreter) names a Python that already imports
    FlagEmbedding, e.g. on a machine without network; nothing is built then."""
    if python_path:
        given = sys.executable if python_path == "current" else python_path
        check = [given, "-c", "from FlagEmbedding import FlagReranker"]
        out = subprocess.run(check, capture_output=True, text=True)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["?"])[-1][:200]
            return None, f"FlagEmbedding does not import in {given}: {last}"
        return given, ""
    return peer_venv(
        FLAG_VENV, FLAG_REQUIREMENTS, "import FlagEmbedding, transformers", "FlagEmbedding", rebuild
    )


def peer_venv(
    venv: Path, requirements: list[str], probe_code: str, label: str, rebuild: bool = False
) -> tuple[str | None, str]:
    """The Python of a peer's own virtual environment (its pins clash with ours), created on first use:
    torch==2.13.0 first (the CPU build, before anything pulls CUDA), then ``requirements``; ready when
    ``probe_code`` runs. Returns (python, "") or (None, why not)."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", probe_code]
    if python.is_file() and not rebuild and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(python), ""
    print(f"creating {venv} for {label} (once; a few minutes) ...", file=sys.stderr)
    started = time.monotonic()
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "torch==2.13.0"],
        [str(python), "-m", "pip", "install", "-q", *requirements],
    ]
    for step in steps:
        out = subprocess.run(step, capture_output=True, text=True)
        if out.returncode != 0:
            lines = [x for x in out.stderr.strip().splitlines() if not x.startswith("WARNING: Location")]
            return None, f"`{' '.join(step[2:])}` failed: {(lines or ['?'])[-1][:200]}"
    out = subprocess.run(probe, capture_output=True, text=True)
    if out.returncode != 0:
        return (
            None,
            f"{label} does not import in its venv: {(out.stderr.strip().splitlines() or ['?'])[-1][:200]}",
        )
    print(f"{venv} ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return str(python), ""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="Scaled-down architecture (< 2 minutes).")
    parser.add_argument("--pairs", type=int, default=None, help="Workload size (default 48 quick, 64 full).")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="Every engine's batch size (their default)."
    )
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument(
        "--rounds", type=int, default=None, help="Interleaved rounds; best of (default 2 quick, 1 full)."
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda.")
    parser.add_argument("--engines", default=None, help="Comma-separated; default: the CPU or GPU set.")
    parser.add_argument("--no-flag", action="store_true", help="Skip FlagEmbedding (no venv built).")
    parser.add_argument(
        "--flag-python",
        help="Run FlagEmbedding with this Python ('current': this one) instead of building its venv.",
    )
    parser.add_argument(
        "--passage-tokens",
        type=_token_range,
        default=None,
        help="Passage lengths drawn uniformly from MIN-MAX words (one token each); default 20-1000 log-normal.",
    )
    parser.add_argument(
        "--repeats", type=float, default=0.1, help="Share of pairs that repeat an earlier pair (0.1)."
    )
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="Our engines' padded-token budget per forward pass (default batch size x max length).",
    )
    parser.add_argument(
        "--warmup",
        choices=("2", "full"),
        default="2",
        help="Untimed warm-up in each engine's process before its timed pass: 2 pairs (default), or the "
        "whole workload once (full: every batch shape's GPU kernels set up before the clock starts).",
    )
    parser.add_argument(
        "--progress", action="store_true", help="Print each engine's run to stderr as it ends."
    )
    parser.add_argument(
        "--reference-json",
        help="Take the reference scores and the peers' speed from this earlier --json run of the same "
        "workload (for engines run again with other settings, e.g. --batch-tokens).",
    )
    parser.add_argument(
        "--model-kind",
        choices=("cross-encoder", "qwen3", "gemma"),
        default="cross-encoder",
        help="qwen3: the Qwen3-Reranker-0.6B shape, 20 documents per query, against the model card's loop. "
        "gemma: a scaled-down bge-reranker-v2-gemma layout against FlagEmbedding's FlagLLMReranker.",
    )
    parser.add_argument(
        "--no-ceilings", action="store_true", help="Skip the GEMM ceilings (and the %% of ceiling column)."
    )
    parser.add_argument(
        "--gemm-tokens",
        type=int,
        default=None,
        help="Rows (tokens) of the ceilings' GEMM problem, tokens x hidden x ffn (default 512 CPU, 8192 GPU).",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="Also write the results (with every score) to this JSON file.")
    parser.add_argument("--no-write", action="store_true", help="Do not rewrite docs/benchmarks.md.")
    args = parser.parse_args()
    if args.worker == "prepare":  # export once, outside the measured processes (its RAM is not theirs)
        from bge_rerank_cli.backends.onnx_scorer import export, export_dir
        from bge_rerank_cli.config import LoaderConfig

        made = {}
        for quantize in args.pairs_file.split(","):
            config = LoaderConfig(
                model=args.model, backend="onnx", quantize=quantize, max_length=args.max_length,  # type: ignore[arg-type]
            )  # fmt: skip
            folder = export_dir(config)
            made[quantize] = not (folder / "meta.json").is_file()
            if made[quantize]:
                export(config, folder)
        print(json.dumps(made))
        return 0
    if args.worker:
        result = worker(
            args.worker,
            args.model,
            args.pairs_file,
            args.batch_size,
            args.max_length,
            args.device,
            args.batch_tokens,
            args.warmup,
            args.spawned_at,
        )
        print(json.dumps(result))
        return 0
    from bge_rerank_cli.ceilings import best_of, read_shape

    qwen3 = args.model_kind in ("qwen3", "gemma")  # decoder rerankers: rerank-shaped workloads
    n = args.pairs or (40 if qwen3 else 48 if args.quick else 64)
    rounds = args.rounds or (2 if args.quick else 1)
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.model_kind == "gemma":
        model = gemma_model_dir(args.quick)
    else:
        model = qwen3_model_dir(args.quick) if qwen3 else model_dir(args.quick)
    custom = args.passage_tokens is not None or args.repeats != 0.1
    tag = f"-{args.passage_tokens[0]}-{args.passage_tokens[1]}" if args.passage_tokens else ""
    tag += f"-r{args.repeats:g}" if args.repeats != 0.1 else ""
    pairs_file = CACHE / (f"queries-{n}{tag}.json" if qwen3 else f"workload-{n}{tag}.json")
    if qwen3:
        pairs_file.write_text(json.dumps(query_workload(n, passage_words=args.passage_tokens or (20, 300))))
    else:
        pairs_file.write_text(
            json.dumps(workload(n, passage_tokens=args.passage_tokens, repeats=args.repeats))
        )
    if custom:
        print(f"workload: {n} pairs in {pairs_file}", file=sys.stderr)
    default = (
        GEMMA_ENGINES if args.model_kind == "gemma" else QWEN3_ENGINES if qwen3
        else GPU_ENGINES if args.device.startswith("cuda") else ENGINES
    )  # fmt: skip
    engines = (args.engines or ",".join(default)).split(",")
    skipped: dict[str, str] = {}
    pythons = {e: sys.executable for e in engines}
    if any(e.startswith("flag-") for e in engines):
        flag, why = (None, "--no-flag") if args.no_flag else flag_python(python_path=args.flag_python)
        for e in [e for e in engines if e.startswith("flag-")]:
            if flag is None:
                skipped[e] = why
                engines.remove(e)
            else:
                pythons[e] = flag
    ceilings_before = [] if args.no_ceilings else measure_ceilings(model, engines, args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BGE_RERANK_CACHE": str(CACHE / "exports")}
    exports = [("int8" if e.endswith("int8") else "none") for e in engines if e.startswith("ours-onnx-")]
    export_memory = {q: prepare_export(model, q, args.max_length, env) for q in dict.fromkeys(exports)}
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for _ in range(rounds):
        for engine in engines:  # interleaved: one run of each engine per round, each a fresh process
            cmd = [pythons[engine], __file__, "--worker", engine, "--model", str(model)]
            cmd += ["--pairs-file", str(pairs_file), "--batch-size", str(args.batch_size)]
            cmd += ["--max-length", str(args.max_length), "--device", args.device]
            cmd += ["--warmup", args.warmup]
            if args.batch_tokens and engine.startswith("ours-"):
                cmd += ["--batch-tokens", str(args.batch_tokens)]
            started = time.perf_counter()
            out = subprocess.run(
                [*cmd, "--spawned-at", repr(time.time())], capture_output=True, text=True, env=env
            )
            if out.returncode != 0:
                skipped[engine] = (out.stderr.strip().splitlines() or ["failed"])[-1][:200]
                print(f"{engine} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            runs[engine].append(json.loads(out.stdout.strip().splitlines()[-1]))
            if args.progress:
                r = runs[engine][-1]
                warm = f", {r['warmup_seconds']:.2f} s untimed first pass" if "warmup_seconds" in r else ""
                print(
                    f"{engine}: {r['pairs'] / r['seconds']:.2f} pairs/s, {r['seconds']:.2f} s scoring{warm}, "
                    f"{time.perf_counter() - started:.0f} s with start-up",
                    file=sys.stderr,
                )
            if args.json:  # as it goes, so a run cut short still leaves what it measured
                Path(args.json).write_text(json.dumps({"report": None, "runs": runs, "skipped": skipped}))
    ceilings_after = [] if args.no_ceilings else measure_ceilings(model, engines, args)
    ceilings = best_of(ceilings_before, ceilings_after)
    best = {e: min(r, key=lambda x: x["seconds"]) for e, r in runs.items() if r}
    borrowed = _borrowed(args.reference_json, pairs_file.name, best) if args.reference_json else None
    limits = Limits(ceilings, ceilings_before, ceilings_after, read_shape(str(model)), export_memory)
    report = render(best, skipped, args, n, rounds, runs, borrowed, limits)
    print(report)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "report": report,
                    "workload": pairs_file.name,
                    "runs": runs,
                    "skipped": skipped,
                    "argv": sys.argv[1:],
                    **limits.to_json(),
                },
                indent=1,
            )
        )
    if not args.no_write:
        mode = ("quick" if args.quick else "full") + ("-gpu" if args.device.startswith("cuda") else "")
        mode = f"{args.model_kind}-{mode}" if qwen3 else mode
        _write_doc(mode, report, " ".join(sys.argv[1:]))
    return 0


def whole_process_table(
    best: dict[str, dict], peers: dict[str, dict | None], peer_names: dict[str, str]
) -> list[str]:
    """Whole processes, as a user waits for them: from the process's start to its model loaded, to its first
    score (a 2-pair call), and to every pair scored (that first call included), with the ratio of each
    peer's whole-process time to this engine's (above 1: this engine finished sooner)."""
    timed = {e: r["whole"] for e, r in best.items() if "whole" in r}
    if not timed:
        return []
    names = [p for p in peer_names if peers[p] is not None and "whole" in peers[p]]  # type: ignore[operator]
    cols = "".join(f" × {peer_names[p]} (whole) |" for p in names)
    lines = [
        "\nwhole process (cold start → model loaded → first score → all pairs scored), seconds:\n",
        f"| engine | loaded | first score | all pairs |{cols}",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for engine, w in timed.items():
        ratios = "".join(f" {peers[p]['whole']['whole_s'] / w['whole_s']:.2f} |" for p in names)  # type: ignore[index]
        lines.append(
            f"| {engine} | {w['load_s']:.1f} | {w['first_score_s']:.1f} | {w['whole_s']:.1f} |{ratios}"
        )
    return lines


def render(
    best: dict[str, dict],
    skipped: dict[str, str],
    args: argparse.Namespace,
    n: int,
    rounds: int,
    runs: dict[str, list[dict]] | None = None,
    borrowed: dict[str, dict] | None = None,
    limits: Limits | None = None,
) -> str:
    """A markdown table: speed, % of the matching GEMM ceiling, padding, memory, ratios to each peer, and
    the score deviation.

    ``borrowed`` runs (of an earlier process on the same workload) serve as reference and peers only."""
    from bge_rerank_cli.ceilings import percent_for

    limits = limits or Limits()
    with_pct = bool(limits.ceilings and limits.shape)
    pool = {**(borrowed or {}), **best}
    model_kind = getattr(args, "model_kind", "cross-encoder")
    qwen3 = model_kind in ("qwen3", "gemma")
    reference = {"qwen3": QWEN3_REFERENCE, "gemma": GEMMA_REFERENCE}.get(model_kind, REFERENCE)
    ref = pool.get(reference) or next((r for e, r in pool.items() if e.startswith("st-")), None)
    own_peers = {"qwen3": {"ref": "qwen3-reference"}, "gemma": {"flag": "flag-llm"}}.get(model_kind, PEERS)
    peers = {
        name: max((r for e, r in pool.items() if e.startswith(prefix)), key=lambda r: r["pairs"] / r["seconds"], default=None)
        for name, prefix in own_peers.items()
    }  # fmt: skip
    peer_names = {name: peer["engine"] for name, peer in peers.items() if peer}
    cols = "".join(f" × {peer_names[p]} |" for p in peer_names)
    pct_col = " % of ceiling |" if with_pct else ""
    lines = [
        f"| engine | pairs/s | tokens/s |{pct_col} padding | peak RSS MB | peak GPU MB |{cols} max abs Δscore vs {ref['engine'] if ref else '-'} |",
        "|---|---|---|---|---|---|" + "---|" * (len(peer_names) + with_pct) + "---|",
    ]
    for engine, r in best.items():
        rate = r["pairs"] / r["seconds"]
        ratios = "".join(
            f" {rate / (peers[p]['pairs'] / peers[p]['seconds']):.2f} |"
            for p in peer_names  # type: ignore[index]
        )
        delta = (
            max(abs(a - b) for a, b in zip(r["scores"], ref["scores"], strict=True)) if ref else float("nan")
        )
        gpu = "-" if r.get("peak_gpu_mb") is None else f"{r['peak_gpu_mb']:.0f}"
        pct = ""
        if with_pct:
            share = (
                percent_for(engine, r["tokens"] / r["seconds"], limits.shape.flops_per_token(r["attention_length"]), limits.ceilings)
                if "attention_length" in r
                else None
            )  # fmt: skip
            pct = " - |" if share is None else f" {share:.0f}% |"
        lines.append(
            f"| {engine} | {rate:.2f} | {r['tokens'] / r['seconds']:.0f} |{pct} {r['padding']:.0%} | "
            f"{r['peak_rss_mb']:.0f} | {gpu} |{ratios} {delta:.2e} |"
        )
    for engine, why in skipped.items():
        lines.append(f"| {engine} | not run: {why} |" + " |" * (5 + len(peer_names) + with_pct))
    lines += whole_process_table(best, peers, peer_names)
    per_round = "; ".join(
        f"{e} " + ", ".join(f"{r['pairs'] / r['seconds']:.2f}" for r in rs)
        for e, rs in (runs or {}).items()
        if rs
    )
    if per_round:
        lines.append(f"\npairs/s per round: {per_round}")
    if borrowed:
        lines.append(f"\nreference and peers from {args.reference_json}: {', '.join(borrowed)}")
    if args.device.startswith("cuda"):
        notes = [
            f"{e}: attention {r.get('attention')}"
            + (f", batch tokens {r['batch_tokens']}" if r.get("batch_tokens") else "")
            + (f", {r['fp32_fallbacks']} fp32 fallback batch(es)" if r.get("fp32_fallbacks") else "")
            + (f", untimed first pass {r['warmup_seconds']:.2f} s" if "warmup_seconds" in r else "")
            for e, r in best.items()
        ]
        lines.append("\n" + "; ".join(notes))
    shape = (
        "scaled-down XLM-R (4 layers, hidden 256)" if args.quick else "bge-reranker-v2-m3 architecture (568M)"
    )
    if qwen3:
        shape = (
            "scaled-down Qwen3 (4 layers, hidden 256)" if args.quick else "Qwen3-Reranker-0.6B architecture"
        )
        runs_of = [r for r in best.values() if "prefix_runs" in r]
        if runs_of:
            lines.append("\nprefix passes (one per query when reused): " + ", ".join(
                f"{r['engine']} {r['prefix_runs']}" for r in runs_of))  # fmt: skip
    passages = getattr(args, "passage_tokens", None)
    repeats = getattr(args, "repeats", 0.1)
    kind = f"pairs, passages {passages[0]}-{passages[1]} tokens" if passages else "mixed-length pairs"
    if qwen3:
        lo, hi = passages or (20, 300)
        kind = f"pairs, 20 documents per query, passages {lo}-{hi} words, the prompt's tokens counted"
    share = f"~{repeats:.0%} repeated" if repeats and not qwen3 else "none repeated"
    budget = getattr(args, "batch_tokens", None)
    batch = f"batch size {args.batch_size}" + (f" (ours: {budget} batch tokens)" if budget else "")
    warm = (
        ", each timed after an untimed pass over the whole workload"
        if getattr(args, "warmup", "2") == "full"
        else ""
    )
    header = (
        f"{shape}, random weights; {n} {kind} ({share}), {batch}, "
        f"max length {args.max_length}, device {args.device}, best of {rounds} interleaved round(s){warm}\n"
        f"{machine(args.device)}\n\n{limits_text(limits, best)}"
    )
    return header + "\n\n" + "\n".join(lines)


def limits_text(limits: Limits, best: dict[str, dict]) -> str:
    """The ISA flags, each ceiling (best of before and after the engines, both shown), how % of ceiling
    is counted, and each ONNX export's peak memory: markdown lines under the report's header."""
    from bge_rerank_cli.ceilings import ceiling_lines, isa_flags, isa_line

    lines = [isa_line(isa_flags()), *ceiling_lines(limits.before, limits.after)]
    if limits.ceilings and limits.shape:
        s = limits.shape
        lengths = [r["attention_length"] for r in best.values() if "attention_length" in r]
        at = f"; {s.flops_per_token(lengths[0]) / 1e9:.3f} GFLOP per token here" if lengths else ""
        lines.append(
            f"% of ceiling: tokens/s x FLOPs per token / the matching ceiling. FLOPs per token "
            f"{s.linear_flops() / 1e9:.3f} G (projections and FFN) + 4·n·{s.hidden}·{s.layers} "
            f"(attention, n = the pairs' token-weighted mean length, Σn²/Σn){at}"
        )
    gib = 2**30
    for quantize, e in limits.exports.items():
        name = "int8" if quantize == "int8" else "fp32"
        if e["cached"]:
            lines.append(f"ONNX export {name}: cached from an earlier run (not measured)")
            continue
        ratio = e["peak_rss_bytes"] / e["weights_bytes"] if e["weights_bytes"] else float("nan")
        lines.append(
            f"ONNX export {name} (once, in its own process): peak RSS {e['peak_rss_bytes'] / gib:.2f} GiB, "
            f"{ratio:.2f}x the {e['weights_bytes'] / gib:.2f} GiB of weights, {e['seconds']:.0f} s"
        )
    return "\n".join(f"- {line}" for line in lines)


def _borrowed(path: str, workload_name: str, best: dict[str, dict]) -> dict[str, dict]:
    """The best run of each engine in an earlier --json file of the same workload, less those run now."""
    data = json.loads(Path(path).read_text())
    if data.get("workload") != workload_name:
        raise SystemExit(f"{path} measured {data.get('workload')}, not {workload_name}")
    return {e: min(rs, key=lambda x: x["seconds"]) for e, rs in data["runs"].items() if rs and e not in best}


def _token_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        pair = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX, got {text!r}") from None
    if not 1 <= pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return pair


def _write_doc(mode: str, report: str, argv: str) -> None:
    write_section(mode, f"{mode} run: `python bench/speed.py {argv}`", report)


def write_section(mode: str, title: str, report: str) -> None:
    """Put ``report`` under ``title`` in docs/benchmarks.md, replacing the section the same ``mode`` wrote
    before (between its start and end markers), or appending it."""
    doc = ROOT / "docs" / "benchmarks.md"
    doc.parent.mkdir(exist_ok=True)
    text = (
        doc.read_text()
        if doc.is_file()
        else "# Benchmarks\n\nWritten by the scripts in `bench/`; each section is replaced by the run that produced it.\n"
    )
    start, end = f"<!-- {mode}:start -->", f"<!-- {mode}:end -->"
    section = f"{start}\n## {title}\n\n{report}\n{end}"
    if start in text:
        head, _, rest = text.partition(start)
        text = head + section + rest.partition(end)[2]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
