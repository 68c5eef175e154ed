"""Doctor's checks: pure functions from a :class:`Snapshot` to a :class:`CheckResult`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..hub import download_command, missing_essentials
from ..memory import human_bytes as size
from .snapshot import EXTRAS, Snapshot

Status = Literal["ok", "warn", "fail"]
GB = 1024**3


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    finding: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def _major_minor(version: str | None) -> tuple[int, int]:
    if not version:
        return (0, 0)
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except ValueError:
        return (0, 0)


def check_python(s: Snapshot) -> CheckResult:
    ok = _major_minor(s.python) >= (3, 10)
    return CheckResult(
        "python",
        "ok" if ok else "fail",
        f"Python {s.python} on {s.platform}",
        "" if ok else "bge-rerank needs Python 3.10 or newer.",
    )


CORE = ("torch", "transformers", "sentence-transformers", "tokenizers", "huggingface-hub", "numpy")


def check_versions(s: Snapshot) -> CheckResult:
    versions = {name: s.packages.get(name) for name in CORE}
    listing = ", ".join(f"{k} {v or 'MISSING'}" for k, v in versions.items())
    missing = [k for k, v in versions.items() if v is None]
    if missing:
        return CheckResult(
            "versions",
            "fail",
            listing,
            f"Install the missing packages: pip install {' '.join(missing)}",
            versions,
        )
    problems = list(s.unmet)
    if _major_minor(versions["numpy"]) >= (2, 0) and _major_minor(versions["torch"]) < (2, 3):
        problems.append(
            f"torch {versions['torch']} was built against NumPy 1.x and breaks with numpy {versions['numpy']}"
        )
    if problems:
        return CheckResult(
            "versions",
            "fail",
            f"{listing}. Incompatible: " + "; ".join(problems),
            "Reinstall in a fresh environment: pip install torch==2.13.0 && pip install -e . "
            "(or pin the versions the messages name).",
            {**versions, "problems": problems},
        )
    return CheckResult("versions", "ok", listing, "", versions)


TF_PACKAGES = ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly")


def check_tensorflow(s: Snapshot) -> CheckResult:
    tf = next((f"{name} {s.packages[name]}" for name in TF_PACKAGES if s.packages.get(name)), None)
    keras, tf_keras = s.packages.get("keras"), s.packages.get("tf-keras")
    if tf is None:
        return CheckResult(
            "tensorflow-keras", "ok", "TensorFlow is not installed: no Keras conflict possible."
        )
    transformers = s.packages.get("transformers")
    if transformers and _major_minor(transformers)[0] >= 5:
        return CheckResult(
            "tensorflow-keras",
            "ok",
            f"{tf} is installed, but transformers {transformers} contains no TensorFlow code, so the Keras 3 "
            "conflict (\"No module named 'keras.src'\") cannot arise through it (that is a transformers 4.x story).",
        )
    use_tf = s.env.get("USE_TF", "").strip().lower()
    if use_tf in ("0", "false", "no", "off"):
        return CheckResult(
            "tensorflow-keras",
            "ok",
            f"{tf} with Keras {keras or 'not installed'}: USE_TF={s.env['USE_TF']} is set, so transformers "
            f"{transformers or ''} does not import TensorFlow in this environment.".replace("  ", " "),
        )
    if _major_minor(keras)[0] >= 3 and not tf_keras:
        return CheckResult(
            "tensorflow-keras",
            "warn",
            f"{tf} with Keras {keras} and no tf-keras: other tools that let transformers import TensorFlow crash "
            'with "No module named \'keras.src\'" / "Your currently installed version of Keras is Keras 3". '
            "bge-rerank itself never imports TensorFlow (it sets USE_TF=0 before loading transformers).",
            "pip install tf-keras, or pip uninstall tensorflow if you do not use it, or export USE_TF=0 for other tools.",
            {"tensorflow": tf, "keras": keras, "tf_keras": tf_keras},
        )
    return CheckResult(
        "tensorflow-keras",
        "ok",
        f"{tf}, Keras {keras or 'not installed'}, tf-keras {tf_keras or 'not installed'}: compatible. "
        "bge-rerank does not import TensorFlow.",
    )


def check_cache_location(s: Snapshot) -> CheckResult:
    c = s.cache
    finding = f"{c.path} (chosen by {c.source})"
    if "TRANSFORMERS_CACHE" in s.env:
        return CheckResult(
            "cache-location",
            "warn",
            f"{finding}; TRANSFORMERS_CACHE={s.env['TRANSFORMERS_CACHE']} is set, which current transformers and "
            "huggingface_hub ignore, so models may be downloaded again into another folder.",
            "Replace it: export HF_HUB_CACHE=<that folder> (or HF_HOME=<parent>), then unset TRANSFORMERS_CACHE.",
            {"path": c.path, "source": c.source},
        )
    return CheckResult("cache-location", "ok", finding, "", {"path": c.path, "source": c.source})


def check_cache_writable(s: Snapshot) -> CheckResult:
    c = s.cache
    if c.writable:
        state = "exists and is writable" if c.exists else "will be created on first download"
        return CheckResult("cache-writable", "ok", f"{c.path} {state}.")
    status: Status = "warn" if s.model.local_dir or _model_complete(s) else "fail"
    return CheckResult(
        "cache-writable",
        status,
        f"{c.path} is not writable ({c.writable_error}): downloads cannot be saved.",
        "Point HF_HUB_CACHE (or --cache-dir) at a writable folder, or fix the folder's permissions.",
    )


def model_bytes(s: Snapshot) -> int | None:
    if s.model.size_bytes:
        return s.model.size_bytes
    params = s.model.shape.get("params")
    return params * 4 if params else None


def check_disk_space(s: Snapshot) -> CheckResult:
    free = s.cache.free_bytes
    if free is None:
        return CheckResult("disk-space", "warn", f"could not read free space at {s.cache.path}.")
    if s.model.local_dir or _model_complete(s):
        return CheckResult("disk-space", "ok", f"{free / GB:.1f} GiB free; the model is already on disk.")
    need = model_bytes(s)
    if need is None:
        return CheckResult("disk-space", "ok", f"{free / GB:.1f} GiB free (size of {s.model.model} unknown).")
    if free < need * 1.1:
        return CheckResult(
            "disk-space",
            "fail",
            f"{free / GB:.1f} GiB free at {s.cache.path}, the download needs about {need / GB:.1f} GiB.",
            "Free some space or point HF_HUB_CACHE at a larger disk.",
        )
    return CheckResult(
        "disk-space", "ok", f"{free / GB:.1f} GiB free; the download needs about {need / GB:.1f} GiB."
    )


def _model_complete(s: Snapshot) -> bool:
    m = s.model
    return (
        m.present
        and bool(m.snapshot)
        and not m.incomplete
        and not m.broken_links
        and not missing_essentials(m.files)
    )


def _download(s: Snapshot) -> str:
    return download_command(s.model.model, s.config.revision, s.config.cache_dir)


def check_model_files(s: Snapshot) -> CheckResult:
    m = s.model
    name = "model-files"
    if m.local_dir:
        missing = missing_essentials(m.files)
        if missing:
            return CheckResult(
                name, "fail", f"local directory {m.model} lacks {', '.join(missing)}.",
                "Save the model completely (model.save_pretrained and tokenizer.save_pretrained).",
            )  # fmt: skip
        return CheckResult(
            name, "ok", f"local directory {m.model}: {len(m.files)} files, {size(m.size_bytes)}."
        )
    if m.incomplete:
        return CheckResult(
            name,
            "fail",
            f"{m.model}: interrupted download in {s.cache.path} ({len(m.incomplete)} partial file(s) *.incomplete).",
            f"Resume it with `{_download(s)}`, or delete the models--{m.model.replace('/', '--')} folder and retry.",
            {"incomplete": list(m.incomplete)},
        )
    if m.broken_links:
        return CheckResult(
            name,
            "fail",
            f"{m.model}: cached snapshot has broken links ({', '.join(m.broken_links[:3])}): its blobs were deleted.",
            f"Re-download with `{_download(s)}`.",
        )
    if not m.present or not m.snapshot:
        reachable = s.hub is not None and s.hub.ok
        status: Status = "warn" if reachable and not s.offline else "fail"
        why = (
            "offline mode is on"
            if s.offline
            else ("the Hub is reachable" if reachable else "the Hub is unreachable")
        )
        fix = (
            "It will be downloaded on first use."
            if status == "warn"
            else f"Run `{_download(s)}` where the Hub is reachable (or copy the cache folder here), or use --model DIR."
        )
        return CheckResult(name, status, f"{m.model} is not in the cache {s.cache.path}; {why}.", fix)
    missing = missing_essentials(m.files)
    if missing:
        return CheckResult(
            name,
            "fail",
            f"{m.model}: cached snapshot lacks {', '.join(missing)}.",
            f"Re-download with `{_download(s)}`.",
        )
    return CheckResult(name, "ok", f"{m.model} is completely in the cache ({size(m.size_bytes)}).")


def check_offline(s: Snapshot) -> CheckResult:
    switches = [k for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if k in s.env]
    flags = ([f"{k}={s.env[k]}" for k in switches]) + (["--offline"] if s.config.offline else [])
    if not s.offline:
        return CheckResult("offline-mode", "ok", "off: models missing from the cache are downloaded.")
    if s.model.local_dir or _model_complete(s):
        return CheckResult("offline-mode", "ok", f"on ({', '.join(flags)}): the model is available locally.")
    return CheckResult(
        "offline-mode",
        "fail",
        f"on ({', '.join(flags)}) and {s.model.model} is not completely cached: it cannot be loaded.",
        f"Unset {' and '.join(switches) or '--offline'} to download, or run `{_download(s)}` first.",
    )


def check_hub(s: Snapshot) -> CheckResult:
    if s.model.local_dir:
        return CheckResult("hub", "ok", "not needed: the model is a local directory.")
    if s.hub is None:
        return CheckResult("hub", "ok", "not probed (offline mode).")
    if s.hub.ok:
        return CheckResult("hub", "ok", s.hub.detail)
    if _model_complete(s):
        return CheckResult(
            "hub", "warn", f"{s.hub.detail}; the model is cached, so it still loads.",
            "Nothing needed; set HF_HUB_OFFLINE=1 to skip network checks.",
        )  # fmt: skip
    return CheckResult(
        "hub",
        "fail",
        f"{s.hub.detail}, and {s.model.model} is not cached.",
        "Check network/proxy settings (HTTPS_PROXY, HF_ENDPOINT) or copy the model in and use --model DIR.",
    )


def check_torch(s: Snapshot) -> CheckResult:
    t = s.torch
    if t.import_error:
        return CheckResult(
            "torch",
            "fail",
            f"torch does not import: {t.import_error}",
            "Reinstall it: pip install torch==2.13.0",
        )
    build = f"CUDA {t.cuda_build}" if t.cuda_build else "CPU-only build"
    return CheckResult("torch", "ok", f"torch {t.version}, {build}, {t.threads} CPU threads.")


def check_cuda(s: Snapshot) -> CheckResult:
    t = s.torch
    wants_cuda = s.config.device.startswith("cuda")
    if t.import_error:
        return CheckResult("cuda", "fail" if wants_cuda else "warn", "unknown: torch does not import.")
    if t.cuda_error:
        return CheckResult(
            "cuda", "fail", f"CUDA initialisation failed: {t.cuda_error}",
            "Check the driver (nvidia-smi) matches the torch CUDA build; see CUDA_VISIBLE_DEVICES.",
        )  # fmt: skip
    if not t.cuda_build:
        fix = "Install a CUDA build of torch that matches your driver (pytorch.org's install selector)."
        if wants_cuda:
            return CheckResult("cuda", "fail", "torch is a CPU-only build, but --device asks for CUDA.", fix)
        if s.nvidia_driver:
            finding = f"torch is a CPU-only build, but an NVIDIA driver is present ({s.nvidia_driver}): the GPU goes unused."
            return CheckResult("cuda", "warn", finding, fix)
        return CheckResult("cuda", "ok", "no CUDA: torch is a CPU-only build and no NVIDIA driver was found.")
    if not t.cuda_available or not t.gpus:
        driver = s.nvidia_driver or "no NVIDIA driver found"
        return CheckResult(
            "cuda",
            "fail" if wants_cuda else "warn",
            f"torch has CUDA {t.cuda_build} but sees no GPU ({driver}; "
            f"CUDA_VISIBLE_DEVICES={s.env.get('CUDA_VISIBLE_DEVICES', 'unset')}).",
            "Install or update the NVIDIA driver, check CUDA_VISIBLE_DEVICES, or use --device cpu.",
        )
    gpus = "; ".join(
        f"cuda:{g.index} {g.name} (sm_{g.capability[0]}{g.capability[1]}, {g.free_bytes / GB:.1f}/"
        f"{g.total_bytes / GB:.1f} GiB free, fp16 yes, bf16 {'yes' if g.bf16 else 'no'})"
        for g in t.gpus
    )
    return CheckResult("cuda", "ok", f"{s.nvidia_driver or 'driver ok'}; {gpus}")


def estimate_gpu_bytes(s: Snapshot, dtype_bytes: int = 2) -> int | None:
    """Weights plus a rough activation peak for one batch: b * L * (20 * hidden + heads * L) * bytes."""
    shape = s.model.shape
    weights = shape["params"] * dtype_bytes if "params" in shape else (s.model.size_bytes // 2 or None)
    if weights is None or "hidden" not in shape:
        return None
    length, batch = s.config.max_length, s.config.batch_size
    activations = batch * length * (20 * shape["hidden"] + shape.get("heads", 16) * length) * dtype_bytes
    return int(weights + activations + 0.5 * GB)  # + CUDA context


def check_gpu_fit(s: Snapshot) -> CheckResult:
    gpus = s.torch.gpus
    if not gpus:
        return CheckResult("gpu-memory", "ok", "no GPU in use.")
    need = estimate_gpu_bytes(s)
    if need is None:
        return CheckResult("gpu-memory", "ok", "model size unknown; cannot estimate the fit.")
    index = int(s.config.device.partition(":")[2] or 0) if s.config.device.startswith("cuda") else 0
    gpu = next((g for g in gpus if g.index == index), gpus[0])
    detail = (
        f"fp16, batch {s.config.batch_size} x {s.config.max_length} tokens needs about {need / GB:.1f} GiB; "
        f"cuda:{gpu.index} has {gpu.free_bytes / GB:.1f} GiB free"
    )
    if need > gpu.free_bytes:
        return CheckResult(
            "gpu-memory",
            "fail",
            detail + ".",
            "Lower --batch-size or --max-length, free GPU memory, or pick another GPU with --device cuda:N.",
        )
    return CheckResult("gpu-memory", "ok", detail + ".")


def check_model_kind(s: Snapshot) -> CheckResult:
    """What kind of reranker the model is (cross-encoder or which decoder prompt), and the memory it
    needs on this machine: weights in the dtype it will run in, plus one batch's activations."""
    from types import SimpleNamespace

    from ..backends.families import FAMILIES, formula
    from ..backends.prompts import model_template
    from ..errors import BgeRerankError

    m = s.model
    if not m.architecture:
        return CheckResult("model-kind", "ok", f"{m.model}: kind unknown until its config.json is on disk.")
    try:
        kind = model_template(s.config.template, m.model, SimpleNamespace(architectures=[m.architecture],
                                                                          model_type=m.model_type))  # fmt: skip
    except BgeRerankError as exc:
        return CheckResult("model-kind", "fail", exc.message, exc.hint or "")
    what = "cross-encoder" if kind == "cross-encoder" else f"decoder reranker, {kind} prompt"
    finding = f"{m.model}: {m.architecture} ({what}: {formula(kind)})"
    if FAMILIES[kind].remote_code and not s.config.trust_remote_code:
        return CheckResult(
            "model-kind", "warn", finding + "; it is defined by code in its repository, which runs only with "
            "--trust-remote-code.", "Pass --trust-remote-code (or BGE_RERANK_TRUST_REMOTE_CODE=1) if you trust "
            "that repository's code.",
        )  # fmt: skip
    gpu = s.config.device.startswith("cuda") or (s.config.device == "auto" and bool(s.torch.gpus))
    dtype = s.config.dtype if s.config.dtype != "auto" else ("fp16" if gpu else "fp32")
    need = estimate_gpu_bytes(s, dtype_bytes=4 if dtype == "fp32" else 2)
    if need is None:
        return CheckResult("model-kind", "ok", finding + "; memory need unknown (no parameter count).")
    finding += f"; {dtype} needs about {size(need)} (weights and one batch)"
    available = s.memory_available
    if gpu or available is None:
        return CheckResult("model-kind", "ok", finding + ".")
    finding += f", {size(available)} available"
    if need > available:
        return CheckResult(
            "model-kind", "fail", finding + ".",
            "Free memory, use a smaller model, or lower --batch-size / --max-length"
            + (" (--dtype bf16 halves the weights)." if dtype == "fp32" else "."),
        )  # fmt: skip
    return CheckResult("model-kind", "ok", finding + ".")


def check_mps(s: Snapshot) -> CheckResult:
    if not s.platform.startswith("Darwin"):
        return CheckResult("mps", "ok", "not macOS: MPS does not apply.")
    if s.torch.mps_available:
        return CheckResult("mps", "ok", "Apple MPS is available (--device mps, or auto).")
    return CheckResult(
        "mps", "warn", "MPS is not available (torch built without it, or macOS < 12.3).", "Use --device cpu."
    )


def check_cpu(s: Snapshot) -> CheckResult:
    c = s.cpu
    flags = ", ".join(c.flags) or "none of AVX2/AVX-512/VNNI/BF16/AMX"
    finding = (
        f"{c.name or 'CPU'}: {c.cores} cores ({c.usable_cores} usable), torch uses {s.torch.threads} threads; "
        f"instruction sets: {flags}; torch kernels: {s.torch.cpu_capability or 'unknown'}, "
        f"hardware bf16: {'yes' if s.torch.cpu_bf16 else 'no'}."
    )
    if s.torch.threads and c.usable_cores and s.torch.threads > c.usable_cores:
        return CheckResult(
            "cpu",
            "warn",
            finding,
            f"Set OMP_NUM_THREADS={c.usable_cores}: more threads than usable cores slows torch.",
        )
    return CheckResult("cpu", "ok", finding, details={"flags": list(c.flags)})


def check_optional(s: Snapshot) -> CheckResult:
    """Each extra with the version of the package that stands for it (Ray with the cluster RAY_ADDRESS
    names), and the command that installs each missing one."""
    version = {e.name: next(filter(None, map(s.packages.get, e.packages)), None) for e in EXTRAS}
    cluster = s.ray_cluster or "no RAY_ADDRESS: --engine ray starts a local Ray"
    about = {"ray": f" ({cluster})"}
    finding = "; ".join(
        f"{e.packages[0]} {version[e.name] or 'not installed'}{about.get(e.name, '')}" for e in EXTRAS
    )
    status: Status = "warn" if s.ray_cluster and "not reachable" in s.ray_cluster else "ok"
    fixes = (
        ["Check RAY_ADDRESS and that the cluster's head is up."]
        if status == "warn" and version["ray"]
        else []
    )
    fixes += [f"For {e.used_by}: `{e.install}`." for e in EXTRAS if not version[e.name]]
    details = {e.packages[0]: version[e.name] for e in EXTRAS}
    return CheckResult("optional-backends", status, finding + ".", " ".join(fixes), details=details)


def check_model_load(s: Snapshot) -> CheckResult:
    m = s.model_check
    if m is None:
        return CheckResult(
            "model-load", "ok", "skipped (pass --check-model to load the model and score a pair)."
        )
    if m.error:
        fix = m.hint or (
            "Rerun the load with BGE_RERANK_DEBUG=1 for the full traceback, e.g. "
            f"`BGE_RERANK_DEBUG=1 bge-rerank score -m {s.config.model} -q a -p b`."
        )
        return CheckResult("model-load", "fail", m.error, fix)
    kind = f" as a {m.template} reranker" if m.template and m.template != "cross-encoder" else ""
    return CheckResult(
        "model-load",
        "ok",
        f"loaded{kind} in {m.load_s:.1f} s on {m.device} ({m.dtype}); one pair scored in "
        f"{m.latency_s * 1000:.0f} ms.",
        details={"load_s": m.load_s, "latency_s": m.latency_s},
    )


CHECKS: tuple[Callable[[Snapshot], CheckResult], ...] = (
    check_python,
    check_versions,
    check_tensorflow,
    check_cache_location,
    check_cache_writable,
    check_disk_space,
    check_model_files,
    check_offline,
    check_hub,
    check_torch,
    check_cuda,
    check_gpu_fit,
    check_model_kind,
    check_mps,
    check_cpu,
    check_optional,
    check_model_load,
)


def run_checks(snapshot: Snapshot) -> list[CheckResult]:
    """Every check runs; one that raises is reported as that check's failure, never as a crash."""
    results = []
    for check in CHECKS:
        name = check.__name__.removeprefix("check_").replace("_", "-")
        try:
            results.append(check(snapshot))
        except Exception as exc:
            results.append(CheckResult(name, "fail", f"the check itself failed: {type(exc).__name__}: {exc}"))
    return results
