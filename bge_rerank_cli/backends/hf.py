"""Hugging Face loading shared by every backend: one CrossEncoder load path, its checks and its errors.

Model files come through sentence-transformers' ``CrossEncoder`` and therefore through the standard
Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``, or the config's ``cache_dir``). The torch scorer
runs the model it loads; the ONNX backend loads it once to export it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import LoaderConfig
from ..errors import ModelError, option
from ..hub import cache_dir, download_command, hub_offline, probe_hub
from .deferred import DYNAMO, deferred_imports

# Roberta-family models reserve positions 0..padding_idx for padding, so fewer tokens fit.
_ROBERTA_TYPES = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}


class RemoteCodeRequired(ModelError):
    """The model ships its own Python code and ``trust_remote_code`` is off."""


def quiet_libraries() -> None:
    """Environment for transformers: no TensorFlow or Flax (slow, and broken by Keras 3), no advisories."""
    os.environ.setdefault("USE_TF", "0")
    os.environ.setdefault("USE_FLAX", "0")
    os.environ.setdefault("USE_TORCH", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def looks_like_path(model: str) -> bool:
    """True for things that can only be a directory; Hub ids look like ``org/name``."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def model_token_limit(model_config: Any, tokenizer: Any) -> int:
    """The most tokens one sequence may hold: position embeddings (less Roberta's padding offset),
    capped by the tokenizer's own ``model_max_length`` when that is set."""
    limit = getattr(model_config, "max_position_embeddings", None) or 512
    if getattr(model_config, "model_type", "") in _ROBERTA_TYPES:
        limit -= (getattr(model_config, "pad_token_id", 1) or 1) + 1
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limit = min(limit, tok_limit)
    return int(limit)


def load_cross_encoder(config: LoaderConfig, device: str, dtype: str) -> Any:
    """A checked, eval-mode ``CrossEncoder`` for ``config.model``: a local directory, a complete cached
    copy (no network), or a download, in that order; every failure as a :class:`ModelError`."""
    local = Path(config.model).expanduser()
    if not local.is_dir() and looks_like_path(config.model):
        raise ModelError(
            f"model directory {config.model} does not exist.",
            hint=f"Give {option('model')} a Hugging Face id or an existing directory.",
        )
    if local.is_dir() and not (local / "config.json").is_file():
        raise ModelError(
            f"model directory {config.model} has no config.json: it is not a Hugging Face model folder "
            "(or a download into it did not finish).",
            hint="A reranker folder holds config.json, the weights (model.safetensors) and the tokenizer files, "
            "as save_pretrained() or `hf download MODEL --local-dir DIR` write them.",
        )
    quiet_libraries()
    if config.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    offline = config.offline or hub_offline()
    if local.is_dir():
        ce = _cross_encoder(config, str(local), device, torch_dtype, local_only=True, is_local=True)
    elif offline:
        ce = _cross_encoder(config, config.model, device, torch_dtype, local_only=True, is_local=False)
    else:
        # Prefer a complete cached copy (no network, fast start); go to the Hub only when it is missing,
        # and only after a short probe, so an unreachable Hub fails in seconds instead of minutes of retries.
        try:
            ce = _cross_encoder(config, config.model, device, torch_dtype, local_only=True, is_local=False)
        except RemoteCodeRequired:
            raise
        except ModelError:
            reach = probe_hub()
            if not reach.ok:
                raise ModelError(
                    f"model {config.model} is not in the cache {cache_dir(config.cache_dir)} and the Hub is "
                    f"unreachable ({reach.detail}).",
                    hint=fetch_hint(config),
                ) from None
            ce = _cross_encoder(config, config.model, device, torch_dtype, local_only=False, is_local=False)
    _check_cross_encoder(config, ce)
    ce.eval()
    return ce


def local_model_folder(config: LoaderConfig) -> Path:
    """The folder holding ``config.model``'s files, for a family loaded from them directly (not through
    ``CrossEncoder``): the directory itself, its cached snapshot, or a download into the cache."""
    from ..hub import missing_essentials, model_folder

    local = Path(config.model).expanduser()
    if not local.is_dir() and looks_like_path(config.model):
        raise ModelError(f"model directory {config.model} does not exist.",
                         hint=f"Give {option('model')} a Hugging Face id or an existing directory.")  # fmt: skip
    folder = model_folder(config.model, config.revision, config.cache_dir)
    missing = missing_essentials(p.name for p in folder.iterdir()) if folder is not None else ["its files"]
    if folder is not None and not missing:
        return folder
    if local.is_dir():
        raise ModelError(f"model directory {config.model} lacks {', '.join(missing)}: it is not a Hugging Face "
                         "model folder (or a download into it did not finish).", hint=fetch_hint(config))  # fmt: skip
    if config.offline or hub_offline():
        raise ModelError(f"model {config.model} is not available: offline mode is on and it is not completely "
                         f"in the cache {cache_dir(config.cache_dir)}.", hint=fetch_hint(config))  # fmt: skip
    reach = probe_hub()
    if not reach.ok:
        raise ModelError(f"model {config.model} is not in the cache {cache_dir(config.cache_dir)} and the Hub "
                         f"is unreachable ({reach.detail}).", hint=fetch_hint(config))  # fmt: skip
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(config.model, revision=config.revision, cache_dir=config.cache_dir))
    except Exception as exc:  # HTTP errors, gated repos, a full disk
        text = " ".join(str(exc).split())[:300]
        raise ModelError(f"model {config.model} could not be downloaded into {cache_dir(config.cache_dir)}: "
                         f"{text}", hint=fetch_hint(config)) from exc  # fmt: skip


def _cross_encoder(
    config: LoaderConfig, name: str, device: str, torch_dtype: Any, *, local_only: bool, is_local: bool
) -> Any:
    import torch

    with deferred_imports():
        from sentence_transformers import CrossEncoder

    try:
        # torch imports torch._dynamo while transformers builds the model on the meta device (see .deferred)
        with deferred_imports((DYNAMO,)):
            return CrossEncoder(
                name,
                device=device,
                cache_folder=config.cache_dir,
                revision=config.revision,
                local_files_only=local_only,
                trust_remote_code=config.trust_remote_code,
                activation_fn=torch.nn.Identity(),
                model_kwargs={"dtype": torch_dtype},
            )
    except Exception as exc:  # the libraries raise OSError, ValueError, HTTP errors, ...
        raise _explain_load_failure(config, exc, is_local, local_only) from exc


def fetch_hint(config: LoaderConfig) -> str:
    return (
        f"Download it with `{download_command(config.model, config.revision, config.cache_dir)}` where the Hub "
        f"is reachable (or copy the cache folder here), or give {option('model')} a local model directory. "
        "Run `bge-rerank doctor` to diagnose."
    )


def _explain_load_failure(
    config: LoaderConfig, exc: Exception, is_local: bool, local_only: bool
) -> ModelError:
    text = " ".join(str(exc).split())
    first = text[:300] + ("..." if len(text) > 300 else "")
    if "trust_remote_code" in text or "custom code" in text:
        return RemoteCodeRequired(
            f"model {config.model} ships its own code and needs {option('trust_remote_code', True)} to load.",
            hint="Only allow it if you trust that repository's code.",
        )
    if is_local:
        return ModelError(
            f"could not load model directory {config.model}: {first}",
            hint="It must hold a sentence-transformers or transformers sequence-classification model. "
            "Run `bge-rerank doctor` for details.",
        )
    if local_only:
        why = "offline mode is on and it is not" if config.offline or hub_offline() else "it is not"
        return ModelError(
            f"model {config.model} is not available: {why} completely in the cache {cache_dir(config.cache_dir)}.",
            hint=fetch_hint(config),
        )
    return ModelError(
        f"model {config.model} could not be downloaded into {cache_dir(config.cache_dir)}: {first}",
        hint=fetch_hint(config),
    )


def _check_cross_encoder(config: LoaderConfig, ce: Any) -> None:
    from .prompts import model_template

    transformer = ce[0]
    model_config = transformer.model.config
    architectures = list(getattr(model_config, "architectures", None) or [])
    task = getattr(transformer, "transformer_task", "")
    # A decoder reranker (a text-generation model whose template was found) needs only the tokenizer check.
    if model_template(config.template, config.model, model_config) == "cross-encoder":
        if task != "sequence-classification" or (
            architectures and not any(a.endswith("ForSequenceClassification") for a in architectures)
        ):
            kind = ", ".join(architectures) or task or "unknown"
            raise ModelError(
                f"{config.model} is not a cross-encoder (architecture: {kind}).",
                hint="A reranker has a sequence-classification head with one output, "
                "e.g. BAAI/bge-reranker-v2-m3 or cross-encoder/ms-marco-MiniLM-L6-v2.",
            )
        if getattr(model_config, "num_labels", 1) != 1:
            raise ModelError(
                f"{config.model} has {model_config.num_labels} output labels; a reranker has exactly one.",
                hint="Use a cross-encoder trained for relevance scoring.",
            )
    if not getattr(transformer.tokenizer, "is_fast", False):
        raise ModelError(
            f"{config.model} has no fast (Rust) tokenizer, which bge-rerank needs.",
            hint="Save the model with a tokenizer.json (transformers converts most tokenizers).",
        )


def tokenizer_facts(ce: Any) -> dict[str, Any]:
    """What a scorer needs of a loaded model's tokenizer, in the form both backends store."""
    transformer = ce[0]
    tokenizer = transformer.tokenizer
    return {
        "tokenizer_json": tokenizer.backend_tokenizer.to_str(),
        "model_limit": model_token_limit(transformer.model.config, tokenizer),
        "pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        "use_type_ids": "token_type_ids" in tokenizer.model_input_names,
        "random_weights": random_weights(transformer.model.config),
    }


def template_of(config: LoaderConfig, ce: Any) -> str:
    """The prompt template a loaded model runs with (``cross-encoder`` for a sequence classifier)."""
    from .prompts import model_template

    return model_template(config.template, config.model, ce[0].model.config)


def decoder_facts(ce: Any) -> dict[str, Any]:
    """What a decoder scorer needs of a loaded causal LM's tokenizer (the twin of :func:`tokenizer_facts`)."""
    transformer = ce[0]
    tokenizer = transformer.tokenizer
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return {
        "tokenizer_json": tokenizer.backend_tokenizer.to_str(),
        "model_limit": model_token_limit(transformer.model.config, tokenizer),
        "pad_id": int(pad),
        "bos_id": tokenizer.bos_token_id,
        "random_weights": random_weights(transformer.model.config),
    }


def random_weights(model_config: Any) -> bool:
    """True for a stand-in model with random weights, as ``tools/random_model.py`` builds them: its scores
    and orders mean nothing, and every front end says so."""
    return bool(getattr(model_config, "bge_rerank_random_weights", False))
