"""Information-retrieval formats and metrics: TREC runs and qrels, BEIR folders, ir-measures scores.

Reading is streaming where the files can be large (runs, corpora): a corpus is scanned once and only
the documents a run mentions are kept.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .errors import InputError, UsageError
from .records import Document, RerankItem, RerankResult

MEASURES = ("nDCG@10", "RR@10", "R@10", "R@100", "AP")
LABELS = {"nDCG@10": "nDCG@10", "RR@10": "MRR@10", "R@10": "Recall@10", "R@100": "Recall@100", "AP": "MAP"}


@dataclass(frozen=True, slots=True)
class RunEntry:
    docid: str
    rank: int
    score: float


Run = dict[str, list[RunEntry]]  # qid -> entries, best first
Qrels = dict[str, dict[str, int]]  # qid -> docid -> relevance


def _file(path: str | Path, what: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{what} {path} does not exist or is not a file.")
    return file


def read_run(path: str | Path, depth: int | None = None) -> Run:
    """A TREC run (``qid Q0 docid rank score tag``), each query's entries sorted by rank (then score)."""
    file = _file(path, "run")
    run: dict[str, list[RunEntry]] = defaultdict(list)
    with file.open("r", encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise InputError(
                    f"expected 6 columns (qid Q0 docid rank score tag), got {len(parts)}",
                    source=str(path),
                    line=number,
                )
            qid, _, docid, rank, score, _ = parts
            try:
                run[qid].append(RunEntry(docid, int(rank), float(score)))
            except ValueError:
                raise InputError(
                    "rank must be an integer and score a number", source=str(path), line=number
                ) from None
    out: Run = {}
    for qid, entries in run.items():
        entries.sort(key=lambda e: (e.rank, -e.score))
        out[qid] = entries[:depth] if depth else entries
    return out


def read_qrels(path: str | Path) -> Qrels:
    """TREC qrels (``qid iter docid rel``) or BEIR's TSV (``query-id corpus-id score`` with a header)."""
    file = _file(path, "qrels")
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with file.open("r", encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts or (number == 1 and parts[0] in ("query-id", "query_id", "qid")):
                continue
            if len(parts) == 4:
                qid, _, docid, rel = parts
            elif len(parts) == 3:
                qid, docid, rel = parts
            else:
                raise InputError(f"expected 3 or 4 columns, got {len(parts)}", source=str(path), line=number)
            try:
                qrels[qid][docid] = int(float(rel))
            except ValueError:
                raise InputError(
                    f"relevance {rel!r} is not a number", source=str(path), line=number
                ) from None
    return dict(qrels)


def read_queries(path: str | Path) -> dict[str, str]:
    """BEIR ``queries.jsonl`` (``_id``, ``text``) or a TSV of ``qid<TAB>text``."""
    file = _file(path, "queries")
    queries: dict[str, str] = {}
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith(b"{"):
                obj = _json(line, path, number)
                queries[str(obj.get("_id", obj.get("id")))] = str(obj.get("text", obj.get("query", "")))
            else:
                qid, _, text = line.decode("utf-8-sig").partition("\t")
                queries[qid] = text
    return queries


def read_corpus(path: str | Path, wanted: set[str] | None = None) -> dict[str, Document]:
    """BEIR ``corpus.jsonl``; the title is joined to the text as BEIR does (``title + " " + text``)."""
    file = _file(path, "corpus")
    corpus: dict[str, Document] = {}
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            obj = _json(raw, path, number)
            docid = str(obj.get("_id", obj.get("id")))
            if wanted is not None and docid not in wanted:
                continue
            title, text = str(obj.get("title") or ""), str(obj.get("text") or "")
            joined = (title + " " + text).strip() if title else text.strip()
            fields: dict[str, Any] = {"id": docid}
            if title:
                fields["title"] = title
            corpus[docid] = Document(0, joined, fields)
    return corpus


def _json(raw: bytes, path: str | Path, number: int) -> dict[str, Any]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg})", source=str(path), line=number) from None
    if not isinstance(obj, dict):
        raise InputError("expected a JSON object", source=str(path), line=number)
    return obj


def candidates(run: Run, corpus: Mapping[str, Document], queries: Mapping[str, str]) -> Iterator[RerankItem]:
    """One rerank group per query of the run, documents in first-stage order, with their first-stage rank."""
    for line, (qid, entries) in enumerate(run.items(), start=1):
        if qid not in queries:
            raise InputError(f"query {qid} of the run is not in the queries file", source="run")
        docs: list[Document] = []
        for entry in entries:
            doc = corpus.get(entry.docid)
            if doc is None:
                raise InputError(f"document {entry.docid} (query {qid}) is not in the corpus", source="run")
            fields = {**doc.fields, "first_stage_rank": entry.rank, "first_stage_score": entry.score}
            docs.append(Document(len(docs), doc.text, fields))
        yield RerankItem(line, queries[qid], tuple(docs), {"qid": qid, "query": queries[qid]})


def run_from_results(results: Iterable[RerankResult]) -> Run:
    """A run from reranked results: doc ids from the ``id`` field, else the input position."""
    run: Run = {}
    for result in results:
        qid = query_id(result.record, result.line)
        run[qid] = [RunEntry(doc_id(d.fields, d.index), d.rank, d.logit) for d in result.results]
    return run


def query_id(record: Mapping[str, Any], line: int) -> str:
    for key in ("qid", "query_id", "query-id", "_id"):
        if key in record:
            return str(record[key])
    return str(line)


def doc_id(fields: Mapping[str, Any], index: int) -> str:
    for key in ("id", "_id", "docid", "doc_id"):
        if key in fields:
            return str(fields[key])
    return str(index)


def trec_lines(qid: str, entries: Sequence[RunEntry], tag: str = "bge-rerank") -> list[str]:
    return [f"{qid} Q0 {e.docid} {e.rank} {e.score:.6f} {tag}" for e in entries]


def _scored_docs(run: Run) -> list[Any]:
    import ir_measures

    # Scores decide the order for trec_eval; derive them from ranks so ties cannot reorder a run.
    return [
        ir_measures.ScoredDoc(qid, e.docid, float(-e.rank)) for qid, entries in run.items() for e in entries
    ]


def _qrels(qrels: Qrels) -> list[Any]:
    import ir_measures

    return [ir_measures.Qrel(qid, docid, rel) for qid, docs in qrels.items() for docid, rel in docs.items()]


def measure(qrels: Qrels, run: Run) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Aggregate and per-query values of :data:`MEASURES`, computed by ir-measures (trec_eval)."""
    import ir_measures

    measures = [ir_measures.parse_measure(m) for m in MEASURES]
    judged = {qid: entries for qid, entries in run.items() if qid in qrels}
    if not judged:
        raise UsageError("no query of the run has relevance judgements in the qrels: check the query ids.")
    qrels_list, docs = _qrels(qrels), _scored_docs(judged)
    aggregate = {str(m): float(v) for m, v in ir_measures.calc_aggregate(measures, qrels_list, docs).items()}
    per_query: dict[str, dict[str, float]] = defaultdict(dict)
    for metric in ir_measures.iter_calc(measures, qrels_list, docs):
        per_query[metric.query_id][str(metric.measure)] = float(metric.value)
    return aggregate, dict(per_query)


@dataclass(frozen=True)
class RankChanges:
    queries: int
    replaced: frozenset[str]  # the queries whose first result reranking replaced
    mean_abs_shift: float

    @property
    def top1_replaced(self) -> int:
        return len(self.replaced)

    @property
    def top1_replacement_rate(self) -> float:
        return self.top1_replaced / self.queries if self.queries else 0.0


def rank_changes(before: Run, after: Run) -> RankChanges:
    """How much reranking moved things: which queries' first result it replaced, and the mean |rank
    change| per document (queries empty before or after are left out)."""
    replaced, shifts, queries = set(), [], 0
    for qid, after_entries in after.items():
        before_entries = before.get(qid)
        if not before_entries or not after_entries:
            continue
        queries += 1
        if before_entries[0].docid != after_entries[0].docid:
            replaced.add(qid)
        old = {e.docid: i for i, e in enumerate(before_entries)}
        shifts += [abs(i - old[e.docid]) for i, e in enumerate(after_entries) if e.docid in old]
    return RankChanges(queries, frozenset(replaced), sum(shifts) / len(shifts) if shifts else 0.0)


def load_candidates(
    run_path: str | Path, corpus_path: str | Path, queries_path: str | Path, depth: int | None = None
) -> tuple[Run, list[RerankItem]]:
    """First-stage groups from a run plus corpus and queries; the corpus is scanned for the run's ids only."""
    run = read_run(run_path, depth)
    wanted = {entry.docid for entries in run.values() for entry in entries}
    corpus = read_corpus(corpus_path, wanted)
    return run, list(candidates(run, corpus, read_queries(queries_path)))


def first_stage_run(results: Iterable[RerankResult]) -> Run:
    """The first-stage run that reranked results came from: each query's documents in input order
    (complete when no ``top_k`` or ``min_score`` cut them)."""
    return {
        query_id(result.record, result.line): [
            RunEntry(doc_id(d.fields, d.index), d.index + 1, float(-d.index - 1))
            for d in sorted(result.results, key=lambda d: d.index)
        ]
        for result in results
    }


def run_from_items(items: Iterable[RerankItem]) -> Run:
    """The first-stage run implied by rerank input: documents in input order."""
    return {
        query_id(item.record, item.line): [
            RunEntry(doc_id(d.fields, d.index), rank, float(-rank))
            for rank, d in enumerate(item.documents, start=1)
        ]
        for item in items
    }


def read_ranked(path: str | Path) -> Run:
    """An already reranked run: a TREC run, or the JSONL that `bge-rerank rerank` writes."""
    file = _file(path, "reranked run")
    with file.open("rb") as handle:
        head = handle.read(1)
    if head not in (b"{", b"\xef"):
        return read_run(file)
    run: Run = {}
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            obj = _json(raw.removeprefix(b"\xef\xbb\xbf"), path, number)
            results = obj.get("results")
            if not isinstance(results, list):
                raise InputError(
                    'no "results" list: not `bge-rerank rerank` output', source=str(path), line=number
                )
            run[query_id(obj, number)] = [
                RunEntry(
                    doc_id(r, int(r.get("index", i))), int(r.get("rank", i + 1)), float(r.get("logit", 0.0))
                )
                for i, r in enumerate(results)
            ]
    return run


def compare(
    qrels: Qrels, before: Run, after: Run, latency: float | None = None, per_query: bool = False
) -> dict[str, Any]:
    """Before/after values of :data:`MEASURES`, the top-1 replacement rate and rank shift, as a report;
    ``per_query`` adds each judged query's values and whether its first result was replaced."""
    missing = sorted(set(before) - set(after))
    if missing:
        raise UsageError(f"the reranked run lacks {len(missing)} first-stage queries (e.g. {missing[0]}).")
    before_agg, before_q = measure(qrels, before)
    after_agg, after_q = measure(qrels, after)
    changes = rank_changes(before, after)
    report: dict[str, Any] = {
        "queries": len(after_q),
        "measures": {
            LABELS[m]: {"before": before_agg[m], "after": after_agg[m], "delta": after_agg[m] - before_agg[m]}
            for m in MEASURES
        },
        "top1_replacement_rate": changes.top1_replacement_rate,
        "top1_replaced": changes.top1_replaced,
        "mean_abs_rank_shift": changes.mean_abs_shift,
        "latency_ms_per_query": None if latency is None else latency * 1000,
    }
    if per_query:
        report["per_query"] = {
            qid: {
                **{
                    LABELS[m]: {"before": before_q.get(qid, {}).get(m, 0.0), "after": values.get(m, 0.0)}
                    for m in MEASURES
                },
                "top1_replaced": qid in changes.replaced,
            }
            for qid, values in sorted(after_q.items())
        }
    return report
