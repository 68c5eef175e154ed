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
from .families import Family

__all__ = ["BatchScorer", "BatchTooLarge", "Encoded", "Scorer", "load_scorer"]


@functools.lru_cache(maxsize=4)
def load_scorer(config: LoaderConfig) -> Scorer:
    """Load the model ``config`` names (once per process and config) and return a ready scorer.

    The model's family is identified from its config.json first (:mod:`.families`: refused there when it
    cannot be placed, or needs ``--trust-remote-code``), then ``--backend auto`` is made concrete, and only
    then is a backend entered: ONNX Runtime, or the family's own torch module from the registry."""
    from ..recommend import resolve_backend
    from .families import identify
    from .hf import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    family = identify(config)  # no weights read yet
    # --backend auto: the measured choice for this model and CPU (torch for a family ONNX cannot run)
    config = resolve_backend(config, onnx_ok=family is None or family.onnx)
    if config.backend == "onnx":
        from . import onnx_scorer

        scorer: Scorer = onnx_scorer.load(config)
    else:
        scorer = _load_torch(config, family)
    scorer.load_seconds = time.perf_counter() - started
    return scorer


def _load_torch(config: LoaderConfig, family: Family | None) -> Scorer:
    """The model on torch, by the module the registry names for its family."""
    import importlib

    from . import torch_scorer
    from .families import identify

    device, dtype = torch_scorer.prepare(config)
    ce = None
    if family is None:  # its config.json could not be read on its own: the full load finds it, or says why
        from .hf import load_cross_encoder

        ce = load_cross_encoder(config, device, dtype)
        family = identify(config, ce[0].model.config)
        assert family is not None
    module = importlib.import_module(f"{__name__}.{family.module}")
    return module.load(config, family, device, dtype, **({"ce": ce} if ce is not None else {}))
