"""Decoder (LLM) rerankers: each model's published prompt, and pairs to token ids on ``tokenizers`` alone.

A decoder reranker reads one prompt per pair and scores it by the logits of answer tokens at the last
position. Each :class:`PromptTemplate` is the model's own reference code, split into token pieces:

- ``qwen3-reranker`` (Qwen/Qwen3-Reranker-0.6B/4B/8B, from the model card): ``prefix`` + tokens of
  ``"<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}"`` + ``suffix``; score P("yes")
  of the softmax over the "no"/"yes" logits, so ``logit = z_yes - z_no`` and ``score = sigmoid(logit)``.
- ``bge-gemma`` (BAAI/bge-reranker-v2-gemma, FlagEmbedding's ``FlagLLMReranker``): ``<bos>`` +
  ``"A: {query}"`` + ``"\\n"`` + ``"B: {passage}"`` + ``"\\n"`` + the prompt; ``logit = z_Yes``, and
  ``score = sigmoid(logit)`` (FlagEmbedding's ``normalize=True``).
- ``mxbai-v2`` (mixedbread-ai/mxbai-rerank-base-v2 / -large-v2, the ``mxbai-rerank`` package's
  ``MxbaiRerankV2``): the Qwen chat prefix + ``"query: {query}"`` (``"instruction: {instruction}\\nquery:
  {query}"`` with an instruction) + ``"\\n"`` + ``"document: {passage}"`` + ``"\\n"`` + its task prompt +
  the chat suffix, each piece tokenised apart as the package does; ``logit = z_"1" - z_"0"``, so
  ``score = sigmoid(logit)`` (the package's raw score is that logit). Its query cap counts the
  ``"query: "`` part too and cuts token ids, and its ``max_length`` leaves the fixed pieces out: here
  ``--max-length`` counts them (as for the other templates), and the default query cap is three quarters
  of what is left, which is the package's ``max_length * 3 // 4``.

Qwen3's reference tokenises the formatted text as one string; we tokenise the part up to
``"<Document>:"`` and ``" " + doc`` apart, which gives the same ids because Qwen's pre-tokenizer never
joins ``":"`` and the space after it (``tests/test_decoders.py`` checks it against the reference).

Every token before the passage is the same for all passages of one query: :attr:`Encoded.prefix` counts
them, so a backend can compute their key/value states once per query. ``max_length`` counts every
token, the template's included; the template is never cut, the query is capped first (``query_cap``) and
the passage gets the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import InvalidOption, ModelError, option
from ..records import Pair
from .base import Encoded
from .tokenization import clip_texts

QWEN3_SYSTEM = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)
LIGHTWEIGHT_PROMPT = "Predict whether passage B contains an answer to query A."
MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your "
    "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class PromptTemplate:
    """One model family's prompt, as pieces tokenised apart (``{instruction}``/``{query}`` filled in).

    ``head`` holds the query; ``passage_prefix`` is glued to the passage text before tokenising it;
    ``true_token``/``false_token`` are the answer tokens (logit = z_true - z_false, or z_true alone).
    """

    name: str
    default_instruction: str
    prefix: str  # tokenised on its own (special tokens in it are parsed)
    head: str  # "{instruction}" and "{query}" filled in, then tokenised
    passage_prefix: str
    suffix: str  # tokenised on its own, after the passage; "{instruction}" filled in
    true_token: str
    false_token: str | None
    bos: bool = False  # the tokenizer's BOS id first
    sep: str = ""  # tokenised on its own, between the query part and the passage, and before the suffix
    suffix_pieces: tuple[str, ...] = ()  # more of the suffix, after ``suffix``, each tokenised on its own
    head_instructed: str | None = None  # the head when an instruction is given (else ``head`` is used)
    cap_head: bool = False  # the query cap cuts the head's ids ("query: " counted), not the query's text
    head_scored: bool = False  # scored by a per-layer head at the last token, not by answer-token logits

    def fixed_text(self, instruction: str) -> tuple[str, str]:
        return self.prefix.format(instruction=instruction), self.suffix.format(instruction=instruction)

    def head_for(self, instruction: str) -> str:
        return self.head_instructed if instruction and self.head_instructed else self.head


TEMPLATES = {
    "qwen3-reranker": PromptTemplate(
        name="qwen3-reranker",
        default_instruction=QWEN3_INSTRUCTION,
        prefix=QWEN3_SYSTEM,
        head="<Instruct>: {instruction}\n<Query>: {query}\n<Document>:",
        passage_prefix=" ",
        suffix=QWEN3_SUFFIX,
        true_token="yes",
        false_token="no",
    ),
    "bge-gemma": PromptTemplate(
        name="bge-gemma",
        default_instruction=GEMMA_PROMPT,
        prefix="",
        head="A: {query}",
        passage_prefix="B: ",
        suffix="{instruction}",
        true_token="Yes",
        false_token=None,
        bos=True,
        sep="\n",  # between query and passage, its own token piece (FlagEmbedding's sep_inputs)
    ),
    "mxbai-v2": PromptTemplate(
        name="mxbai-v2",
        default_instruction="",  # none: the head is "query: {query}"
        prefix=MXBAI_PREFIX,
        head="query: {query}",
        head_instructed="instruction: {instruction}\nquery: {query}",
        passage_prefix="document: ",
        suffix=MXBAI_TASK,
        suffix_pieces=(MXBAI_SUFFIX,),
        true_token="1",
        false_token="0",
        sep="\n",
        cap_head=True,
    ),
}
# BGE's layerwise and lightweight rerankers: bge-gemma's layout (FlagEmbedding's ``LayerWiseLLMReranker`` and
# ``LightweightLLMReranker`` build it the same way), each with its own default prompt, scored by a layer's head.
for _name, _prompt in (("bge-layerwise", GEMMA_PROMPT), ("bge-lightweight", LIGHTWEIGHT_PROMPT)):
    TEMPLATES[_name] = replace(TEMPLATES["bge-gemma"], name=_name, default_instruction=_prompt, true_token="",
                               head_scored=True)  # fmt: skip


DECODER_TYPES = {"qwen3": "qwen3-reranker", "gemma": "bge-gemma", "gemma2": "bge-gemma", "minicpm": "bge-layerwise",
                 "cost_wise_gemma": "bge-lightweight"}  # fmt: skip
# The architectures each prompt is scored on (a model recognised by its type or name must be one).
ARCHITECTURES = {
    "qwen3-reranker": {"Qwen3ForCausalLM"},
    "bge-gemma": {"GemmaForCausalLM", "Gemma2ForCausalLM"},
    "mxbai-v2": {"Qwen2ForCausalLM"},
    "bge-layerwise": {"LayerWiseMiniCPMForCausalLM"},
    "bge-lightweight": {"CostWiseGemmaForCausalLM"},
}
# Families whose models are defined by code in their repositories (auto_map): BGE's layerwise (MiniCPM
# with a head per layer) and lightweight (Gemma 2 with token compression) rerankers.
REMOTE_CODE = {"bge-layerwise", "bge-lightweight"}
# A causal LM of another type is named by its model id; a Qwen2 model could be many things, so an
# mxbai v2 under another name needs --template mxbai-v2.
NAMED = (("layerwise", "bge-layerwise"), ("lightweight", "bge-lightweight"), ("qwen3", "qwen3-reranker"),
         ("gemma", "bge-gemma"), ("mxbai-rerank", "mxbai-v2"))  # fmt: skip


def model_template(requested: str, model: str, model_config: Any) -> str:
    """The template a model runs with: ``requested`` unless ``auto``; then a sequence classifier is a
    cross-encoder, and a causal LM is named by its ``model_type`` (qwen3 → ``qwen3-reranker``, gemma →
    ``bge-gemma``) or, failing that, by its name. Raises :class:`ModelError` for a mismatch."""
    architectures = list(getattr(model_config, "architectures", None) or [])
    causal = any(a.endswith("ForCausalLM") for a in architectures)
    kind = ", ".join(architectures) or "unknown"
    choices = ", ".join(TEMPLATES)
    if requested == "cross-encoder" and causal:
        raise ModelError(
            f"{model} is a causal language model ({kind}), not a cross-encoder.",
            hint=f"Give {option('template')} one of {choices}, or leave it at auto.",
        )
    if requested in TEMPLATES and not causal:
        raise ModelError(
            f"{option('template', requested)} needs a causal language model; {model} is {kind}.",
            hint=f"Leave {option('template')} at auto for a cross-encoder.",
        )
    if requested != "auto":
        return requested
    if not causal:
        return "cross-encoder"
    found, by = DECODER_TYPES.get(str(getattr(model_config, "model_type", ""))), "type"
    if found is None:
        found, by = next((t for key, t in NAMED if key in model.lower()), None), "name"
    if found is None:
        raise ModelError(
            f"{model} is a causal language model ({kind}) whose reranking prompt bge-rerank does not know.",
            hint=f"If it was trained with one of these prompts, name it with {option('template')}: {choices}.",
        )
    custom = bool(getattr(model_config, "auto_map", None)) and found not in REMOTE_CODE
    if custom or not set(architectures) & ARCHITECTURES[found]:
        # Its type or name says one family, but it runs other code (BGE's layerwise and lightweight
        # rerankers are MiniCPM/Gemma2 with heads and token compression of their own): never a guess.
        runs = f"{kind} with code of its own (auto_map)" if custom else kind
        raise ModelError(
            f"{model} looks like a {found} reranker by its {by}, but it is {runs}, not the "
            f"{' or '.join(sorted(ARCHITECTURES[found]))} that prompt is scored on; bge-rerank does not score it.",
            hint=f"If it is one of those models all the same, name the prompt: {option('template', found)}.",
        )
    return found


def answer_ids(template: PromptTemplate, tokenizer_json: str) -> tuple[int, int | None]:
    """The vocabulary ids of the answer tokens, as the reference code finds them."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)

    def first(text: str) -> int:
        if template.name == "qwen3-reranker":  # convert_tokens_to_ids("yes"): the vocabulary entry
            found = tok.token_to_id(text)
            if found is not None:
                return int(found)
        ids = tok.encode(text, add_special_tokens=False).ids  # tokenizer("Yes")["input_ids"][0]
        if not ids:
            raise InvalidOption("template", f"{template.name}: the tokenizer has no token for {text!r}.")
        return int(ids[0])

    return first(template.true_token), (None if template.false_token is None else first(template.false_token))


class PromptTokenizer:
    """Pairs to prompt token ids for one decoder template (the decoder twin of ``PairTokenizer``)."""

    use_type_ids = False

    def __init__(
        self,
        tokenizer_json: str,
        template: PromptTemplate,
        *,
        instruction: str | None,
        max_length: int,
        query_cap: int,
        pad_id: int,
        bos_id: int | None,
        query_max_length: int | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(tokenizer_json)
        self._tok.no_truncation()
        self._tok.no_padding()
        self.template = template
        self.instruction = template.default_instruction if instruction is None else instruction
        self.max_length = max_length
        self.pad_id = pad_id
        prefix_text, suffix_text = template.fixed_text(self.instruction)
        self._prefix = ([bos_id] if template.bos and bos_id is not None else []) + self._ids(prefix_text)
        self._sep = self._ids(template.sep)
        # bge-gemma: "\n" + prompt; mxbai-v2: "\n" + task prompt + chat suffix; Qwen3: its suffix.
        self._suffix = self._sep + self._ids(suffix_text)
        for piece in template.suffix_pieces:
            self._suffix += self._ids(piece)
        self._marker = self._ids(template.passage_prefix.strip()) if template.passage_prefix.strip() else []
        self._head = template.head_for(self.instruction)
        empty_head = (
            [] if template.cap_head else self._ids(self._head.format(instruction=self.instruction, query=""))
        )
        # The template's own tokens: never cut. What is left holds the query (up to its cap) and the passage;
        # with ``cap_head`` the head's own words count as query.
        self.template_tokens = len(self._prefix) + len(empty_head) + len(self._sep) + len(self._suffix)
        room = max_length - self.template_tokens
        if template.cap_head:  # the package's max_length: what the head, the separator and the passage share
            query_cap = query_max_length or (max_length - len(self._prefix) - len(self._suffix)) * 3 // 4
        if room < 8:
            raise InvalidOption(
                "max_length",
                f"must leave room for the query and passage beside the {template.name} prompt's "
                f"{self.template_tokens} tokens: at least {self.template_tokens + 8}, got {max_length}.",
            )
        self.query_cap = max(1, min(query_cap, room - 4))

    def _ids(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids) if text else []

    def _heads(self, pairs: Sequence[Pair]) -> dict[str, tuple[list[int], int]]:
        """Each distinct query's prefix ids (template, instruction, query cut to its cap), and the
        query tokens cut."""
        out: dict[str, tuple[list[int], int]] = {}
        queries = list(dict.fromkeys(p.query for p in pairs))
        if self.template.cap_head:  # the head's ids ("query: " counted), cut at the cap
            heads = [self._head.format(instruction=self.instruction, query=q) for q in queries]
            for query, enc in zip(
                queries, self._tok.encode_batch(heads, add_special_tokens=False), strict=True
            ):
                out[query] = (
                    self._prefix + enc.ids[: self.query_cap] + self._sep,
                    max(0, len(enc.ids) - self.query_cap),
                )
            return out
        for query, enc in zip(
            queries, self._tok.encode_batch(queries, add_special_tokens=False), strict=True
        ):
            dropped = max(0, len(enc.ids) - self.query_cap)
            text = query
            if dropped:
                text = query[: enc.offsets[self.query_cap - 1][1]]
            head = self._ids(self._head.format(instruction=self.instruction, query=text))
            out[query] = (self._prefix + head + self._sep, dropped)
        return out

    def _passages(self, pairs: Sequence[Pair]) -> list[Any]:
        texts = [self.template.passage_prefix + p.passage for p in pairs]
        return list(self._tok.encode_batch(texts, add_special_tokens=False))

    def encode(self, pairs: Sequence[Pair]) -> list[Encoded]:
        heads = self._heads(pairs)
        out = []
        for pair, passage in zip(pairs, self._passages(pairs), strict=True):
            head, query_dropped = heads[pair.query]
            room = max(0, self.max_length - len(head) - len(self._suffix))
            ids = passage.ids[:room]
            out.append(
                Encoded(
                    head + ids + self._suffix,
                    dropped_tokens=len(passage.ids) - len(ids),
                    query_dropped=query_dropped,
                    prefix=len(head),
                )
            )
        return out

    def encode_windows(self, pairs: Sequence[Pair], *, overlap: int, max_chunks: int) -> list[list[Encoded]]:
        """Per pair, the passage in overlapping windows that each fit beside the prompt; windows after
        the first start with the passage marker again (``B:`` for bge-gemma)."""
        heads = self._heads(pairs)
        shift = len(self.template.passage_prefix)
        out = []
        for pair, passage in zip(pairs, self._passages(pairs), strict=True):
            head, query_dropped = heads[pair.query]
            room = max(1, self.max_length - len(head) - len(self._suffix))
            ids, offsets = passage.ids, passage.offsets
            if len(ids) <= room:
                enc = Encoded(head + ids + self._suffix, query_dropped=query_dropped, prefix=len(head),
                              span=(0, len(pair.passage)))  # fmt: skip
                out.append([enc])
                continue
            inner = max(1, room - len(self._marker))
            shared = min(overlap, inner // 2)  # windows must advance
            bounds = [(0, room)]
            while bounds[-1][1] < len(ids) and len(bounds) < max_chunks:
                start = bounds[-1][1] - shared
                bounds.append((start, min(start + inner, len(ids))))
            windows = []
            for n, (start, end) in enumerate(bounds):
                piece = ids[start:end] if n == 0 else self._marker + ids[start:end]
                span = (max(0, offsets[start][0] - shift), max(0, offsets[end - 1][1] - shift))
                windows.append((piece, span))
            dropped = len(ids) - bounds[-1][1]
            out.append(
                [
                    Encoded(head + piece + self._suffix, None, dropped, query_dropped, span, len(head))
                    for piece, span in windows
                ]
            )
        return out

    def clip(self, texts: Sequence[str], max_tokens: int) -> list[tuple[str, int]]:
        return clip_texts(self._tok, texts, max_tokens)
