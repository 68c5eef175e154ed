"""Everything doctor looks at, gathered once into plain data. Checks are pure functions of this.

Collection never raises: a part that cannot be read records why, and the checks report it.
Optional packages are inspected through their metadata, never imported (TensorFlow, the extras' packages).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ..config import LoaderConfig
from ..cpuinfo import CpuInfo, collect_cpu
from ..hub import Reachability, hub_offline, probe_hub
from ..memory import available_bytes


@dataclass(frozen=True)
class Extra:
    """An optional extra of pyproject.toml as doctor reports it: installed when one of ``packages`` is
    (alternatives: its version stands for the extra's), and what it is for."""

    name: str
    packages: tuple[str, ...]
    used_by: str

    @property
    def install(self) -> str:
        return f"pip install 'bge-rerank-cli[{self.name}]'"


# The extras of pyproject.toml's [project.optional-dependencies] (less dev) that doctor reports.
EXTRAS = (
    Extra("onnx", ("onnxruntime", "onnxruntime-gpu"), "--backend onnx"),
    Extra("ray", ("ray",), "--engine ray and serve --ray"),
    Extra("serve", ("fastapi",), "bge-rerank serve"),
    Extra("otel", ("opentelemetry-sdk",), "serve --otlp-endpoint"),
    Extra("plot", ("matplotlib",), "eval --plot and bench --plot"),
    Extra("cache", ("redis",), "--score-cache redis://"),
)
PACKAGES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "tokenizers",
    "huggingface-hub",
    "numpy",
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-macos",
    "tf-nightly",
    "keras",
    "tf-keras",
    *(package for extra in EXTRAS for package in extra.packages),
    "bge-rerank-cli",
)
# Whose declared requirements we verify against what is installed.
REQUIRERS = ("bge-rerank-cli", "sentence-transformers", "transformers", "tokenizers")
ENV_VARS = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "XDG_CACHE_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_ENDPOINT",
    "USE_TF",
    "USE_TORCH",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "BGE_RERANK_MODEL",
    "RAY_ADDRESS",
)
# bge-reranker-v2-m3: XLM-RoBERTa-large shape, fp32 weights on the Hub.
KNOWN_SHAPES = {
    "BAAI/bge-reranker-v2-m3": {"params": 567_755_777, "hidden": 1024, "layers": 24, "heads": 16},
    # decoder rerankers (their published configs; parameters with tied embeddings counted once)
    "Qwen/Qwen3-Reranker-0.6B": {"params": 595_776_512, "hidden": 1024, "layers": 28, "heads": 16},
    "Qwen/Qwen3-Reranker-4B": {"params": 4_021_784_576, "hidden": 2560, "layers": 36, "heads": 32},
    "Qwen/Qwen3-Reranker-8B": {"params": 8_188_548_096, "hidden": 4096, "layers": 36, "heads": 32},
    "BAAI/bge-reranker-v2-gemma": {"params": 2_506_172_416, "hidden": 2048, "layers": 18, "heads": 8},
}
# What a model is, for ids whose config.json is not on disk yet: (architecture, model_type).
KNOWN_KINDS = {
    "BAAI/bge-reranker-v2-m3": ("XLMRobertaForSequenceClassification", "xlm-roberta"),
    "Qwen/Qwen3-Reranker-0.6B": ("Qwen3ForCausalLM", "qwen3"),
    "Qwen/Qwen3-Reranker-4B": ("Qwen3ForCausalLM", "qwen3"),
    "Qwen/Qwen3-Reranker-8B": ("Qwen3ForCausalLM", "qwen3"),
    "BAAI/bge-reranker-v2-gemma": ("GemmaForCausalLM", "gemma"),
    "mixedbread-ai/mxbai-rerank-base-v2": ("Qwen2ForCausalLM", "qwen2"),
    "mixedbread-ai/mxbai-rerank-large-v2": ("Qwen2ForCausalLM", "qwen2"),
}


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    capability: tuple[int, int]
    total_bytes: int
    free_bytes: int
    bf16: bool


@dataclass(frozen=True)
class TorchInfo:
    version: str | None = None
    import_error: str | None = None
    cuda_build: str | None = None
    cuda_available: bool = False
    cuda_error: str | None = None
    gpus: tuple[GpuInfo, ...] = ()
    mps_built: bool = False
    mps_available: bool = False
    threads: int = 0
    cpu_capability: str = ""  # the kernels torch dispatches to: DEFAULT, AVX2, AVX512, ...
    cpu_bf16: bool = False  # oneDNN reports hardware bf16 support


@dataclass(frozen=True)
class CacheInfo:
    path: str
    source: str  # how it was chosen
    exists: bool = False
    writable: bool = False
    writable_error: str | None = None
    free_bytes: int | None = None


@dataclass(frozen=True)
class ModelFiles:
    """What the cache (or a local directory) holds for the selected model."""

    model: str
    local_dir: bool = False
    present: bool = False
    snapshot: str | None = None
    files: tuple[str, ...] = ()
    incomplete: tuple[str, ...] = ()  # partial blobs of an interrupted download
    broken_links: tuple[str, ...] = ()
    size_bytes: int = 0
    shape: dict[str, int] = field(default_factory=dict)  # params/hidden/layers/heads when known
    architecture: str = ""  # from config.json (or KNOWN_KINDS): what kind of reranker it is
    model_type: str = ""


@dataclass(frozen=True)
class ModelCheck:
    load_s: float = 0.0
    latency_s: float = 0.0
    error: str | None = None
    device: str = ""
    dtype: str = ""
    hint: str | None = None  # what the error says to do (settings named with errors.option())
    template: str = ""  # how pairs became model input (cross-encoder, qwen3-reranker, bge-gemma)


@dataclass(frozen=True)
class Snapshot:
    config: LoaderConfig
    python: str
    platform: str
    packages: dict[str, str | None]
    unmet: tuple[str, ...]
    env: dict[str, str]
    cache: CacheInfo
    model: ModelFiles
    hub: Reachability | None
    torch: TorchInfo
    cpu: CpuInfo
    nvidia_driver: str | None = None
    model_check: ModelCheck | None = None
    ray_cluster: str | None = None  # what a probe of RAY_ADDRESS found; None when unset
    memory_available: int | None = None  # bytes: MemAvailable, capped by a cgroup limit (memory.py)

    @property
    def offline(self) -> bool:
        truthy = {"1", "true", "yes", "on"}
        return self.config.offline or any(
            self.env.get(k, "").strip().lower() in truthy for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
        )


def resolve_cache(env: dict[str, str], explicit: str | None, home: str) -> tuple[str, str]:
    """The hub cache directory and how it was chosen, by huggingface_hub's own precedence."""
    if explicit:
        return str(Path(explicit).expanduser()), "--cache-dir"
    if env.get("HF_HUB_CACHE"):
        return str(Path(env["HF_HUB_CACHE"]).expanduser()), "HF_HUB_CACHE"
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return str(Path(env["HUGGINGFACE_HUB_CACHE"]).expanduser()), "HUGGINGFACE_HUB_CACHE (legacy name)"
    if env.get("HF_HOME"):
        return str(Path(env["HF_HOME"]).expanduser() / "hub"), "HF_HOME/hub"
    if env.get("XDG_CACHE_HOME"):
        return str(Path(env["XDG_CACHE_HOME"]) / "huggingface" / "hub"), "XDG_CACHE_HOME/huggingface/hub"
    return str(Path(home) / ".cache" / "huggingface" / "hub"), "default (~/.cache/huggingface/hub)"


def collect(
    config: LoaderConfig, *, probe_network: bool = True, check_model: bool = False, timeout: float = 3.0
) -> Snapshot:
    env = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
    cache_path, source = resolve_cache(env, config.cache_dir, str(Path.home()))
    offline = config.offline or hub_offline()
    model = model_files(config, cache_path)
    hub = None if offline or not probe_network else probe_hub(timeout)
    torch_info = collect_torch()
    return Snapshot(
        config=config,
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.release()} {platform.machine()}",
        packages={name: _version(name) for name in PACKAGES},
        unmet=unmet_requirements(),
        env=env,
        cache=cache_info(cache_path, source),
        model=model,
        hub=hub,
        torch=torch_info,
        cpu=collect_cpu(),
        nvidia_driver=nvidia_driver(),
        model_check=run_model_check(config) if check_model else None,
        ray_cluster=probe_ray(env.get("RAY_ADDRESS"), timeout) if probe_network else None,
        memory_available=available_bytes(),
    )


def probe_ray(address: str | None, timeout: float) -> str | None:
    """Whether the Ray cluster in RAY_ADDRESS answers on its port, without importing Ray."""
    import socket

    if not address:
        return None
    if address == "auto":
        return "RAY_ADDRESS=auto: joins the cluster started on this machine with `ray start`"
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return f"{address} is reachable"
    except (OSError, ValueError) as exc:
        return f"{address} is not reachable ({exc})"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def unmet_requirements() -> tuple[str, ...]:
    """Declared requirements of our key packages that the installed versions do not satisfy."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return ()
    problems = []
    for requirer in REQUIRERS:
        try:
            declared = metadata.requires(requirer) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in declared:
            try:
                req = Requirement(spec)
            except Exception:
                continue
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            installed = _version(req.name)
            if (
                installed is not None
                and req.specifier
                and not req.specifier.contains(installed, prereleases=True)
            ):
                problems.append(f"{requirer} needs {req.name}{req.specifier}, but {installed} is installed")
    return tuple(problems)


def cache_info(path: str, source: str) -> CacheInfo:
    target = Path(path)
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    writable, error = True, None
    try:
        if target.exists():
            with tempfile.NamedTemporaryFile(dir=target, prefix=".bge-rerank-doctor-"):
                pass
        elif not os.access(existing, os.W_OK):
            writable, error = False, f"cannot create it: {existing} is not writable"
    except OSError as exc:
        writable, error = False, f"{exc.strerror or exc}"
    free = None
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(existing).free
    return CacheInfo(path, source, target.exists(), writable, error, free)


def model_files(config: LoaderConfig, cache_path: str) -> ModelFiles:
    local = Path(config.model).expanduser()
    if local.is_dir():
        names = tuple(sorted(p.name for p in local.iterdir()))
        total = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        return ModelFiles(
            config.model, True, True, str(local), names, (), (), total, _shape(local, config.model),
            *_kind(local, config.model),
        )  # fmt: skip
    repo = Path(cache_path) / ("models--" + config.model.replace("/", "--"))
    if not repo.is_dir():
        return ModelFiles(config.model, shape=KNOWN_SHAPES.get(config.model, {}), architecture=KNOWN_KINDS.get(
            config.model, ("", ""))[0], model_type=KNOWN_KINDS.get(config.model, ("", ""))[1])  # fmt: skip
    incomplete = tuple(sorted(p.name for p in (repo / "blobs").glob("*.incomplete")))
    revision = config.revision or "main"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    files: tuple[str, ...] = ()
    broken: tuple[str, ...] = ()
    size = 0
    if snapshot.is_dir():
        entries = [p for p in snapshot.rglob("*") if p.is_symlink() or p.is_file()]
        files = tuple(sorted(str(p.relative_to(snapshot)) for p in entries if p.exists()))
        broken = tuple(sorted(str(p.relative_to(snapshot)) for p in entries if not p.exists()))
        size = sum(p.stat().st_size for p in entries if p.exists())
    return ModelFiles(
        config.model,
        False,
        True,
        str(snapshot) if snapshot.is_dir() else None,
        files,
        incomplete,
        broken,
        size,
        _shape(snapshot, config.model),
        *_kind(snapshot, config.model),
    )


def _kind(folder: Path, model: str) -> tuple[str, str]:
    """(architecture, model_type) from the model's config.json, else from what we know of its id."""
    known = KNOWN_KINDS.get(model, ("", ""))
    try:
        import orjson

        cfg = orjson.loads((folder / "config.json").read_bytes())
    except (OSError, ValueError):
        return known
    architectures = cfg.get("architectures") or []
    return (str(architectures[0]) if architectures else known[0]), str(cfg.get("model_type") or known[1])


def _shape(folder: Path, model: str) -> dict[str, int]:
    known = dict(KNOWN_SHAPES.get(model, {}))
    config_file = folder / "config.json"
    if config_file.is_file():
        try:
            import orjson

            cfg = orjson.loads(config_file.read_bytes())
            known.update(
                {
                    k: int(cfg[c])
                    for k, c in (
                        ("hidden", "hidden_size"),
                        ("layers", "num_hidden_layers"),
                        ("heads", "num_attention_heads"),
                    )
                    if isinstance(cfg.get(c), int)
                }
            )
        except (OSError, ValueError):
            pass
    params = safetensors_params(folder)
    if params:
        known["params"] = params
    return known


def safetensors_params(folder: Path) -> int:
    """Parameters in a folder's ``*.safetensors`` files, from their headers alone (no weights read);
    tied tensors are stored once, so this is what loading takes. 0 when there are none."""
    import struct

    import orjson

    total = 0
    for path in folder.glob("*.safetensors"):
        try:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = orjson.loads(f.read(length))
        except (OSError, ValueError, struct.error):
            return 0
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor.get("shape", []):
                    count *= int(dim)
                total += count
    return total


def collect_torch() -> TorchInfo:
    try:
        import torch
    except Exception as exc:  # a broken install raises all sorts
        return TorchInfo(import_error=f"{type(exc).__name__}: {exc}"[:300])
    gpus: list[GpuInfo] = []
    cuda_error = None
    available = False
    try:
        available = bool(torch.cuda.is_available())
        for i in range(torch.cuda.device_count() if available else 0):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            gpus.append(
                GpuInfo(i, props.name, (props.major, props.minor), int(total), int(free), props.major >= 8)
            )
    except Exception as exc:
        cuda_error = f"{type(exc).__name__}: {exc}"[:300]
    mps = getattr(torch.backends, "mps", None)
    return TorchInfo(
        version=torch.__version__,
        cuda_build=torch.version.cuda,
        cuda_available=available,
        cuda_error=cuda_error,
        gpus=tuple(gpus),
        mps_built=bool(mps is not None and mps.is_built()),
        mps_available=bool(mps is not None and mps.is_available()),
        threads=torch.get_num_threads(),
        cpu_capability=_safe(lambda: str(torch.backends.cpu.get_cpu_capability()), ""),
        cpu_bf16=_safe(lambda: bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), False),
    )


def _safe(read: Any, default: Any) -> Any:
    try:
        return read()
    except Exception:
        return default


def nvidia_driver() -> str | None:
    proc = Path("/proc/driver/nvidia/version")
    if proc.is_file():
        try:
            first = proc.read_text().splitlines()[0]
            return " ".join(first.split()[:8])
        except (OSError, IndexError):
            pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if out.returncode == 0 and out.stdout.strip():
                return "driver " + out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return None


def run_model_check(config: LoaderConfig) -> ModelCheck:
    from ..backends import load_scorer
    from ..engine import score_pairs
    from ..errors import BgeRerankError
    from ..records import Pair

    try:
        started = time.perf_counter()
        scorer = load_scorer(config)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        score_pairs(scorer, [Pair("what is deep learning?", "Deep learning trains neural networks.")])
        info: dict[str, Any] = scorer.describe()
        return ModelCheck(load_s, time.perf_counter() - started, None, info["device"], info["dtype"],
                          template=info.get("template", "cross-encoder"))  # fmt: skip
    except BgeRerankError as exc:
        return ModelCheck(error=exc.message, hint=exc.hint)
    except Exception as exc:
        return ModelCheck(error=f"{type(exc).__name__}: {exc}"[:400])
