"""Fetch a model ahead of time, and export it to ONNX there and then, so that no request ever waits for
either: `bge-rerank download`, for a container build or an air-gapped host.

The weights go into the standard Hugging Face cache through ``huggingface_hub.snapshot_download`` (the
same cache, ``refs/`` and ``snapshots/``, that loading reads), less the files a reranker never loads: when
a repository has PyTorch weights, other frameworks' weights and ready-made ONNX/OpenVINO exports; when it
has safetensors, the pickled ``*.bin`` duplicates too. An ONNX export goes where ``--backend onnx`` looks
at load time (:func:`~.backends.onnx_scorer.export_dir`), so a later ``--offline`` load finds it and
imports no torch. Run twice, nothing is fetched or exported again.

Offline (``offline=True`` or ``HF_HUB_OFFLINE=1``) or with the Hub unreachable, the cache is only checked
and exported from. A local model directory has nothing to fetch.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from . import memory
from .config import LoaderConfig
from .errors import ModelError, UsageError, option
from .hub import cache_dir, endpoint, env_flag, hub_offline, missing_essentials, probe_hub, repo_folder

log = logging.getLogger("bge_rerank_cli")

# What a reranker never loads, skipped when the repository has PyTorch weights: other frameworks' weights
# (TensorFlow, Flax, Rust), ready-made exports (ours is made from the weights), and pictures for the card.
OTHER_FORMATS = (
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.tflite",
    "*.gguf",
    "*.onnx",
    "*.onnx_data",
    "*.onnx.data",
    "onnx/*",
    "openvino/*",
    "coreml/*",
    "*.mlmodel",
    "*.mlpackage/*",
)
PICTURES = ("*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp")
# Pickled PyTorch weights: duplicates when the repository has safetensors (which transformers loads first).
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt")

Report = Callable[[str], None]


@dataclass(frozen=True)
class RepoEntry:
    """One file of a repository at a commit: its path and size."""

    path: str
    size: int


@dataclass(frozen=True)
class Downloaded:
    """What :func:`download` did: where the files and the export are, how big, and what was new."""

    model: str
    revision: str | None  # as asked (None: the default branch)
    commit: str | None  # the snapshot's commit; None for a local directory
    source: str  # "hub": asked the Hub; "cache": offline or Hub unreachable; "local": a directory
    snapshot: str | None  # None: not cached, and not needed (offline, with the ONNX export made)
    snapshot_bytes: int
    fetched_files: int
    fetched_bytes: int
    backend: str
    quantize: str
    export: str | None
    export_bytes: int | None
    exported: bool  # the export was made by this run
    seconds: float
    endpoint: str | None = None
    skipped: tuple[str, ...] = ()
    skipped_bytes: int = 0
    steps: dict[str, float] = field(default_factory=dict)  # seconds: fetch, export

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = list(self.skipped)
        return data


def skip_patterns(paths: Iterable[str]) -> list[str]:
    """The ``ignore_patterns`` for a repository with these files: :data:`OTHER_FORMATS` and pictures when
    it has PyTorch weights, and :data:`PICKLED` too when it has safetensors. A repository with neither
    is fetched whole (loading it will say what is wrong)."""
    names = [p for p in paths if not _matches(p, OTHER_FORMATS)]
    bases = [p.rsplit("/", 1)[-1] for p in names]
    safetensors = any(b.endswith(".safetensors") for b in bases)
    pickled = any(fnmatchcase(b, "pytorch_model*.bin") for b in bases)
    if not (safetensors or pickled):
        return []
    return [*OTHER_FORMATS, *PICTURES, *(PICKLED if safetensors else ())]


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(path, p) for p in patterns)


def download(config: LoaderConfig, *, force: bool = False, report: Report | None = None) -> Downloaded:
    """Put ``config.model`` where loading it with ``config`` needs no network: its files in the Hugging
    Face cache and, for ``backend="onnx"``, its ONNX export in bge-rerank's cache. ``backend="auto"`` is
    resolved as loading resolves it. ``force`` fetches the files again and redoes the export. ``report``
    receives one line per step, for people. Raises :class:`ModelError` (not found, not cached, not enough
    memory to export) or :class:`UsageError` (the ONNX extra missing) before any work it would waste."""
    from .recommend import resolve_backend

    say: Report = report or (lambda _line: None)
    started = time.perf_counter()
    config = resolve_backend(config)
    onnx = config.backend == "onnx"
    if onnx:
        _need_onnx_extra()
    folder = _export_folder(config) if onnx else None
    export_wanted = folder is not None and (force or not (folder / "meta.json").is_file())
    local = Path(config.model).expanduser()
    if local.is_dir():
        fetched = _local(config, local, say)
    else:
        _not_a_missing_directory(config.model)
        ready = folder is not None and not export_wanted
        fetched = _from_hub(config, force=force, export_wanted=export_wanted, export_ready=ready, say=say)
    steps = {"fetch": round(time.perf_counter() - started, 3)}
    exported = False
    if folder is not None:
        if export_wanted:
            t0 = time.perf_counter()
            _export(config, folder, say)
            steps["export"] = round(time.perf_counter() - t0, 3)
            exported = True
        else:
            say(f"the ONNX export ({_precision(config)}) is already there: {folder}")
    return Downloaded(
        model=config.model,
        revision=config.revision,
        commit=fetched.commit,
        source=fetched.source,
        snapshot=str(fetched.snapshot) if fetched.snapshot is not None else None,
        snapshot_bytes=folder_bytes(fetched.snapshot) if fetched.snapshot is not None else 0,
        fetched_files=fetched.files,
        fetched_bytes=fetched.bytes,
        backend=config.backend,
        quantize=config.quantize,
        export=str(folder) if folder is not None else None,
        export_bytes=folder_bytes(folder) if folder is not None else None,
        exported=exported,
        seconds=round(time.perf_counter() - started, 3),
        endpoint=fetched.endpoint,
        skipped=tuple(e.path for e in fetched.skipped),
        skipped_bytes=sum(e.size for e in fetched.skipped),
        steps=steps,
    )


def folder_bytes(folder: Path) -> int:
    """The size of the files under ``folder``, following the Hub cache's symlinks to their blobs."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


@dataclass(frozen=True)
class _Fetched:
    snapshot: Path | None
    commit: str | None
    source: str
    files: int = 0
    bytes: int = 0
    endpoint: str | None = None
    skipped: tuple[RepoEntry, ...] = ()


def _need_onnx_extra() -> None:
    from .backends.onnx_scorer import INSTALL_HINT

    if any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxruntime")):
        raise UsageError(f"{option('backend', 'onnx')} needs onnx and onnxruntime: {INSTALL_HINT}")


def _export_folder(config: LoaderConfig) -> Path:
    from .backends.onnx_scorer import export_dir

    return export_dir(config)


def _not_a_missing_directory(model: str) -> None:
    from .backends.hf import looks_like_path

    if looks_like_path(model):
        raise ModelError(
            f"model directory {model} does not exist.",
            hint="Give a Hugging Face id (org/name) or an existing directory.",
        )


def _local(config: LoaderConfig, folder: Path, say: Report) -> _Fetched:
    missing = _lacks(folder)
    if missing:
        raise ModelError(
            f"model directory {config.model} lacks {', '.join(missing)}: it is not a complete Hugging Face "
            "model folder (or a download into it did not finish).",
            hint="A reranker folder holds config.json, the weights (model.safetensors) and the tokenizer files, "
            "as save_pretrained() or `hf download MODEL --local-dir DIR` write them.",
        )
    say(f"{config.model} is a local directory: nothing to fetch")
    return _Fetched(folder.resolve(), None, "local")


def _lacks(folder: Path) -> list[str]:
    """What the model folder lacks of the files loading needs (a broken link, its blob deleted, is missing)."""
    return missing_essentials(p.name for p in folder.rglob("*") if p.exists())


def _from_hub(
    config: LoaderConfig, *, force: bool, export_wanted: bool, export_ready: bool, say: Report
) -> _Fetched:
    """Fetch from the Hub; offline or with the Hub unreachable, check the cache instead. With the ONNX
    export already made, weights missing from the cache are no error there: the export is all that
    the ONNX backend loads."""
    reach = None if config.offline or hub_offline() else probe_hub()
    if reach is not None and reach.ok:
        return _fetch(config, force=force, check_memory=export_wanted, say=say)
    try:
        if reach is None:
            return _from_cache(config, say, why="offline mode is on and it is not")
        fetched = _from_cache(config, say, unreachable=reach.detail)
    except ModelError:
        if not export_ready:
            raise
        log.warning(
            "%s is not in the cache %s; its ONNX export is, and that is all the ONNX backend loads.",
            config.model,
            cache_dir(config.cache_dir),
        )
        return _Fetched(None, None, "cache")
    log.warning(
        "the Hub is unreachable (%s): using the cached snapshot %s of %s, not checked for a newer one.",
        reach.detail,
        (fetched.commit or "")[:12],
        config.model,
    )
    return fetched


def _from_cache(
    config: LoaderConfig, say: Report, *, why: str = "it is not", unreachable: str | None = None
) -> _Fetched:
    """The cached snapshot, checked against the tree listing cached with it (where huggingface_hub keeps
    one) and for the files every reranker needs; never the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = cache_dir(config.cache_dir)
    if unreachable:
        not_there = (
            f"model {config.model} is not in the cache {where} and the Hub is unreachable ({unreachable})."
        )
    else:
        not_there = f"model {config.model} is not available: {why} completely in the cache {where}."
    try:
        path = Path(
            snapshot_download(
                config.model,
                revision=config.revision,
                cache_dir=config.cache_dir,
                local_files_only=True,
                ignore_patterns=_cached_skip_patterns(config) or None,
            )
        )
    except LocalEntryNotFoundError:
        raise ModelError(not_there, hint=_fetch_hint(config)) from None
    missing = _lacks(path)
    if missing:
        raise ModelError(
            f"{not_there} The cached snapshot lacks {', '.join(missing)}.", hint=_fetch_hint(config)
        )
    say(f"{config.model} is in the cache {where} (commit {path.name[:12]}): nothing to fetch")
    return _Fetched(path, path.name, "cache")


def _cached_skip_patterns(config: LoaderConfig) -> list[str]:
    """The skip patterns from the tree listing huggingface_hub cached with the snapshot (2.x); none
    without one (the snapshot is then checked for the essential files only)."""
    try:
        from huggingface_hub import get_cached_repo_tree  # type: ignore[attr-defined,unused-ignore]

        tree = get_cached_repo_tree(config.model, revision=config.revision, cache_dir=config.cache_dir)
    except Exception:  # no listing cached, or a huggingface_hub without the function
        return []
    return skip_patterns(f.path for f in tree)


def _fetch(config: LoaderConfig, *, force: bool, check_memory: bool, say: Report) -> _Fetched:
    """The files a reranker loads, from the Hub into the cache: listed first, so that what is there
    already, what is skipped and the export's memory are known before a byte is fetched."""
    try:
        commit, tree = _listing(config)
        skip = skip_patterns(e.path for e in tree)
        wanted = [e for e in tree if not _matches(e.path, skip)]
        skipped = tuple(e for e in tree if _matches(e.path, skip))
        snapshot = repo_folder(config.model, config.cache_dir) / "snapshots" / commit
        new = [e for e in wanted if force or not (snapshot / e.path).is_file()]
        if check_memory:
            _check_export_memory(config.model, wanted)
        _say_plan(config, commit, new, len(wanted), skipped, say)
        if new:
            from huggingface_hub import snapshot_download

            snapshot = Path(snapshot_download(config.model, revision=config.revision, cache_dir=config.cache_dir,
                                              ignore_patterns=skip or None, force_download=force))  # fmt: skip
            gc.collect()  # closes huggingface_hub's progress bars (held in a cycle) before the next line
        else:  # all there: only the branch or tag is pointed at this commit, as snapshot_download does
            _point_ref(snapshot.parent.parent, config.revision or "main", commit)
    except ModelError:
        raise
    except Exception as exc:
        raise _hub_error(config, exc) from exc
    fetched = sum(e.size for e in new)
    return _Fetched(snapshot, snapshot.name, "hub", len(new), fetched, endpoint(), skipped)


def _listing(config: LoaderConfig) -> tuple[str, list[RepoEntry]]:
    """The commit ``config.revision`` points at, and its files."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    commit = api.repo_info(config.model, revision=config.revision).sha or config.revision or "main"
    files = api.list_repo_tree(config.model, revision=commit, recursive=True)
    return commit, [RepoEntry(f.path, int(f.size or 0)) for f in files if isinstance(f, RepoFile)]


def _say_plan(
    config: LoaderConfig,
    commit: str,
    new: list[RepoEntry],
    wanted: int,
    skipped: Sequence[RepoEntry],
    say: Report,
) -> None:
    at = f"{config.model} ({config.revision or 'main'}, commit {commit[:12]})"
    where = cache_dir(config.cache_dir)
    if new:
        size = memory.human_bytes(sum(e.size for e in new))
        say(f"fetching {len(new)} of {wanted} files ({size}) of {at} from {endpoint()} into {where}")
    else:
        say(f"{at} is already in the cache {where}: nothing to fetch")
    if skipped:
        names = ", ".join(e.path for e in skipped[:4]) + (", ..." if len(skipped) > 4 else "")
        size = memory.human_bytes(sum(e.size for e in skipped))
        say(f"skipped {len(skipped)} files ({size}) a reranker does not load: {names}")


def _point_ref(repo: Path, revision: str, commit: str) -> None:
    ref = repo / "refs" / revision
    if revision == commit or (ref.is_file() and ref.read_text().strip() == commit):
        return
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(ref.name + ".tmp")
    tmp.write_text(commit)
    tmp.replace(ref)


def _check_export_memory(model: str, wanted: Sequence[RepoEntry]) -> None:
    """The export's memory check, before the weights are fetched: from their sizes in the listing."""
    if env_flag(memory.SKIP_ENV):
        return
    weights = [e.size for e in wanted if e.path.endswith(".safetensors")] or [
        e.size for e in wanted if fnmatchcase(e.path.rsplit("/", 1)[-1], "pytorch_model*.bin")
    ]
    available = memory.available_bytes()
    if weights and available is not None:
        memory.check_export_memory(model, sum(weights), available)


def _hub_error(config: LoaderConfig, exc: Exception) -> ModelError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    url = endpoint()
    if isinstance(exc, GatedRepoError):
        return ModelError(
            f"model {config.model} is gated on {url}: its files need an accepted licence and a token.",
            hint="Accept its terms on the model's page, then log in (`hf auth login`) or set HF_TOKEN.",
        )
    if isinstance(exc, RevisionNotFoundError):
        return ModelError(
            f"model {config.model} has no revision {config.revision!r} on {url}.",
            hint=f"Give {option('revision')} a branch, tag or commit of that repository.",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelError(
            f"model {config.model} was not found on {url}.",
            hint="Check the id (org/name). A private model needs a token: `hf auth login` or HF_TOKEN. "
            "A local model directory needs no download.",
        )
    text = " ".join(str(exc).split())
    first = text[:300] + ("..." if len(text) > 300 else "")
    return ModelError(
        f"model {config.model} could not be downloaded into {cache_dir(config.cache_dir)}: {first}",
        hint=_fetch_hint(config),
    )


def _fetch_hint(config: LoaderConfig) -> str:
    command = f"bge-rerank download {config.model}"
    if config.revision:
        command += f" --revision {config.revision}"
    return (
        f"Run `{command}` where the Hub is reachable and copy the cache folder here (HF_HUB_CACHE, or "
        f"{option('cache_dir')}), or pass a local model directory. Run `bge-rerank doctor` to diagnose."
    )


def _precision(config: LoaderConfig) -> str:
    return "fp32" if config.quantize == "none" else config.quantize


def _export(config: LoaderConfig, folder: Path, say: Report) -> None:
    from .backends.onnx_scorer import export

    say(f"exporting to ONNX ({_precision(config)}) into {folder}; this can take a minute")
    with _without_export_notice():
        export(config, folder)


# Said during an export and left out here: export()'s own notice (said already, as the step it is here),
# and onnxruntime's advice to pre-process a model before quantising it (shape inference for CNNs).
_NOT_SAID = ("exporting %s to ONNX once", "Please consider to run pre-processing before quantization")


@contextlib.contextmanager
def _without_export_notice() -> Iterator[None]:
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOT_SAID)

    loggers = (log, logging.getLogger())  # onnxruntime's quantiser warns on the root logger
    for logger in loggers:
        logger.addFilter(keep)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(keep)
