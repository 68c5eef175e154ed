"""Several models in one server: which are served (``--model [NAME=]ID`` flags and ``--config serve.toml``),
the memory they need together, and routing a request's ``model`` field to one of them.

Each model is an :class:`~bge_rerank_cli.service.core.Engine` of its own: its scorer, its model worker and
dynamic batcher, its queue bound. Pairs of different models never share a forward pass, and one model's
backlog does not hold up another's requests. No web framework here.

The config file is TOML (read with the standard library); its keys mirror the flags, with ``-`` or ``_``::

    default = "bge"                      # optional: the first model otherwise

    [models.bge]
    model = "BAAI/bge-reranker-v2-m3"
    backend = "onnx"
    quantize = "int8"

    [models.qwen]
    model = "Qwen/Qwen3-Reranker-0.6B"
    max-length = 1024
    instruction = "Given a question, retrieve passages that answer it"

    [aliases]
    "rerank-v3.5" = "bge"                # a name clients send, answered by a served model
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..config import LoaderConfig, ScoreOptions
from ..errors import BgeRerankError, ModelError, UsageError
from .core import Engine

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
LOADER_KEYS = {f.name for f in dataclasses.fields(LoaderConfig)} | {"fp16"}
OPTION_KEYS = {f.name for f in dataclasses.fields(ScoreOptions)}


class UnknownModel(BgeRerankError):
    """A request named a model this server does not serve (404)."""


@dataclass(frozen=True)
class ServedModel:
    """One model as served: the name requests use, how it loads, how its pairs are scored."""

    name: str
    config: LoaderConfig
    options: ScoreOptions


@dataclass(frozen=True)
class Catalog:
    """What a server serves: its models in order, the default one, and aliases (name -> served name)."""

    models: tuple[ServedModel, ...]
    default: str
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]


def split_flag(text: str) -> tuple[str | None, str]:
    """``NAME=ID`` into its parts; a bare ``ID`` (a Hub id or a path) has no name."""
    name, sep, model = text.partition("=")
    if sep and NAME.fullmatch(name) and model:
        return name, model
    return None, text


def catalog(
    flags: Sequence[str], base: LoaderConfig, options: ScoreOptions, config_file: str | None = None
) -> Catalog:
    """The models to serve: each ``--model`` flag (named ``NAME=ID``, or by its id), then each model of the
    config file, whose keys override the flags' loader and long-passage options for it. No flag and no
    file: ``base.model``, as the single-model server always served."""
    entries: list[tuple[str, dict[str, Any]]] = []
    for flag in flags:
        name, model = split_flag(flag)
        entries.append((name or model, {"model": model}))
    default: str | None = None
    aliases: dict[str, str] = {}
    if config_file is not None:
        file_entries, default, aliases = read_config(Path(config_file))
        entries += file_entries
    if not entries:
        entries = [(base.model, {"model": base.model})]
    models: list[ServedModel] = []
    for name, settings in entries:
        if any(m.name == name for m in models):
            raise UsageError(f"the model name {name!r} is given twice; name each model once (NAME=ID).")
        models.append(_served(name, settings, base, options, config_file))
    names = [m.name for m in models]
    default = default or names[0]
    if default not in names:
        raise UsageError(f"{config_file}: default = {default!r} is not a served model ({', '.join(names)}).")
    for alias, target in aliases.items():
        if target not in names:
            raise UsageError(f"{config_file}: alias {alias!r} points to {target!r}, which is not served "
                             f"({', '.join(names)}).")  # fmt: skip
        if alias in names:
            raise UsageError(f"{config_file}: alias {alias!r} is also the name of a served model.")
    return Catalog(tuple(models), default, dict(aliases))


def read_config(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], str | None, dict[str, str]]:
    """A serve.toml's models (name, settings with ``_`` keys), its ``default`` and its ``aliases``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path}: not valid TOML: {exc}") from None
    unknown = set(data) - {"models", "default", "aliases"}
    if unknown:
        raise UsageError(f"--config {path}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                         "expected [models.NAME], default and [aliases].")  # fmt: skip
    tables = data.get("models", {})
    if not isinstance(tables, dict) or not tables:
        raise UsageError(f"--config {path}: no [models.NAME] table; each served model needs one.")
    entries = []
    for name, table in tables.items():
        if not NAME.fullmatch(name):
            raise UsageError(f"--config {path}: model name {name!r} must be letters, digits, '.', '_', ':' "
                             "or '-' (at most 64).")  # fmt: skip
        if not isinstance(table, dict) or "model" not in table:
            raise UsageError(f'--config {path}: [models.{name}] needs model = "ID or DIR".')
        entries.append((name, {key.replace("-", "_"): value for key, value in table.items()}))
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        raise UsageError(f"--config {path}: default must be a model name.")
    aliases = data.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise UsageError(f"--config {path}: [aliases] maps names to served model names (strings).")
    return entries, default, aliases


def _served(
    name: str, settings: dict[str, Any], base: LoaderConfig, options: ScoreOptions, source: str | None
) -> ServedModel:
    where = f"--config {source}: [models.{name}]" if source and len(settings) > 1 else f"model {name!r}"
    unknown = set(settings) - LOADER_KEYS - OPTION_KEYS
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}.")
    loader = {k: v for k, v in settings.items() if k in LOADER_KEYS}
    fp16 = loader.pop("fp16", None)
    if fp16 is not None:
        loader.setdefault("dtype", "fp16" if fp16 else "fp32")
    if isinstance(loader.get("compress_layers"), list):
        loader["compress_layers"] = tuple(loader["compress_layers"])
    try:
        config = dataclasses.replace(base, **loader)
        scoring = dataclasses.replace(options, **{k: v for k, v in settings.items() if k in OPTION_KEYS})
    except (TypeError, ValueError) as exc:  # a wrong type, or a value the option refuses
        raise UsageError(f"{where}: {exc}") from None
    return ServedModel(name, config, scoring)


@dataclass
class Models:
    """The engines of a running server, by name, and how a request's ``model`` field picks one."""

    engines: dict[str, Engine]
    default: str
    aliases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def single(cls, engine: Engine) -> Models:
        return cls({engine.model: engine}, engine.model)

    @property
    def several(self) -> bool:
        return len(self.engines) > 1

    @property
    def ready(self) -> bool:
        return all(e.ready for e in self.engines.values())

    @property
    def error(self) -> BaseException | None:
        return next((e.error for e in self.engines.values() if e.error is not None), None)

    @property
    def first(self) -> Engine:
        return self.engines[self.default]

    def pick(self, name: str | None) -> Engine:
        """The engine a request's ``model`` names: with one model served, any name (clients send their
        own, such as ``rerank-v3.5``); with several, a served name, a served model's id or an alias, and
        none at all means the default."""
        if not self.several or name is None:
            return self.first
        found = self.engines.get(name) or self.engines.get(self.aliases.get(name, ""))
        if found is None:
            found = next((e for e in self.engines.values() if e.config.model == name), None)
        if found is None:
            served = ", ".join(self.engines)
            raise UnknownModel(f"model {name!r} is not served here; served: {served}.")
        return found

    def load(self, loader: Callable[[Engine], None] | None = None) -> None:
        """Load every model, one after the other (their peaks do not add up); the first failure stops."""
        for engine in self.engines.values():
            (loader or Engine.load)(engine)

    def close(self, *, abandon: bool = False) -> None:
        """Stop every model worker at once (each drains its own queue)."""
        threads = [
            threading.Thread(target=e.close, kwargs={"abandon": abandon}) for e in self.engines.values()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def check_memory(models: Sequence[ServedModel], copies: int = 1) -> list[tuple[str, int]]:
    """The memory each model needs once loaded (its weights in the dtype it runs in, a tenth more for one
    batch's work; times ``copies``, the replicas on this machine), where that can be told before loading;
    raises :class:`ModelError` with the figures when they add up to more than is available. Skipped with
    ``BGE_RERANK_SKIP_MEMORY_CHECK=1``."""
    from ..hub import env_flag, model_folder
    from ..memory import SKIP_ENV, available_bytes, human_bytes

    needs = []
    for served in models:
        config = served.config
        if config.device.startswith(("cuda", "mps")):  # its weights go to the accelerator's memory
            continue
        folder = model_folder(config.model, config.revision, config.cache_dir)
        need = _load_need(folder, config) if folder is not None else None
        if need is not None:
            needs.append((served.name, need * copies))
    available = available_bytes()
    if env_flag(SKIP_ENV) or available is None or not needs:
        return needs
    total = sum(n for _, n in needs)
    if total > available:
        each = ", ".join(f"{name} {human_bytes(n)}" for name, n in needs)
        times = f" in {copies} replicas" if copies > 1 else ""
        raise ModelError(
            f"the {len(models)} model(s){times} need about {human_bytes(total)} of memory together ({each}), but "
            f"only {human_bytes(available)} is available; stopped before loading any of them.",
            hint=f"Serve fewer or smaller models (--backend onnx --quantize int8 needs about a quarter of "
            f"fp32), or free memory. To try anyway: {SKIP_ENV}=1.",
        )
    return needs


def _load_need(folder: Path, config: LoaderConfig) -> int | None:
    """Bytes ``config``'s model takes loaded: its weight files rescaled from the dtype they are stored in
    to the one it runs in (int8: a quarter of fp32), plus a tenth."""
    import json

    from ..memory import weight_bytes

    weights = weight_bytes(folder)
    if weights is None:
        return None
    stored = 4
    try:
        found = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        kind = str(found.get("torch_dtype") or found.get("dtype") or "float32")
        stored = 2 if kind in ("float16", "bfloat16") else 4
    except (OSError, ValueError, AttributeError):
        pass
    runs = {"fp16": 2, "bf16": 2}.get(config.dtype, 4)
    if config.quantize == "int8":
        runs = 1
    return int(weights / stored * runs * 1.1)
