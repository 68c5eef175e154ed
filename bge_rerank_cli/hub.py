"""Hugging Face Hub facts without torch: where the cache is, whether a model is in it, whether the Hub answers."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TRUTHY = {"1", "true", "yes", "on"}
MIB = 1 << 20
WHOLE_FILE_LIMIT = 8 * MIB  # files up to this size (and every JSON file) are hashed whole
SKIPPED_SUFFIXES = (".md",)  # a model card's edits change no score


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUTHY


def hub_offline() -> bool:
    return env_flag("HF_HUB_OFFLINE") or env_flag("TRANSFORMERS_OFFLINE")


def cache_dir(explicit: str | None = None) -> Path:
    """The hub cache in use: ``--cache-dir``, else HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if explicit:
        return Path(explicit).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def own_cache() -> Path:
    """bge-rerank's own cache (ONNX exports, backend recommendations), apart from the Hugging Face one:
    ``$BGE_RERANK_CACHE``, else ``$XDG_CACHE_HOME/bge-rerank`` or ``~/.cache/bge-rerank``."""
    base = os.environ.get("BGE_RERANK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bge-rerank"
    )
    return Path(base)


def endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


@dataclass(frozen=True)
class Reachability:
    ok: bool
    detail: str


def probe_hub(timeout: float = 3.0) -> Reachability:
    """One short HTTP request to the Hub endpoint (honours proxy variables); never hangs longer than ``timeout``."""
    import urllib.error
    import urllib.request

    url = endpoint()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:  # an HTTP answer, even an error, means the Hub is reachable
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Reachability(False, f"{url} unreachable: {reason}"[:200])
    return Reachability(True, f"{url} answered HTTP {status}")


def repo_folder(model: str, explicit_cache: str | None = None) -> Path:
    """Where the cache keeps a model repository (``models--org--name``)."""
    return cache_dir(explicit_cache) / ("models--" + model.replace("/", "--"))


def cached_snapshot(
    model: str, revision: str | None = None, explicit_cache: str | None = None
) -> Path | None:
    """The cache's snapshot folder of ``model`` at ``revision`` (a branch, tag or commit; default main),
    found on disk without the network; None when it is not cached."""
    repo = repo_folder(model, explicit_cache)
    name = revision or "main"
    ref = repo / "refs" / name
    try:
        commit = ref.read_text().strip() if ref.is_file() else name
    except OSError:
        return None
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def model_folder(model: str, revision: str | None = None, explicit_cache: str | None = None) -> Path | None:
    """The folder that holds ``model``'s files: the directory itself, or its cached snapshot (no network)."""
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    if model.startswith((".", "/", "~")):
        return None
    return cached_snapshot(model, revision, explicit_cache)


# The files loading a model needs, one of each kind besides config.json: the weights and the tokenizer.
WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
TOKENIZERS = ("tokenizer.json", "sentencepiece.bpe.model", "vocab.txt", "tokenizer.model", "spiece.model")


def weight_files(folder: Path, single: str = "model.safetensors") -> list[Path]:
    """A model folder's weight files of one kind: ``single`` itself, else the shards its index
    (``single + ".index.json"``) lists, else none (transformers' order)."""
    import json

    if (folder / single).is_file():
        return [folder / single]
    index = folder / f"{single}.index.json"
    if not index.is_file():
        return []
    try:
        shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
    except (OSError, ValueError, KeyError, AttributeError):
        return []
    return [folder / name for name in sorted(set(shards))]


def missing_essentials(files: Iterable[str]) -> list[str]:
    """What a model folder holding ``files`` (names or paths inside it) lacks of config.json, the weights
    and the tokenizer files, as a message names them; empty when it has all three."""
    names = {f.rsplit("/", 1)[-1] for f in files}
    missing = [] if "config.json" in names else ["config.json"]
    if not names & set(WEIGHTS):
        missing.append("weights (model.safetensors)")
    if not names & set(TOKENIZERS):
        missing.append("tokenizer files")
    return missing


def download_command(model: str, revision: str | None = None, cache: str | None = None) -> str:
    cmd = f"hf download {model}"
    if revision:
        cmd += f" --revision {revision}"
    if cache:
        cmd += f" --cache-dir {cache}"
    return cmd


def files_fingerprint(
    model: str, revision: str | None = None, explicit_cache: str | None = None
) -> str | None:
    """The model's files as one digest, or ``None`` when they are not on disk (a Hub model not downloaded
    yet). A local folder and a Hub model's cached snapshot are fingerprinted alike, by content only."""
    folder = model_folder(model, revision, explicit_cache)
    return None if folder is None else folder_fingerprint(folder)


def folder_fingerprint(folder: Path) -> str:
    """``sha256:`` of the folder's top-level files by name and content: JSON files and files up to 8 MiB
    hashed whole; larger ones (weights) by their size and their first and last MiB, so a 2 GB model costs
    a few MiB of reading. Names, not paths or times: a byte-identical copy elsewhere fingerprints alike.
    Hidden files and Markdown (a model card) are left out. A job asks several times (the score cache's
    keys, the checkpoint, the ONNX export's check): the files are read once per process while none of
    them changes (name, size, modification and change times and inode the same)."""
    files = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.startswith(".") or path.suffix in SKIPPED_SUFFIXES or not path.is_file():
            continue
        stat = path.stat()
        files.append((path.name, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))
    return _fingerprint(str(folder.resolve()), tuple(files))


@functools.lru_cache(maxsize=64)
def _fingerprint(folder: str, files: tuple[tuple[str, int, int, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, size, *_ in files:
        digest.update(f"{name}\0{size}\0{_file_digest(Path(folder) / name)}\n".encode())
    return "sha256:" + digest.hexdigest()


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= WHOLE_FILE_LIMIT or path.suffix == ".json":
            for block in iter(lambda: handle.read(MIB), b""):
                digest.update(block)
        else:
            digest.update(handle.read(MIB))
            handle.seek(size - MIB)
            digest.update(handle.read(MIB))
    return digest.hexdigest()
