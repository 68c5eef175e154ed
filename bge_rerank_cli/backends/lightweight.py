"""BGE's lightweight reranker (BAAI/bge-reranker-v2.5-gemma2-lightweight): Gemma 2 with a one-output head
per layer from ``start_layer`` on, and token compression, run by this module (no code from the model's
repository: that code needs transformers 4).

The prompt is ``<bos>A: {query}\\nB: {passage}\\n{prompt}`` (:mod:`.prompts`, template ``bge-lightweight``).
A pair runs through transformers 5's Gemma 2 decoder layers with a loop of our own, which computes what
FlagEmbedding 1.4.2's ``LightWeightFlagLLMReranker.compute_score`` (``CostWiseGemmaForCausalLM`` on
transformers 4.46) computes:

* the embeddings times ``sqrt(hidden_size)``, rows right-padded, positions ``0..n-1``; causal and padding
  mask, a sliding window on the even layers (Gemma 2's); attention scaled by ``query_pre_attn_scalar``;
* before layer ``idx`` runs: at the cutoff layer (``--cutoff-layers``, default the last layer) stop;
  at a layer of ``--compress-layers`` (not 0), with ``--compress-ratio`` above 1, the passage's tokens
  become the means of each ``ratio`` consecutive ones (the last group: of what is left), the query part
  (``<bos>A: {query}\\n``) and the prompt part (``\\n{prompt}``) are kept, positions restart at 0;
* the score is a head applied to the final norm of the hidden state at the pair's last token, soft-capped
  by ``final_logit_softcapping``.

Two things the reference does that its name would not suggest, and that this module does too:

* **The head.** ``CostWiseGemmaForCausalLM`` applies ``lm_head[i]`` to the ``i``-th hidden state it
  captured, ``i`` counting the cutoff layers it was asked for; one cutoff layer (all that bge-rerank
  asks for) is therefore always scored by ``lm_head.0``, whichever layer it is, not by
  ``lm_head[cutoff - start_layer]``. A cutoff layer must still be one with a head
  (``start_layer..num_hidden_layers`` by ``layer_sep``); FlagEmbedding drops another with a warning,
  bge-rerank refuses it.
* **The attention.** transformers 4.46 loads the model with SDPA attention unless its config names
  another, and its SDPA attention has no logit soft-capping: ``attn_logit_softcapping`` is applied only
  when the model's config.json asks for ``eager`` attention (``attn_implementation``).

Layers after the cutoff are neither loaded nor run. ``tests/test_bge_lightweight.py`` checks the scores
against FlagEmbedding on transformers 4.46.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..config import LoaderConfig
from ..errors import ModelError, option
from .base import Encoded
from .families import Family
from .tokenized import TokenizedScorer, right_padded

TEMPLATE = "bge-lightweight"
DTYPES = ("fp32", "fp16", "bf16")


def load(config: LoaderConfig, family: Family, device: str, dtype: str) -> LightweightScorer:
    """The registry's loader (:mod:`.families`): the model's folder found (or downloaded), trust checked."""
    from .hf import local_model_folder

    return LightweightScorer(config, local_model_folder(config), device, dtype)


def read_json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not read {path}: {exc}") from exc
    if not isinstance(found, dict):
        raise ModelError(f"{path} is not a JSON object.")
    return found


def head_layers(model_config: dict[str, Any]) -> list[int]:
    """The layers that have a scoring head: ``start_layer`` to ``num_hidden_layers`` by ``layer_sep``."""
    layers = int(model_config["num_hidden_layers"])
    start = int(model_config.get("start_layer", 28))
    step = int(model_config.get("layer_sep", 28))
    return list(range(start, layers + 1, step))


def cutoff_layer(config: LoaderConfig, model_config: dict[str, Any]) -> int:
    """The layer before which the hidden state is scored: ``--cutoff-layers``, or the last layer."""
    layer = int(model_config["num_hidden_layers"]) if config.cutoff_layers is None else config.cutoff_layers
    heads = head_layers(model_config)
    if layer not in heads:
        shown = ", ".join(map(str, heads)) if len(heads) <= 8 else f"{heads[0]} to {heads[-1]}"
        step = int(model_config.get("layer_sep", 28))
        if len(heads) > 8 and step != 1:
            shown += f" (every {step})"
        raise ModelError(
            f"{config.model} has no scoring head for layer {layer}: its heads are on layers {shown}.",
            hint=f"Pass {option('cutoff_layers')} one of those layers (or leave it out: the last layer).",
        )
    return layer


def attention_kind(model_config: dict[str, Any]) -> str:
    """The attention transformers 4.46 runs the model with: ``eager`` only when its config asks for it
    (then with logit soft-capping), else ``sdpa`` (without)."""
    asked = model_config.get("attn_implementation") or model_config.get("_attn_implementation")
    return "eager" if asked == "eager" else "sdpa"


def sliding(layer: int) -> bool:
    """Gemma 2's local-attention layers, as transformers 4.46 numbers them: the even ones."""
    return layer % 2 == 0


def tokenizer_facts(folder: Path, model_config: dict[str, Any]) -> dict[str, Any]:
    """The folder's tokenizer.json, its bos and pad ids, and the tokens one sequence may hold."""
    from tokenizers import Tokenizer

    from .hf import random_weights

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{folder} has no tokenizer.json (a fast tokenizer), which bge-rerank needs.",
                         hint="Save the model's tokenizer with a tokenizer.json.")  # fmt: skip
    tokenizer_json = path.read_text(encoding="utf-8")
    tok = Tokenizer.from_str(tokenizer_json)
    named: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the second wins, as transformers'
        if (folder / name).is_file():
            named.update(read_json(folder / name))

    def token_id(key: str) -> int | None:
        token = named.get(key)
        if isinstance(token, dict):
            token = token.get("content")
        found = tok.token_to_id(token) if isinstance(token, str) else None
        if found is None:
            found = model_config.get(f"{key}_id")
        return None if found is None else int(found)

    pad = token_id("pad_token")
    if pad is None:
        pad = token_id("unk_token")
    limit = int(model_config.get("max_position_embeddings") or 8192)
    tok_limit = named.get("model_max_length")
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limit = min(limit, tok_limit)
    return {
        "tokenizer_json": tokenizer_json,
        "model_limit": limit,
        "pad_id": 0 if pad is None else pad,
        "bos_id": token_id("bos_token"),
        "random_weights": random_weights(SimpleNamespace(**model_config)),
    }


class LightweightScorer(TokenizedScorer):
    """Scores bge-lightweight prompts by the cutoff layer's head, with token compression (module docs)."""

    template = TEMPLATE

    def __init__(self, config: LoaderConfig, folder: Path, device: str, dtype: str) -> None:
        if dtype not in DTYPES:
            raise ModelError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
        model_config = read_json(folder / "config.json")
        if not model_config.get("layer_wise", False):
            raise ModelError(f"{config.model} is not a layer-wise lightweight reranker (its config has no "
                             "layer_wise: true), whose heads bge-rerank scores with.")  # fmt: skip
        self.folder = folder
        self.model_config = model_config
        self.layer = cutoff_layer(config, model_config)
        self._setup_prompt(config, TEMPLATE, **tokenizer_facts(folder, model_config))
        self.device = device
        self.dtype = dtype
        # FlagEmbedding's prompt_lengths: "\n" + the prompt, the template's whole suffix.
        self.suffix_tokens = len(self.pairs._suffix)  # type: ignore[union-attr]
        self.compress_layers = tuple(
            layer
            for layer in dict.fromkeys(config.compress_layers)
            if config.compress_ratio > 1 and 0 < layer < self.layer
        )
        self.fp32_fallbacks = 0
        self._model = LightweightNetwork(folder, model_config, self.layer, device, dtype)
        self._fp32: LightweightNetwork | None = None

    @property
    def fill_tokens(self) -> int:
        """A decoder's tokens/s keeps growing with the batch on the CPU too (see ``DecoderScorer``)."""
        return self.batch_tokens // 4

    def describe(self) -> dict[str, Any]:
        layers = ",".join(map(str, self.compress_layers))
        return {
            **super().describe(),
            "cutoff_layers": self.layer,
            "compress_ratio": self.config.compress_ratio,
            "compress_layers": list(self.config.compress_layers),
            # what a resumed job and the score cache are bound to: the compression that takes effect
            "compression": f"{self.config.compress_ratio}x at layers {layers}" if layers else "none",
        }

    def logits(self, batch: Sequence[Encoded]) -> list[float]:
        from .torch_scorer import guarded_logits

        return guarded_logits(
            self,
            lambda: self._logits(self._model, batch),
            lambda: self._logits(self._fp32_model(), batch),
        )

    def _fp32_model(self) -> LightweightNetwork:
        if self._fp32 is None:
            self._fp32 = LightweightNetwork(self.folder, self.model_config, self.layer, self.device, "fp32")
        return self._fp32

    def _logits(self, model: LightweightNetwork, batch: Sequence[Encoded]) -> Any:
        """Rows right-padded (compression needs it, as the reference's does); one pass to the cutoff."""
        import torch

        ids, mask = right_padded(batch, self.pairs.pad_id)
        queries = [e.prefix for e in batch]
        prompts = [self.suffix_tokens] * len(batch)
        with torch.inference_mode():
            return model.score(ids, mask, queries, prompts, self.compress_layers, self.config.compress_ratio)


class LightweightNetwork:
    """The model up to the cutoff layer: embeddings, transformers 5's Gemma 2 decoder layers, the final
    norm and the scoring head, with the weights of those parts read from the folder's safetensors."""

    def __init__(
        self, folder: Path, model_config: dict[str, Any], cutoff: int, device: str, dtype: str
    ) -> None:
        import torch
        from torch import nn
        from transformers.models.gemma2.modeling_gemma2 import (
            Gemma2DecoderLayer,
            Gemma2RMSNorm,
            Gemma2RotaryEmbedding,
        )

        self.torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        self.device = torch.device(device)
        self.cutoff = cutoff
        config = gemma2_config(model_config)
        self.config = config
        self.hidden_size = int(config.hidden_size)
        self.sliding_window: int | None = model_config.get("sliding_window")
        self.softcap: float | None = model_config.get("final_logit_softcapping")
        with torch.device("meta"):
            modules = nn.ModuleDict(
                {
                    "embed_tokens": nn.Embedding(config.vocab_size, config.hidden_size),
                    "layers": nn.ModuleList(Gemma2DecoderLayer(config, i) for i in range(cutoff)),
                    "norm": Gemma2RMSNorm(config.hidden_size, eps=config.rms_norm_eps),
                    "head": nn.Linear(config.hidden_size, 1, bias=False),
                }
            )
        try:
            modules.load_state_dict(read_weights(folder, cutoff, self.torch_dtype), strict=True, assign=True)
        except RuntimeError as exc:  # missing or misshapen tensors
            text = " ".join(str(exc).split())[:300]
            raise ModelError(f"{folder}'s weights do not fit its config.json: {text}") from exc
        self.modules: Any = modules.to(self.device).eval()
        self.rotary = Gemma2RotaryEmbedding(config).to(self.device)

    def score(self, ids: Any, mask: Any, queries: list[int], prompts: list[int],
              compress_layers: Sequence[int], ratio: int) -> Any:  # fmt: skip
        """Each row's head logit (fp32, on the CPU) at its last real token."""
        import torch

        hidden = self.modules["embed_tokens"](ids.to(self.device))
        hidden = hidden * torch.tensor(self.hidden_size**0.5, dtype=hidden.dtype)
        mask = mask.to(self.device)
        stage = self._stage(hidden, mask)
        for idx in range(self.cutoff):
            if idx in compress_layers:
                hidden, mask = compress(hidden, mask, queries, prompts, ratio)
                stage = self._stage(hidden, mask)
            masks, positions, rotary = stage
            hidden = self.modules["layers"][idx](
                hidden,
                position_embeddings=rotary,
                attention_mask=masks[sliding(idx)],
                position_ids=positions,
            )
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, mask.sum(dim=1) - 1]
        logits = self.modules["head"](self.modules["norm"](last))
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()[:, 0].cpu()

    def _stage(self, hidden: Any, mask: Any) -> tuple[dict[bool, Any], Any, Any]:
        """For a sequence length: the (full, sliding-window) additive masks, positions and rotary cos/sin."""
        import torch

        width = hidden.shape[1]
        positions = torch.arange(width, device=hidden.device).unsqueeze(0)
        query = positions[0].unsqueeze(1)
        key = positions[0].unsqueeze(0)
        allowed = (key <= query).unsqueeze(0) & mask.bool()[:, None, :]  # (rows, width, width)
        masks = {False: allowed}
        if self.sliding_window is not None:
            masks[True] = allowed & (query - key < self.sliding_window).unsqueeze(0)
        else:
            masks[True] = allowed
        low = torch.finfo(hidden.dtype).min
        additive = {
            kind: torch.zeros(m.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(~m, low)[:, None]
            for kind, m in masks.items()
        }
        return additive, positions, self.rotary(hidden, positions)


def gemma2_config(model_config: dict[str, Any]) -> Any:
    """A transformers 5 ``Gemma2Config`` with the model's shape, and the attention transformers 4.46 ran."""
    from transformers import Gemma2Config

    attention = attention_kind(model_config)
    known = {
        key: model_config[key]
        for key in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "attention_bias",
            "query_pre_attn_scalar", "sliding_window", "final_logit_softcapping",
        )
        if model_config.get(key) is not None
    }  # fmt: skip
    config = Gemma2Config(
        **known,
        hidden_activation=model_config.get("hidden_activation") or model_config.get("hidden_act")
        or "gelu_pytorch_tanh",
        rope_parameters={"rope_type": "default", "rope_theta": float(model_config.get("rope_theta", 10000.0))},
        attention_dropout=0.0,
        # transformers 4.46's SDPA attention never soft-caps (and transformers 5's refuses to be asked)
        attn_logit_softcapping=model_config.get("attn_logit_softcapping") if attention == "eager" else None,
    )  # fmt: skip
    config._attn_implementation = attention
    return config


def read_weights(folder: Path, cutoff: int, dtype: Any) -> dict[str, Any]:
    """The state of the modules :class:`LightweightNetwork` holds, read from the folder's safetensors
    (one file or shards): the embeddings, layers ``0..cutoff-1``, the final norm and ``lm_head.0``."""
    from safetensors import safe_open

    from ..hub import weight_files

    files = weight_files(folder)
    if not files:
        raise ModelError(f"{folder} has no safetensors weights (model.safetensors or its index).",
                         hint="bge-rerank reads the lightweight reranker's weights from safetensors files.")  # fmt: skip

    def wanted(key: str) -> str | None:
        if key in ("model.embed_tokens.weight", "model.norm.weight"):
            return key.removeprefix("model.")
        if key == "lm_head.0.linear_head.weight":
            return "head.weight"
        if key.startswith("model.layers."):
            layer = key.split(".")[2]
            if layer.isdigit() and int(layer) < cutoff:
                return key.removeprefix("model.")
        return None

    state: dict[str, Any] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as found:
            for key in found.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                name = wanted(key)
                if name is not None:
                    state[name] = found.get_tensor(key).to(dtype)
    missing = [name for name in ("embed_tokens.weight", "norm.weight", "head.weight") if name not in state]
    if missing:
        raise ModelError(f"{folder}'s weights lack {', '.join(missing)}: not a lightweight reranker's.")
    return state


def compress(hidden: Any, mask: Any, queries: list[int], prompts: list[int], ratio: int) -> tuple[Any, Any]:
    """FlagEmbedding's ``token_compress``: per row, the query part, the passage's tokens as the means of
    each ``ratio`` consecutive ones (each token weighted by one over its group's real tokens, then summed,
    as the reference computes it), and the prompt part; right-padded with zeros to the longest row."""
    import torch

    lengths = mask.sum(dim=1).tolist()
    rows = []
    for row, (length, query, prompt) in enumerate(zip(lengths, queries, prompts, strict=True)):
        states = hidden[row]
        passage = length - query - prompt
        groups = -(-passage // ratio)
        padded = states.new_zeros((groups * ratio, states.shape[-1]))
        padded[:passage] = states[query : query + passage]
        weights = states.new_zeros(groups * ratio)
        weights[:passage] = 1
        weights = weights.view(groups, ratio)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).view(-1)
        means = (padded * weights.unsqueeze(-1)).view(groups, ratio, -1).sum(dim=1)
        rows.append(torch.cat([states[:query], means, states[query + passage : length]]))
    width = max(len(r) for r in rows)
    out = hidden.new_zeros((len(rows), width, hidden.shape[-1]))
    new_mask = mask.new_zeros((len(rows), width))
    for row, states in enumerate(rows):
        out[row, : len(states)] = states
        new_mask[row, : len(states)] = 1
    return out, new_mask
