"""The decoder rerankers' published reference code, written out on transformers alone (no bge-rerank):
what ``tests/test_decoders.py`` checks our scores against and what ``bench/speed.py --model-kind qwen3``
measures ours against.

- :class:`Qwen3ModelCard`: the Qwen3-Reranker model card's ``format_instruction`` / ``process_inputs`` /
  ``compute_logits`` (left padding, full-vocabulary logits, P("yes") of the softmax over no/yes).
- :func:`flag_llm_reranker`: FlagEmbedding 1.4.2's ``BaseLLMReranker.compute_score_single_gpu`` (the
  ``FlagLLMReranker`` of bge-reranker-v2-gemma) with ``normalize=True``, its ``prepare_for_model``
  truncation spelled out as FlagEmbedding's transformers-5 shim does it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_TASK = "Given a web search query, retrieve relevant passages that answer the query"
GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)


class Qwen3ModelCard:
    """The model card's code for one model directory (fp32, CPU)."""

    def __init__(self, model: str | Path, *, max_length: int = 8192, instruction: str | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.prefix_tokens = self.tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)
        self.max_length = max_length
        self.instruction = QWEN3_TASK if instruction is None else instruction

    def format_instruction(self, query: str, doc: str) -> str:
        return f"<Instruct>: {self.instruction}\n<Query>: {query}\n<Document>: {doc}"

    def process_inputs(self, pairs: Sequence[str]) -> Any:
        inputs = self.tokenizer(
            list(pairs),
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        return self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=self.max_length)

    def compute_logits(self, inputs: Any) -> list[float]:
        import torch

        with torch.no_grad():
            batch_scores = self.model(**inputs).logits[:, -1, :]
            true_vector = batch_scores[:, self.token_true_id]
            false_vector = batch_scores[:, self.token_false_id]
            stacked = torch.stack([false_vector, true_vector], dim=1)
            return torch.nn.functional.log_softmax(stacked, dim=1)[:, 1].exp().tolist()

    def ids(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        """Each pair's unpadded input ids."""
        inputs = self.process_inputs([self.format_instruction(q, d) for q, d in pairs])
        return [
            row[mask.bool()].tolist()
            for row, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
        ]

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """All pairs as one batch, as the card scores its list of pairs."""
        return self.compute_logits(self.process_inputs([self.format_instruction(q, d) for q, d in pairs]))

    def score_per_query(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """The card's code run the way a rerank loop runs it: each query's documents as one batch."""
        out = [0.0] * len(pairs)
        for query in dict.fromkeys(q for q, _ in pairs):
            rows = [i for i, (q, _) in enumerate(pairs) if q == query]
            for i, value in zip(rows, self.score([pairs[i] for i in rows]), strict=True):
                out[i] = value
        return out


def flag_llm_reranker(
    model: str | Path, pairs: Sequence[tuple[str, str]], prompt: str | None = None, max_length: int = 512
) -> tuple[list[float], list[list[int]]]:
    """FlagEmbedding's ``FlagLLMReranker.compute_score(pairs, normalize=True)``: scores and input ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    yes_loc = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    prompt_inputs = tokenizer(GEMMA_PROMPT if prompt is None else prompt, add_special_tokens=False)[
        "input_ids"
    ]
    sep_inputs = tokenizer("\n", add_special_tokens=False)["input_ids"]
    encode_max_length = max_length + len(sep_inputs) + len(prompt_inputs)
    items = []
    for q, p in pairs:
        qi = tokenizer(f"A: {q}", add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)
        pi = tokenizer(f"B: {p}", add_special_tokens=False, max_length=max_length, truncation=True)
        first, second = [tokenizer.bos_token_id] + qi["input_ids"], sep_inputs + pi["input_ids"]
        extra = len(first) + len(second) - encode_max_length  # prepare_for_model(truncation="only_second")
        if 0 < extra < len(second):
            second = second[:-extra]
        ids = first + second + sep_inputs + prompt_inputs
        items.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({k: [it[k] for it in items] for k in items[0]}, padding=True, pad_to_multiple_of=8,
                          return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        scores = lm(**batch).logits[:, -1, yes_loc].float()
    return [float(torch.sigmoid(s)) for s in scores], [it["input_ids"] for it in items]
