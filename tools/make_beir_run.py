"""Regenerate sample_data/beir-sample/bm25.run: a BM25 first stage (bm25s) over the sample corpus.

python -m tools.make_beir_run
"""

from __future__ import annotations

from pathlib import Path

from bge_rerank_cli.demo import bm25_scores
from bge_rerank_cli.ir import RunEntry, read_corpus, read_queries, trec_lines

ROOT = Path(__file__).resolve().parent.parent / "sample_data" / "beir-sample"
DEPTH = 20


def main() -> None:
    corpus = read_corpus(ROOT / "corpus.jsonl")
    queries = read_queries(ROOT / "queries.jsonl")
    ids = list(corpus)
    texts = [corpus[i].text for i in ids]
    lines: list[str] = []
    for qid, query in queries.items():
        scores = bm25_scores(query, texts)
        order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:DEPTH]
        entries = [RunEntry(ids[i], rank, scores[i]) for rank, i in enumerate(order, start=1)]
        lines += trec_lines(qid, entries, tag="bm25s")
    (ROOT / "bm25.run").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(ROOT / "bm25.run")


if __name__ == "__main__":
    main()
