"""The torch backend: the model sentence-transformers loads, run by us (the one place that imports torch
for scoring; the ONNX export borrows it through :mod:`.hf`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..config import LoaderConfig, cpu_threads
from ..errors import ModelError, option
from .base import BatchTooLarge, Encoded
from .families import Family
from .hf import load_cross_encoder, tokenizer_facts
from .tokenized import TokenizedScorer

log = logging.getLogger("bge_rerank_cli")


def load(config: LoaderConfig, family: Family, device: str, dtype: str, ce: Any = None) -> TorchScorer:
    """The registry's loader for cross-encoders (``ce``: the model when it is loaded already)."""
    if ce is None:
        ce = load_cross_encoder(config, device, dtype)
    return TorchScorer(config, ce, device, dtype)


def prepare(config: LoaderConfig) -> tuple[str, str]:
    """The device and dtype ``config`` runs with here, CPU threads set: what loading a torch model needs
    first (see :func:`bge_rerank_cli.backends.load_scorer`)."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if device == "cpu":
        import torch

        threads = cpu_threads()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return device, dtype


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
                f"{option('device', requested)} asked for, but {why}.",
                hint=f"Use {option('device', 'cpu')}, or run `bge-rerank doctor` to see what is missing.",
            )
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ModelError(
                f"{option('device', requested)} asked for, but only {torch.cuda.device_count()} CUDA "
                "device(s) exist.",
                hint="Pick another index or run `bge-rerank doctor`.",
            )
    if requested == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelError(
                f"{option('device', 'mps')} asked for, but MPS is not available.",
                hint=f"Use {option('device', 'cpu')}.",
            )
    return requested


def resolve_dtype(requested: str, device: str) -> str:
    if requested == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if requested == "fp16" and device == "cpu":
        from ..cpuinfo import collect_cpu

        flags = collect_cpu().flags
        advice = (
            " This CPU has hardware bf16: dtype bf16 is the faster half-precision path here."
            if "BF16" in flags or "AMX" in flags
            else ""
        )
        log.warning("fp16 is not supported on the CPU; running in fp32.%s", advice)
        return "fp32"
    return requested


class TorchScorer(TokenizedScorer):
    """Tokenises pairs with the model's fast tokenizer and runs its classification head."""

    def __init__(self, config: LoaderConfig, cross_encoder: Any, device: str, dtype: str) -> None:
        self._setup(config, **tokenizer_facts(cross_encoder))
        self.device = device
        self.dtype = dtype
        self._ce = cross_encoder
        self.fp32_fallbacks = 0
        self._fp32: Any = None
        self._model = cross_encoder[0].model

    @property
    def fill_tokens(self) -> int:
        return self.batch_tokens // 4 if self.device.startswith("cuda") else super().fill_tokens

    def logits(self, batch: Sequence[Encoded]) -> list[float]:
        features = self._features(batch)
        return guarded_logits(
            self,
            lambda: self._forward(self._model, features),
            lambda: self._forward(self._fp32_model(), features),
        )

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
            self._fp32 = load_cross_encoder(self.config, self.device, "fp32")[0].model
        return self._fp32


def guarded_logits(
    scorer: Any, run: Callable[[], Any], run_fp32: Callable[[], Any], on_oom: Callable[[], None] | None = None
) -> list[float]:
    """One batch's logits from ``run()`` (a 1-D tensor), as every torch scorer guards them: out of memory
    becomes :class:`BatchTooLarge` (the engine splits the batch; ``on_oom`` frees what the scorer holds);
    a half-precision overflow is never emitted but recomputed with ``run_fp32()`` (counted in
    ``scorer.fp32_fallbacks``); non-finite scores in fp32 are a :class:`ModelError`."""
    import torch

    try:
        values = run()
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        if on_oom is not None:
            on_oom()
        if scorer.device.startswith("cuda"):
            torch.cuda.empty_cache()
        raise BatchTooLarge(str(exc)[:200]) from exc
    if scorer.dtype != "fp32" and not torch.isfinite(values).all():
        if not scorer.fp32_fallbacks:
            log.warning(
                "%s overflow gave non-finite scores; recomputing those batches in fp32.", scorer.dtype
            )
        scorer.fp32_fallbacks += 1
        values = run_fp32()
    if not torch.isfinite(values).all():
        raise ModelError("the model produced non-finite scores even in fp32.", hint="Check the model files.")
    return [float(v) for v in values.tolist()]


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (
        "out of memory" in text or "can't allocate memory" in text or type(exc).__name__ == "OutOfMemoryError"
    )
