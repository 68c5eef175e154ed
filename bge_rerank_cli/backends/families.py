"""Which kind of reranker a model is, told from its files before any weights load, and which module
scores each kind: the one registry behind :func:`bge_rerank_cli.backends.load_scorer`.

:func:`identify` reads the model's ``config.json`` (a local folder, the Hugging Face cache, or that one
small file downloaded) and names its :class:`Family`: a cross-encoder, or a decoder reranker with its
prompt (:mod:`.prompts`). A model the rules cannot place, or one whose name and architecture disagree,
is refused there with the reason and what to pass, never scored by a guess. A family whose model is
defined by code in its repository (``auto_map``) loads only with ``--trust-remote-code``.

Adding a family: a module with ``load(config, family, device, dtype) -> Scorer``, one :data:`FAMILIES`
entry naming it, and (for a decoder prompt) its template in :mod:`.prompts` (docs/development.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..config import LoaderConfig
from ..errors import ModelError, option


@dataclass(frozen=True)
class Family:
    """One kind of reranker: how its pairs become input and how its output becomes a score."""

    name: str  # "cross-encoder" or a prompt template's name
    module: str  # the module under bge_rerank_cli.backends whose load() scores it on torch
    formula: str  # how a score is made, in one line
    onnx: bool = True  # --backend onnx can run it
    remote_code: bool = False  # the model is defined by code in its repository (auto_map)
    architecture: str = ""  # of the model identified (filled in by identify)


def _decoder(name: str, formula: str) -> Family:
    return Family(name, "decoder", formula)


# The registry: family name -> how it is scored. The formulas are what doctor --check-model prints.
FAMILIES: dict[str, Family] = {
    "cross-encoder": Family("cross-encoder", "torch_scorer", "the classifier's single logit; score = sigmoid(logit)"),
    "qwen3-reranker": _decoder("qwen3-reranker", 'logit = z("yes") - z("no") at the last token; score = sigmoid(logit)'),
    "bge-gemma": _decoder("bge-gemma", 'logit = z("Yes") at the last token; score = sigmoid(logit)'),
    "mxbai-v2": _decoder("mxbai-v2", 'logit = z("1") - z("0") at the last token; score = sigmoid(logit)'),
    "bge-layerwise": Family(
        "bge-layerwise", "layerwise", "logit = the cutoff layer's head at the last token (default: the last "
        "layer's); score = sigmoid(logit)", onnx=False, remote_code=True,
    ),
    "bge-lightweight": Family(
        "bge-lightweight", "lightweight", "logit = the cutoff layer's head at the last token, passage tokens "
        "compressed by --compress-ratio at --compress-layers; score = sigmoid(logit)", onnx=False,
        remote_code=True,
    ),
}  # fmt: skip


def formula(name: str) -> str:
    """How a model of family ``name`` is scored, in one line."""
    found = FAMILIES.get(name)
    return found.formula if found is not None else FAMILIES["cross-encoder"].formula


def read_model_config(config: LoaderConfig) -> dict[str, Any] | None:
    """The model's ``config.json`` without its weights: from a local folder or the cache, else (online)
    that one file from the Hub. ``None`` when it cannot be had: loading then reports why."""
    from ..hub import hub_offline, model_folder

    folder = model_folder(config.model, config.revision, config.cache_dir)
    path = folder / "config.json" if folder is not None else None
    if path is None and not (config.offline or hub_offline()) and "/" in config.model:
        from ..hub import probe_hub

        if not probe_hub().ok:  # the full load says so, without a download's retries first
            return None
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(config.model, "config.json", revision=config.revision,
                                        cache_dir=config.cache_dir, etag_timeout=5))  # fmt: skip
        except Exception:  # unreachable, gated, unknown: the full load says which
            return None
    if path is None or not path.is_file():
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def identify(config: LoaderConfig, model_config: Any | None = None) -> Family | None:
    """The family of ``config.model`` (``model_config``: its config, read here when not given), checked
    against ``--template`` and ``--trust-remote-code``. ``None`` when its config cannot be read yet."""
    from .prompts import model_template

    if model_config is None:
        found = read_model_config(config)
        if found is None:
            return None
        model_config = SimpleNamespace(**found)
    name = model_template(config.template, config.model, model_config)
    family = FAMILIES[name]
    architectures = list(getattr(model_config, "architectures", None) or [])
    family = Family(**{**family.__dict__, "architecture": ", ".join(architectures)})
    if family.remote_code and not config.trust_remote_code:
        code = (
            ", ".join(sorted(set((getattr(model_config, "auto_map", None) or {}).values()))) or "its own code"
        )
        raise ModelError(
            f"{config.model} is a {name} reranker, defined by code in its repository ({code}); bge-rerank "
            f"loads such a model only with {option('trust_remote_code', True)}.",
            hint="That code runs on this machine with your permissions: pass the flag (or set "
            "BGE_RERANK_TRUST_REMOTE_CODE=1) only for a repository you trust.",
        )
    if config.backend == "onnx" and not family.onnx:
        raise ModelError(
            f"{option('backend', 'onnx')} cannot run {config.model}: {name} rerankers are scored on torch only.",
            hint=f"Use {option('backend', 'torch')} (or auto).",
        )
    return family
