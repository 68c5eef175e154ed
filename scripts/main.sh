#!/usr/bin/env bash
# Set up from scratch (idempotent) and run the main job: `bge-rerank demo`, the keyword trap solved
# (BM25's order next to the reranker's, with timings), then rerank sample_data/rerank.jsonl.
# Uses BGE_RERANK_MODEL (default BAAI/bge-reranker-v2-m3, downloaded into the Hugging Face cache).
# Where that model cannot be downloaded, it says so, shows how to use a local model directory, and
# then runs the same job on a random-weight stand-in built locally, so the pipeline can still be seen.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit $?
VENV="${BGE_RERANK_VENV:-.venv}"
BIN="$VENV/bin/bge-rerank"

job() {
    # --format auto, as the demo: tables on a terminal, JSONL (one stream of records) when piped.
    "$BIN" demo "$@" && "$BIN" rerank sample_data/rerank.jsonl --top-k 3 --format auto "$@"
}

job "$@"
rc=$?
if [ "$rc" -ne 4 ]; then
    exit "$rc"
fi
model="${BGE_RERANK_MODEL:-BAAI/bge-reranker-v2-m3}"
cat >&2 <<MSG

The model $model could not be loaded (see the error above): this machine cannot reach the
Hugging Face Hub and the model is not in its cache. To use a model you already have on disk:

    $BIN demo --model /path/to/bge-reranker-v2-m3
    export BGE_RERANK_MODEL=/path/to/bge-reranker-v2-m3   # then: bash scripts/main.sh

To fill the cache on a machine with network access: hf download $model

Now running the same job on a RANDOM-WEIGHT stand-in model built locally, to show the pipeline
end to end. Its scores and orders are meaningless.

MSG
standin=".cache/random-reranker"
if [ ! -f "$standin/config.json" ]; then
    "$VENV/bin/python" -m tools.random_model "$standin" >/dev/null 2>&1 || exit 1
fi
job --model "$standin" "$@"
