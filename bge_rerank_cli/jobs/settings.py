"""What a job's records are made with, recorded in its checkpoint, so that a resume never mixes two
settings in one output file.

A record depends on the model (its files), the backend, quantisation and dtype it runs with, the tokens
per pair (max length and the query's share of it), a decoder reranker's template and instruction, how
long passages are handled (and the window options in chunk mode), and for ``rerank`` on top-k, min-score
and depth. The checkpoint also binds the output format and the errors file. Batch size, token budget,
device and prefix reuse do not bind: they change how pairs share a forward pass, which moves scores by
float rounding only (within 1e-5, tested), never what a record says.

Values are recorded **as resolved**, what ran rather than what was asked for: ``backend`` ``auto`` as
the backend it chose, ``dtype`` ``auto`` as fp32 on a CPU, ``max_length`` clamped to the model's limit,
the model as a fingerprint of its files (so a byte-identical copy in another folder is the same model).
A resume that would write identical records is accepted however its settings are spelled; one that
would not is refused.

Both checks run before anything is written. :func:`before_load` resolves what needs no model: the model
files, an explicit backend, quantisation, max length (against the model limit the checkpoint recorded,
once the model files match), and the task's options; :func:`after_load` resolves everything from the
loaded scorer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..config import LoaderConfig, ScoreOptions
from ..errors import option

if TYPE_CHECKING:
    from ..backends.base import Scorer
    from ..score_cache import CacheStore, PairCache
    from .sources import Source
    from .tasks import Task


@dataclass(frozen=True)
class Setting:
    """One recorded setting: ``value`` is compared; ``shown`` is how a refusal names it (it may hold
    :func:`~bge_rerank_cli.errors.option` references, spelled by each front end)."""

    value: Any
    shown: str


Settings = dict[str, Setting]

# The order refusals list settings in; a setting derived from others is left out when one of them differs
# (a decoder's query share follows from its prompt's length, the template's and the instruction's).
ORDER = ("task", "model", "backend", "quantize", "dtype", "max_length", "query_max_length", "template",
         "instruction", "cutoff_layers", "compression", "long_docs", "chunk_overlap", "max_chunks", "top_k", "min_score", "depth", "format",
         "errors")  # fmt: skip
DERIVED = {
    "query_max_length": ("max_length", "template", "instruction", "model"),
    "instruction": ("template", "model"),
    "chunk_overlap": ("long_docs",),
    "max_chunks": ("long_docs",),
    "top_k": ("task",),
    "min_score": ("task",),
    "depth": ("task",),
}
BOUND_ONCE_SET = {"errors"}  # a job that had no errors file may get one; one that had one keeps it
_NONE = Setting(None, "none")


def _plain(value: Any) -> Setting:
    return Setting(value, "none" if value is None else str(value))


def _asked(value: Any, requested: Any) -> Setting:
    """A resolved value, shown with what was asked for when that differs (``fp32 (auto)``)."""
    if requested is None or requested == value:
        return _plain(value)
    return Setting(value, f"{value} ({requested})" if requested == "auto" else f"{value} (asked {requested})")


def options_settings(options: ScoreOptions) -> Settings:
    """What the long-passage options bind: the window options only in chunk mode."""
    chunk = options.long_docs == "chunk"
    return {
        "long_docs": _plain(options.long_docs),
        "chunk_overlap": _plain(options.chunk_overlap if chunk else None),
        "max_chunks": _plain(options.max_chunks if chunk else None),
    }


def task_settings(task: Task[Any, Any], source: Source, output: Any) -> Settings:
    """What the task, the source and the output bind (no model needed)."""
    settings: Settings = {"task": _plain(task.kind)}
    options = getattr(task, "options", None)
    if options is not None:
        settings.update(options_settings(options))
    if task.kind == "rerank":
        settings["top_k"] = _plain(getattr(task, "top_k", None))
        settings["min_score"] = _plain(getattr(task, "min_score", None))
        settings["depth"] = _plain(_depth(task, source))
    settings["format"] = _plain(output.format)
    errors = output.errors
    settings["errors"] = Setting(os.path.abspath(errors) if errors else None, errors or "none")
    return settings


def _depth(task: Task[Any, Any], source: Source) -> int | None:
    """Candidates scored per query: the task's ``depth`` or a first-stage source's, the smaller of both."""
    depths = [d for d in (getattr(task, "depth", None), getattr(source, "depth", None)) if d is not None]
    return min(depths) if depths else None


def before_load(config: LoaderConfig, model_limit: int | None, recorded: Mapping[str, Setting]) -> Settings:
    """The model settings known without loading it. ``max_length`` is resolved against ``model_limit``
    (the checkpoint's) only when the model files are the checkpoint's; a model not on disk yet (a Hub id
    to download) is left to :func:`after_load`, with every setting that depends on it, and so is backend
    ``auto``: what it resolves to is the loaded scorer's to say (a scorer loaded earlier in the process
    may have resolved it under an older ``bench --recommend``)."""
    settings: Settings = {}
    fingerprint = model_fingerprint(config)
    if fingerprint is not None:
        settings["model"] = Setting(fingerprint, model_name(config))
    if config.backend != "auto":
        settings["backend"] = _plain(config.backend)
    settings["quantize"] = _plain(config.quantize)
    same_model = fingerprint is not None and recorded.get("model", _NONE).value == fingerprint
    if same_model and model_limit is not None:
        # The scorer's clamp (backends.tokenization.effective_max_length), for the same model files.
        settings["max_length"] = _asked(min(config.max_length, model_limit), config.max_length)
    return settings


def after_load(scorer: Scorer, requested: LoaderConfig | None = None) -> Settings:
    """Every model setting, as the loaded ``scorer`` resolved it (``requested``: the configuration it was
    loaded from, for showing what was asked; the scorer's own holds the backend ``auto`` resolved to)."""
    config = scorer.config
    described = scorer.describe()
    template = str(getattr(scorer, "template", "cross-encoder"))
    instruction = getattr(scorer, "instruction", None)
    query_cap = getattr(scorer, "query_cap", None)
    share = (
        f"asked {config.query_max_length}"
        if config.query_max_length is not None
        else f"the default for max length {config.max_length}"
    )
    fingerprint = model_fingerprint(config)
    export = getattr(scorer, "export_folder", None)
    if fingerprint is None and export is not None:  # an ONNX export without its model's files (slim image)
        from ..hub import folder_fingerprint

        fingerprint = "onnx-export:" + folder_fingerprint(Path(export))
    # BGE layerwise / lightweight: the layer that scores and the token compression (only those families)
    heads: Settings = {n: _plain(described[n]) for n in ("cutoff_layers", "compression") if n in described}
    return {
        **heads,
        "model": Setting(fingerprint or model_name(config), model_name(config)),
        "backend": _asked(described.get("backend", config.backend), (requested or config).backend),
        "quantize": _plain(config.quantize),
        "dtype": _asked(scorer.dtype, config.dtype),
        "max_length": _asked(scorer.max_length, config.max_length),
        "query_max_length": Setting(query_cap, f"{query_cap} ({share})"),
        "template": _asked(template, config.template),
        "instruction": Setting(instruction, _instruction_shown(instruction, config.instruction)),
    }


def bind_cache(
    store: CacheStore, scorer: Scorer, options: ScoreOptions, *, retry_after: float | None = None
) -> PairCache:
    """A score cache for pairs ``scorer`` (loaded) scores with ``options``: keyed by every setting a
    checkpoint binds for them, :func:`after_load`'s and the long-passage options, as resolved.
    ``retry_after``: seconds before a failed store is tried again (a server); ``None``: off for good."""
    from ..score_cache import PairCache, namespace

    settings = {**after_load(scorer), **options_settings(options)}
    space = namespace({name: s.value for name, s in settings.items()})
    return PairCache(store, space, str(scorer.config.model), retry_after=retry_after)


def load_key(config: LoaderConfig) -> str | None:
    """Everything that decides how ``config`` loads, as one digest, when that is known without loading:
    the model files (``None`` when they are not on disk yet), every loader setting but the device-free
    ones that move no score, the backend ``auto`` resolves to here, the device ``auto`` is here (a torch
    import, not a model load), and this version of bge-rerank. Two loads with one key resolve alike."""
    from .. import __version__
    from ..recommend import resolve_backend

    fingerprint = model_fingerprint(config)
    if fingerprint is None:
        return None
    resolved = resolve_backend(config)
    device = "cpu" if resolved.backend == "onnx" else config.device
    if device != "cpu":
        from ..backends.torch_scorer import resolve_device

        device = resolve_device(device)
    keyed = {
        "version": __version__,
        "model": fingerprint,
        "backend": resolved.backend,
        "device": device,
        **{name: getattr(config, name) for name in LOAD_KEYED},
    }
    return hashlib.sha256(orjson.dumps(keyed, option=orjson.OPT_SORT_KEYS)).hexdigest()


# LoaderConfig fields a load resolves from besides the model, backend and device (offline, cache_dir and
# revision only say where the files are: the fingerprint covers them).
LOAD_KEYED = ("dtype", "max_length", "query_max_length", "batch_size", "batch_tokens", "trust_remote_code",
              "quantize", "template", "instruction", "prefix_reuse", "cutoff_layers", "compress_ratio",
              "compress_layers")  # fmt: skip


def load_through_cache(
    store: CacheStore | None, config: LoaderConfig | None, load: Callable[[], Scorer]
) -> Scorer:
    """The scorer for ``config``. Without a score cache (or a configuration to key it by): ``load()``.
    With one that recorded how ``config`` loads (see :mod:`~bge_rerank_cli.backends.recorded`): a scorer
    that calls ``load`` only when a pair needs the model. Else ``load()`` now, recorded for the next
    time. A record that cannot be read (a store failing, or one this version does not write) is no record:
    the cache's first lookup meets a failing store again and warns."""
    key = None if store is None or config is None else load_key(config)
    if store is None or config is None or key is None:
        return load()
    from ..backends.recorded import FACTS, RecordedScorer

    try:
        raw = store.get_load(key)
        facts = orjson.loads(raw) if raw is not None else None
    except Exception:
        facts = None
    wanted = {*FACTS, "backend", "describe"}
    if isinstance(facts, dict) and set(facts) == wanted and isinstance(facts["describe"], dict):

        def load_and_record() -> Scorer:
            scorer = load()
            _record_load(store, key, config, scorer)
            return scorer

        return RecordedScorer(config, facts, load_and_record)
    scorer = load()
    _record_load(store, key, config, scorer)
    return scorer


def _record_load(store: CacheStore, key: str, config: LoaderConfig, scorer: Scorer) -> None:
    """Record in ``store``, under ``key``, what ``scorer`` (loaded from ``config``) resolved. Best effort: a
    failing store is the cache's to warn about."""
    from ..backends.recorded import facts_of

    with contextlib.suppress(Exception):
        store.put_load(key, orjson.dumps(facts_of(scorer)), str(config.model))


def _instruction_shown(instruction: str | None, requested: str | None) -> str:
    if not instruction:  # none, or a template without one by default (mxbai-v2)
        return "none"
    text = instruction if len(instruction) <= 60 else instruction[:57] + "..."
    return repr(text) + (" (the model's default)" if requested is None else "")


def model_name(config: LoaderConfig) -> str:
    return config.model + (f" at revision {config.revision}" if config.revision else "")


def model_fingerprint(config: LoaderConfig) -> str | None:
    """The model's files as one digest (:func:`~bge_rerank_cli.hub.files_fingerprint`), or ``None`` when
    they are not on disk (a Hub model not downloaded yet)."""
    from ..hub import files_fingerprint

    return files_fingerprint(config.model, config.revision, config.cache_dir)


def differences(
    recorded: Mapping[str, Setting], current: Mapping[str, Setting], *, complete: bool
) -> list[str]:
    """One line per setting that differs: ``--max-length: 256 in the checkpoint, 512 now`` (names through
    :func:`option`). ``complete=False`` compares only what ``current`` holds (the check before loading)."""
    names = [*ORDER, *(n for n in (*recorded, *current) if n not in ORDER)]
    differ: dict[str, tuple[Setting, Setting]] = {}
    for name in dict.fromkeys(names):
        if name not in current and (not complete or name not in recorded):
            continue
        old, new = recorded.get(name, _NONE), current.get(name, _NONE)
        if name in BOUND_ONCE_SET and old.value is None:
            continue
        if old.value != new.value:
            differ[name] = (old, new)
    lines = []
    for name, (old, new) in differ.items():
        if any(parent in differ for parent in DERIVED.get(name, ())):
            continue
        was, now = old.shown, new.shown
        if was == now:  # same name, other content: say which
            was, now = f"{was} ({_short(old.value)})", f"{now} ({_short(new.value)})"
        label = name if name == "task" else option(name)
        lines.append(f"{label}: {was} in the checkpoint, {now} now")
    return lines


def _short(value: Any) -> str:
    text = str(value)
    return text[: len("sha256:") + 12] if text.startswith("sha256:") else text


def to_json(settings: Mapping[str, Setting]) -> dict[str, dict[str, Any]]:
    return {name: {"value": s.value, "shown": s.shown} for name, s in settings.items()}


def from_json(data: Any) -> Settings:
    """Settings as a checkpoint stores them; a ``TypeError`` or ``ValueError`` for anything else."""
    if not isinstance(data, dict):
        raise TypeError(f"settings must be an object, not {type(data).__name__}")
    out: Settings = {}
    for name, entry in data.items():
        if (
            not isinstance(entry, dict)
            or set(entry) != {"value", "shown"}
            or not isinstance(entry["shown"], str)
        ):
            raise ValueError(f"setting {name!r} is malformed")
        out[str(name)] = Setting(entry["value"], entry["shown"])
    return out
