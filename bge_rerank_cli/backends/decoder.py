"""Decoder (LLM) rerankers on torch: the causal LM sentence-transformers loads, run as a one-logit classifier.

The reference scores (see :mod:`.prompts`) read two entries of the full-vocabulary logits at the last
position. Those are ``hidden @ W[yes]`` and ``hidden @ W[no]``, so the LM head folds into one row,
``W[yes] - W[no]`` (or ``W[Yes]`` alone), and the model runs as a sequence classifier: no vocabulary
projection at all (vLLM's and infinity's conversion does the same). A model with final-logit
soft-capping (Gemma 2) keeps both rows and caps each logit as its reference does.

Batches are left-padded, positions counted from each row's first real token. The prompt's part before
the passage (:attr:`Encoded.prefix`) is the same for every passage of a query: its key/value states are
computed once per query and reused by each batch that holds its passages (``prefix_reuse``).
"""

from __future__ import annotations

import inspect
import types
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ..config import LoaderConfig
from .base import Encoded
from .families import Family
from .hf import decoder_facts, load_cross_encoder
from .prompts import TEMPLATES, answer_ids
from .tokenized import TokenizedScorer

# Prefix key/value states kept for reuse across batches (a query's passages may span several batches).
PREFIX_CACHE_BYTES = 256 * 2**20


class FoldedModel:
    """A causal LM's decoder body plus its LM head folded to the answer rows: ``logits(hidden)``."""

    def __init__(self, causal_lm: Any, true_id: int, false_id: int | None) -> None:
        import torch

        self.body = causal_lm.get_decoder()
        head = causal_lm.get_output_embeddings()
        rows = [true_id] if false_id is None else [true_id, false_id]
        weight = head.weight.detach()[rows].float()
        bias = getattr(head, "bias", None)
        self.bias = None if bias is None else bias.detach()[rows].float()
        self.softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
        if false_id is not None and self.softcap is None and self.bias is None:
            weight = (weight[0] - weight[1]).unsqueeze(0)  # z_yes - z_no in one row
        self.weight = weight  # (1 or 2, hidden), fp32
        self.config = self.body.config
        self.device = next(self.body.parameters()).device
        self._torch = torch
        # transformers 5.24 renamed the cache argument (``past_key_values`` until 5.40) and output.
        forward = inspect.signature(self.body.forward).parameters
        self.cache_arg = "cache" if "cache" in forward else "past_key_values"

    def logits(self, hidden: Any) -> Any:
        """The log-odds per row from last-position hidden states (fp32)."""
        z = hidden.float() @ self.weight.T
        if self.bias is not None:
            z = z + self.bias
        if self.softcap:
            z = self._torch.tanh(z / self.softcap) * self.softcap
        return z[:, 0] if z.shape[1] == 1 else z[:, 0] - z[:, 1]


def load(config: LoaderConfig, family: Family, device: str, dtype: str, ce: Any = None) -> DecoderScorer:
    """The registry's loader for the decoder prompts (``ce``: the model when it is loaded already)."""
    if ce is None:
        ce = load_cross_encoder(config, device, dtype)
    return DecoderScorer(config, ce, device, dtype, family.name)


class DecoderScorer(TokenizedScorer):
    """Scores prompts of a decoder template with the folded model (see the module docs)."""

    def __init__(self, config: LoaderConfig, ce: Any, device: str, dtype: str, template: str) -> None:
        facts = decoder_facts(ce)
        self._setup_prompt(config, template, **facts)
        self.device = device
        self.dtype = dtype
        self.true_id, self.false_id = answer_ids(TEMPLATES[template], facts["tokenizer_json"])
        self._model = FoldedModel(ce[0].model, self.true_id, self.false_id)
        self._fp32: FoldedModel | None = None
        self._prefixes: OrderedDict[tuple[int, ...], list[tuple[Any, Any]]] = OrderedDict()
        self._prefix_bytes = 0
        self.fp32_fallbacks = 0
        self.prefix_hits = 0  # passages scored on a reused prefix
        self.prefix_runs = 0  # prefixes computed

    @property
    def fill_tokens(self) -> int:
        """Unlike an encoder's, a decoder's tokens/s on the CPU keeps growing with the batch (measured on
        the Qwen3-Reranker-0.6B shape: 25 tokens/s at 256 tokens per pass, 54 at 2048), so its batches
        fill up as on a GPU; a batch holds one query's passages, sorted by length, so padding stays low."""
        return self.batch_tokens // 4

    @property
    def groups_prefixes(self) -> bool:
        """Ask the engine for batches of one query's passages (see ``engine.token_batches``)."""
        return self.config.prefix_reuse

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prefix_reuse": self.config.prefix_reuse}

    def logits(self, batch: Sequence[Encoded]) -> list[float]:
        from .torch_scorer import guarded_logits

        return guarded_logits(
            self,
            lambda: self._logits(self._model, batch),
            lambda: self._logits(self._fp32_model(), batch, reuse=False),
            on_oom=self._forget_prefixes,
        )

    def _logits(self, model: FoldedModel, batch: Sequence[Encoded], *, reuse: bool | None = None) -> Any:
        import torch

        with torch.inference_mode():
            if reuse is None:
                reuse = self._worth_reusing(batch)
            hidden = self._reused(model, batch) if reuse else self._full(model, batch)
            return model.logits(hidden).cpu()

    def _worth_reusing(self, batch: Sequence[Encoded]) -> bool:
        """Reuse pays when passages share prefixes (or their prefixes are cached already)."""
        if not self.config.prefix_reuse or any(e.prefix <= 0 or e.prefix >= len(e.ids) for e in batch):
            return False
        keys = {e.prefix_key for e in batch}
        return len(batch) >= 2 * len(keys) or all(k in self._prefixes for k in keys)

    def _full(self, model: FoldedModel, batch: Sequence[Encoded]) -> Any:
        """Whole prompts, left-padded; positions count from each row's first token."""
        import torch

        width = max(len(e.ids) for e in batch)
        ids = torch.full((len(batch), width), self.pairs.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, enc in enumerate(batch):
            ids[row, width - len(enc.ids) :] = torch.tensor(enc.ids)
            mask[row, width - len(enc.ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model.body(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            position_ids=positions.to(model.device),
            use_cache=False,
        )
        return out.last_hidden_state[:, -1]

    def _prefix_states(self, model: FoldedModel, key: tuple[int, ...]) -> list[tuple[Any, Any]]:
        """The key/value states of one prefix, per layer ``(keys, values)`` of shape (1, heads, len, dim)."""
        import torch

        cached = self._prefixes.get(key)
        if cached is not None:
            self._prefixes.move_to_end(key)
            return cached
        ids = torch.tensor([key], dtype=torch.long, device=model.device)
        positions = torch.arange(len(key), device=model.device).unsqueeze(0)
        out = model.body(input_ids=ids, position_ids=positions, use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        states = [(layer.keys, layer.values) for layer in cache.layers]
        self.prefix_runs += 1
        self._prefixes[key] = states
        self._prefix_bytes += _nbytes(states)
        while self._prefix_bytes > PREFIX_CACHE_BYTES and len(self._prefixes) > 1:
            _, old = self._prefixes.popitem(last=False)
            self._prefix_bytes -= _nbytes(old)
        return states

    def _forget_prefixes(self) -> None:
        self._prefixes.clear()
        self._prefix_bytes = 0

    def _reused(self, model: FoldedModel, batch: Sequence[Encoded]) -> Any:
        """Only the passage-and-suffix tokens run; each row attends to its query's cached prefix.

        Prefixes are left-padded to the longest in the batch, the rest of each row left-padded after
        them; the mask hides both paddings and positions continue from the row's own prefix length.
        """
        import torch
        from transformers import DynamicCache

        keys = [e.prefix_key for e in batch]
        states = {key: self._prefix_states(model, key) for key in dict.fromkeys(keys)}
        self.prefix_hits += len(batch)
        rows = len(batch)
        span = max(len(k) for k in keys)  # prefix slots
        width = max(len(e.ids) - e.prefix for e in batch)  # new tokens
        ids = torch.full((rows, width), self.pairs.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, span + width), dtype=torch.long)
        positions = torch.zeros((rows, width), dtype=torch.long)
        for row, (enc, key) in enumerate(zip(batch, keys, strict=True)):
            rest = enc.ids[enc.prefix :]
            ids[row, width - len(rest) :] = torch.tensor(rest)
            mask[row, span - len(key) : span] = 1
            mask[row, span + width - len(rest) :] = 1
            positions[row, width - len(rest) :] = torch.arange(len(key), len(key) + len(rest))
        if len(states) == 1:
            # One query's passages (what token_batches makes): every row has the same prefix. Its states
            # stay (1, heads, len, dim); each layer's update broadcasts them to the rows as it runs, so
            # no layer holds a rows-sized copy of the prefix for the whole pass.
            layers = next(iter(states.values()))
        else:
            layers = []
            for layer in range(len(next(iter(states.values())))):
                k0, v0 = states[keys[0]][layer]
                k = k0.new_zeros((rows, k0.shape[1], span, k0.shape[3]))
                v = v0.new_zeros((rows, v0.shape[1], span, v0.shape[3]))
                for key, value in states.items():
                    members = [r for r, other in enumerate(keys) if other == key]
                    k[members, :, span - len(key) :] = value[layer][0]
                    v[members, :, span - len(key) :] = value[layer][1]
                layers.append((k, v))
        cache = DynamicCache(ddp_cache_data=layers, config=model.config)
        for cached in cache.layers:  # serve the prefix; keep none of the batch's own keys/values
            cached.update = types.MethodType(_prefix_only_update, cached)  # type: ignore[method-assign,union-attr]
        out = model.body(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            position_ids=positions.to(model.device),
            use_cache=True,
            **{model.cache_arg: cache},
        )
        return out.last_hidden_state[:, -1]

    def _fp32_model(self) -> FoldedModel:
        """The same model loaded again in fp32 (from its files, not upcast from half-precision weights)."""
        if self._fp32 is None:
            ce = load_cross_encoder(self.config, self.device, "fp32")
            self._fp32 = FoldedModel(ce[0].model, self.true_id, self.false_id)
        return self._fp32


def _nbytes(states: list[tuple[Any, Any]]) -> int:
    """Bytes held by one prefix's per-layer (keys, values)."""
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in states)


def _prefix_only_update(layer: Any, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
    """A cache layer's ``update`` that returns prefix + new keys/values without storing them: a scoring
    pass never decodes a next token, so each layer's batch keys/values can go as soon as it is done
    (a stored cache would hold every layer's, ~1.7 GB for 20 passages of 300 tokens on Qwen3-0.6B)."""
    import torch

    rows = key_states.shape[0]
    keys, values = layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1)
    return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)
