"""BGE's layerwise reranker (BAAI/bge-reranker-v2-minicpm-layerwise): MiniCPM with a one-output head on
each layer from ``start_layer`` on, run with the model's own code from its repository.

The prompt is bge-gemma's (``<bos>A: {query}\\nB: {passage}\\n{prompt}``, :mod:`.prompts`); the score of
a pair is the head of the cutoff layer (``--cutoff-layers``, default the last layer, as FlagEmbedding's
``LayerWiseFlagLLMReranker``) at the prompt's last token. Layers after the cutoff never run.

The repository's code was written for transformers 4. Three things let it run on transformers 5, none of
them changing what it computes: the ``is_torch_fx_available`` it imports (removed in 5) is provided,
transformers 5's default rope entry (``{"rope_type": "default"}``, which the code reads as a scaling it
does not know) is given back as no scaling, and the key/value cache is never asked for (a scoring pass
decodes nothing). ``tests/test_bge_layerwise.py`` checks the result against FlagEmbedding on transformers 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import LoaderConfig
from ..errors import ModelError, option
from .base import Encoded
from .families import Family
from .tokenized import TokenizedScorer, right_padded


def load(config: LoaderConfig, family: Family, device: str, dtype: str) -> LayerwiseScorer:
    from .hf import local_model_folder

    return LayerwiseScorer(config, local_model_folder(config), device, dtype)


def remote_code_compat() -> None:
    """What transformers-4 remote code imports and transformers 5 no longer has, provided again."""
    from transformers.utils import import_utils

    if not hasattr(import_utils, "is_torch_fx_available"):

        def is_torch_fx_available() -> bool:
            return True

        import_utils.is_torch_fx_available = is_torch_fx_available  # type: ignore[attr-defined]


def remote_config(folder: Path) -> Any:
    """The model's own config class (remote code), with transformers 5's default rope entry as None."""
    import warnings

    import transformers
    from transformers import AutoConfig

    transformers.utils.logging.set_verbosity_error()  # transformers 5's notes on transformers-4 code
    remote_code_compat()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model_config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    rope = getattr(model_config, "rope_scaling", None)
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) == "default":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model_config.rope_scaling = None
    return model_config


def build_remote_model(folder: Path, model_config: Any, torch_dtype: Any) -> Any:
    """The repository's ``AutoModelForCausalLM`` class built for real on the CPU, then its weights read
    in. transformers 5's ``from_pretrained`` builds on the meta device and never runs the ``__init__``
    that transformers-4 code computes its non-persistent buffers in (MiniCPM's rotary tables): they would
    be left as uninitialised memory. Built here, they are computed; only the weight init is skipped."""
    import torch
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    from transformers.initialization import no_init_weights

    model_class = get_class_from_dynamic_module(model_config.auto_map["AutoModelForCausalLM"], str(folder))
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch_dtype)
        with no_init_weights():
            model = model_class(model_config)
    finally:
        torch.set_default_dtype(previous)
    state = read_weights(folder)
    missing, unexpected = model.load_state_dict(state, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in missing if k not in buffers]
    if missing or unexpected:
        raise ModelError(
            f"{folder}'s weights do not fit its code: {len(missing)} missing ({', '.join(missing[:3])}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}).",
            hint="The weights and the code files of the repository must come from the same revision.",
        )
    return model.to(torch_dtype).eval()


def read_weights(folder: Path) -> dict[str, Any]:
    """All tensors of a model folder: ``model.safetensors``, its shards, or ``pytorch_model.bin``'s."""
    import torch
    from safetensors.torch import load_file

    from ..hub import weight_files

    for single in ("model.safetensors", "pytorch_model.bin"):
        state: dict[str, Any] = {}
        for path in weight_files(folder, single):
            state.update(
                load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
            )
        if state:
            return state
    raise ModelError(f"{folder} holds no weights (model.safetensors or pytorch_model.bin).")


def tokenizer_facts(folder: Path, model_config: Any) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from .hf import model_token_limit, random_weights

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # the caller was allowed it
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{folder} has no fast (Rust) tokenizer, which bge-rerank needs.",
                         hint="Save the model with a tokenizer.json.")  # fmt: skip
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
    return {
        "tokenizer_json": tokenizer.backend_tokenizer.to_str(),
        "model_limit": model_token_limit(model_config, tokenizer),
        "pad_id": int(pad),
        "bos_id": tokenizer.bos_token_id,
        "random_weights": random_weights(model_config),
    }


def cutoff_layer(config: LoaderConfig, first: int, last: int) -> int:
    """The layer whose head scores: ``--cutoff-layers`` (checked: the model has a head there) or ``last``."""
    if config.cutoff_layers is None:
        return last
    if not first <= config.cutoff_layers <= last:
        raise ModelError(
            f"{config.model} has no scoring head for layer {config.cutoff_layers}: its heads are on layers "
            f"{first} to {last}.",
            hint=f"Pass {option('cutoff_layers')} one of those layers (or leave it out: the last layer).",
        )
    return config.cutoff_layers


class LayerwiseScorer(TokenizedScorer):
    """Scores bge-layerwise prompts by the cutoff layer's head (see the module docs)."""

    def __init__(self, config: LoaderConfig, folder: Path, device: str, dtype: str) -> None:
        import warnings

        with warnings.catch_warnings():  # transformers 5's deprecation notes on transformers-4 code
            warnings.simplefilter("ignore", FutureWarning)
            self._load(config, folder, device, dtype)

    def _load(self, config: LoaderConfig, folder: Path, device: str, dtype: str) -> None:
        import torch

        model_config = remote_config(folder)
        model_config.use_cache = False
        self.layer = cutoff_layer(config, int(model_config.start_layer), int(model_config.num_hidden_layers))
        facts = tokenizer_facts(folder, model_config)
        self._setup_prompt(config, "bge-layerwise", **facts)
        self.device = device
        self.dtype = dtype
        torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        try:
            model = build_remote_model(folder, model_config, torch_dtype)
        except Exception as exc:  # the repository's code and the library raise anything
            text = " ".join(str(exc).split())[:300]
            raise ModelError(f"could not load {config.model} with its repository's code: {text}",
                             hint="Run `bge-rerank doctor --check-model` for details.") from exc  # fmt: skip
        if device != "cpu":
            model.to(device)
        self._model = model

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "cutoff_layers": self.layer}

    def logits(self, batch: Sequence[Encoded]) -> list[float]:
        """Right-padded rows (positions count from 0, as the reference's), one pass up to the cutoff layer."""
        import warnings

        import torch

        ids, mask = right_padded(batch, self.pairs.pad_id)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers 5 on transformers-4 mask helpers
            out = self._model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                use_cache=False,
                output_hidden_states=True,
                cutoff_layers=[self.layer],
            )
        head = out.logits[0].float()  # (rows, width): the layer's one output at every position
        last = torch.tensor([len(e.ids) - 1 for e in batch], device=head.device)
        return head[torch.arange(len(batch), device=head.device), last].cpu().tolist()
