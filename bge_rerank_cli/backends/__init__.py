"""Model backends behind one seam: :func:`load_scorer` turns a :class:`LoaderConfig` into a :class:`Scorer`.

``base`` (the protocol and what it exchanges), ``tokenization`` (pairs to token ids, the length clamp),
``hf`` (Hugging Face loading and its errors), ``torch_scorer`` and ``onnx_scorer``. Importing this
package imports neither torch nor onnxruntime; loading a model does, for the backend it needs.
"""

from __future__ import annotations

import functools
import time

from ..config import LoaderConfig
from .base import BatchScorer, BatchTooLarge, Encoded, Scorer

__all__ = ["BatchScorer", "BatchTooLarge", "Encoded", "Scorer", "load_scorer"]


@functools.lru_cache(maxsize=4)
def load_scorer(config: LoaderConfig) -> Scorer:
    """Load the model ``config`` names (once per process and config) and return a ready scorer."""
    from ..recommend import resolve_backend
    from .hf import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    config = resolve_backend(config)  # --backend auto: the measured choice for this model and CPU
    if config.backend == "onnx":
        from . import onnx_scorer

        scorer: Scorer = onnx_scorer.load(config)
    else:
        scorer = _load_torch(config)
    scorer.load_seconds = time.perf_counter() - started
    return scorer


def _load_torch(config: LoaderConfig) -> Scorer:
    """The model on torch, wrapped by its kind: a sequence classifier in a ``TorchScorer``, a decoder
    reranker (a template found for it) in a ``DecoderScorer``."""
    from . import torch_scorer
    from .hf import load_cross_encoder, template_of

    device, dtype = torch_scorer.prepare(config)
    ce = load_cross_encoder(config, device, dtype)
    template = template_of(config, ce)
    if template != "cross-encoder":
        from . import decoder

        return decoder.load(config, ce, device, dtype, template)
    return torch_scorer.TorchScorer(config, ce, device, dtype)
