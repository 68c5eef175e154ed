"""The one place that imports torch and sentence-transformers.

``load_scorer(config)`` turns a frozen :class:`LoaderConfig` into a :class:`TorchScorer`, cached per
process. Model files come through sentence-transformers' ``CrossEncoder`` and therefore through the
standard Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``, or ``--cache-dir``).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import LoaderConfig, cpu_threads
from .engine import BatchTooLarge, Encoded
from .errors import ModelError
from .hub import cache_dir, download_command, hub_offline, probe_hub
from .tokenization import PairTokenizer, TokenizedScorer

log = logging.getLogger("bge_rerank_cli")

# Roberta-family models reserve positions 0..padding_idx for padding, so fewer tokens fit.
_ROBERTA_TYPES = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}


def _quiet_libraries() -> None:
    # We never want TensorFlow or Flax: importing them breaks on Keras 3 installs and is slow.
    os.environ.setdefault("USE_TF", "0")
    os.environ.setdefault("USE_FLAX", "0")
    os.environ.setdefault("USE_TORCH", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def looks_like_path(model: str) -> bool:
    """True for things that can only be a directory; Hub ids look like ``org/name``."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            why = (
                "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            )
            raise ModelError(
                f"--device {requested} asked for, but {why}.",
                hint="Use --device cpu, or run `bge-rerank doctor` to see what is missing.",
            )
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ModelError(
                f"--device {requested} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist.",
                hint="Pick another index or run `bge-rerank doctor`.",
            )
    if requested == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelError("--device mps asked for, but MPS is not available.", hint="Use --device cpu.")
    return requested


def resolve_dtype(requested: str, device: str) -> str:
    if requested == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if requested == "fp16" and device == "cpu":
        log.warning(
            "fp16 is not supported on the CPU; running in fp32 (use --dtype bf16 for a faster CPU path)."
        )
        return "fp32"
    return requested


class TorchScorer(TokenizedScorer):
    """Tokenises pairs with the model's fast tokenizer and runs its classification head."""

    def __init__(self, config: LoaderConfig, cross_encoder: Any, device: str, dtype: str) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        self._ce = cross_encoder
        self.load_seconds = 0.0
        self.fp32_fallbacks = 0
        self._fp32: Any = None
        transformer = cross_encoder[0]
        self._model = transformer.model
        tokenizer = transformer.tokenizer
        self.model_limit = _model_token_limit(self._model.config, tokenizer)
        self.max_length = min(config.max_length, self.model_limit)
        if config.max_length > self.model_limit:
            log.warning(
                "--max-length %d is more than %s accepts; using %d.",
                config.max_length,
                config.model,
                self.model_limit,
            )
        self.pairs = PairTokenizer(
            tokenizer.backend_tokenizer.to_str(),
            max_length=self.max_length,
            query_cap=config.query_cap,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            use_type_ids="token_type_ids" in tokenizer.model_input_names,
        )

    @property
    def fill_tokens(self) -> int:
        return self.batch_tokens // 4 if self.device.startswith("cuda") else super().fill_tokens

    def describe(self) -> dict[str, Any]:
        return {"model": self.config.model, "device": self.device, "dtype": self.dtype, "backend": "torch"}

    @property
    def query_cap(self) -> int:
        return self.pairs.query_cap

    def logits(self, batch: Sequence[Encoded]) -> list[float]:
        import torch

        features = self._features(batch)
        try:
            values = self._forward(self._model, features)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            raise BatchTooLarge(str(exc)[:200]) from exc
        if self.dtype != "fp32" and not torch.isfinite(values).all():
            # fp16/bf16 overflow: never emit it; recompute this batch in fp32.
            if not self.fp32_fallbacks:
                log.warning(
                    "%s overflow gave non-finite scores; recomputing those batches in fp32.", self.dtype
                )
            self.fp32_fallbacks += 1
            values = self._forward(self._fp32_model(), features)
        if not torch.isfinite(values).all():
            raise ModelError(
                "the model produced non-finite scores even in fp32.", hint="Check the model files."
            )
        return [float(v) for v in values.tolist()]

    def _features(self, batch: Sequence[Encoded]) -> dict[str, Any]:
        import torch

        width = max(len(e.ids) for e in batch)
        ids = torch.full((len(batch), width), self.pairs.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        types = torch.zeros((len(batch), width), dtype=torch.long) if self.pairs.use_type_ids else None
        for row, enc in enumerate(batch):
            n = len(enc.ids)
            ids[row, :n] = torch.tensor(enc.ids)
            mask[row, :n] = 1
            if types is not None and enc.type_ids is not None:
                types[row, :n] = torch.tensor(enc.type_ids)
        features = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            features["token_type_ids"] = types
        return {k: v.to(self.device) for k, v in features.items()}

    @staticmethod
    def _forward(model: Any, features: dict[str, Any]) -> Any:
        import torch

        with torch.inference_mode():
            return model(**features).logits.float()[:, 0].cpu()

    def _fp32_model(self) -> Any:
        """The same model loaded again in fp32 (from its files, not upcast from half-precision weights)."""
        if self._fp32 is None:
            self._fp32 = _load_cross_encoder(self.config, self.device, "fp32")[0].model
        return self._fp32


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (
        "out of memory" in text or "can't allocate memory" in text or type(exc).__name__ == "OutOfMemoryError"
    )


def _model_token_limit(model_config: Any, tokenizer: Any) -> int:
    limit = getattr(model_config, "max_position_embeddings", None) or 512
    if getattr(model_config, "model_type", "") in _ROBERTA_TYPES:
        limit -= (getattr(model_config, "pad_token_id", 1) or 1) + 1
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limit = min(limit, tok_limit)
    return int(limit)


@functools.lru_cache(maxsize=4)
def load_scorer(config: LoaderConfig) -> Any:
    """Load the model ``config`` names (once per process) and return a ready scorer."""
    _quiet_libraries()
    if config.backend == "onnx":
        from . import onnx_backend

        started = time.perf_counter()
        onnx_scorer = onnx_backend.load(config)
        onnx_scorer.load_seconds = time.perf_counter() - started
        return onnx_scorer
    if config.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    started = time.perf_counter()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if device == "cpu":
        import torch

        threads = cpu_threads()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    cross_encoder = _load_cross_encoder(config, device, dtype)
    scorer = TorchScorer(config, cross_encoder, device, dtype)
    scorer.load_seconds = time.perf_counter() - started
    return scorer


def _load_cross_encoder(config: LoaderConfig, device: str, dtype: str) -> Any:
    local = Path(config.model).expanduser()
    if not local.is_dir() and looks_like_path(config.model):
        raise ModelError(
            f"model directory {config.model} does not exist.",
            hint="Pass --model with a Hugging Face id or an existing directory.",
        )
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
        except ModelError as cached_error:
            if "--trust-remote-code" in str(cached_error):
                raise
            reach = probe_hub()
            if not reach.ok:
                raise ModelError(
                    f"model {config.model} is not in the cache {cache_dir(config.cache_dir)} and the Hub is "
                    f"unreachable ({reach.detail}).",
                    hint=_fetch_hint(config),
                ) from None
            ce = _cross_encoder(config, config.model, device, torch_dtype, local_only=False, is_local=False)
    _check_cross_encoder(config, ce)
    ce.eval()
    return ce


def _cross_encoder(
    config: LoaderConfig, name: str, device: str, torch_dtype: Any, *, local_only: bool, is_local: bool
) -> Any:
    import torch
    from sentence_transformers import CrossEncoder

    try:
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


def _fetch_hint(config: LoaderConfig) -> str:
    return (
        f"Download it with `{download_command(config.model, config.revision, config.cache_dir)}` where the Hub "
        "is reachable (or copy the cache folder here), or pass --model DIR for a local model. "
        "Run `bge-rerank doctor` to diagnose."
    )


def _explain_load_failure(
    config: LoaderConfig, exc: Exception, is_local: bool, local_only: bool
) -> ModelError:
    text = " ".join(str(exc).split())
    first = text[:300] + ("..." if len(text) > 300 else "")
    if "trust_remote_code" in text or "custom code" in text:
        return ModelError(
            f"model {config.model} ships its own code and needs --trust-remote-code to load.",
            hint="Only pass it if you trust that repository's code.",
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
            hint=_fetch_hint(config),
        )
    return ModelError(
        f"model {config.model} could not be downloaded into {cache_dir(config.cache_dir)}: {first}",
        hint=_fetch_hint(config),
    )


def _check_cross_encoder(config: LoaderConfig, ce: Any) -> None:
    transformer = ce[0]
    model_config = transformer.model.config
    architectures = list(getattr(model_config, "architectures", None) or [])
    task = getattr(transformer, "transformer_task", "")
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
