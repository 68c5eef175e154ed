#!/usr/bin/env bash
# Set up from scratch (idempotent) and run every check CI runs: lint, format, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev ray onnx serve plot otel
VENV="${BGE_RERANK_VENV:-.venv}"
export HF_HUB_OFFLINE=1
"$VENV/bin/ruff" check bge_rerank_cli tests tools bench
"$VENV/bin/ruff" format --check bge_rerank_cli tests tools bench
"$VENV/bin/mypy"
"$VENV/bin/python" -m pytest "$@"
