#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment and install bge-rerank into it.
# Usage: scripts/setup.sh [extra ...]     e.g. scripts/setup.sh dev
# torch is installed first, pinned, so pip does not pick a multi-GB build you did not ask for;
# set TORCH_SPEC to choose another (e.g. TORCH_SPEC="torch==2.13.0" PIP_EXTRA_INDEX_URL=... for CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BGE_RERANK_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
extras=""
if [ "$#" -gt 0 ]; then
    extras="[$(IFS=,; echo "$*")]"
fi
# setuptools warns at every editable install that a folder named like the package may shadow it (it is
# this very checkout): a block of noise on every run, silenced here (UserWarning category only).
PYTHONWARNINGS="ignore::UserWarning" "$VENV/bin/python" -m pip install --quiet -e ".${extras}"
echo "bge-rerank installed in $VENV ($("$VENV/bin/bge-rerank" --version))" >&2
