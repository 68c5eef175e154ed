"""The ``mxbai-rerank`` package's own scoring, run unmodified in a venv of its own (it needs transformers
4): reads a JSON job on stdin, writes {"scores": [...], "ids": [[...], ...]} on stdout. No bge-rerank here.

    {"model": DIR, "max_length": N, "pairs": [[query, passage], ...], "instruction": null}

``scores`` are ``MxbaiRerankV2.predict`` (its raw logits: z_"1" - z_"0"); ``ids`` are the token ids of
each prompt it built (``prepare_inputs``, padding left out). tests/test_mxbai.py makes the venv.
"""

import json
import sys


def main() -> None:
    import torch
    from mxbai_rerank import MxbaiRerankV2

    job = json.loads(sys.stdin.read())
    reranker = MxbaiRerankV2(
        job["model"], device="cpu", torch_dtype=torch.float32, max_length=job["max_length"]
    )
    queries = [pair[0] for pair in job["pairs"]]
    passages = [pair[1] for pair in job["pairs"]]
    instruction = job.get("instruction")
    inputs = reranker.prepare_inputs(queries, passages, instruction=instruction)
    ids = [
        [token for token, kept in zip(row.tolist(), mask.tolist(), strict=True) if kept]
        for row, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
    ]
    scores = reranker.predict(queries, passages, instruction=instruction).tolist()
    json.dump({"scores": scores, "ids": ids}, sys.stdout)


if __name__ == "__main__":
    main()
