#!/usr/bin/env bash
# The GPU set of issue #16 on one CUDA machine, in one go (about 8 minutes on an H100/H200 plus the
# model build): the exact bge-reranker-v2-m3 architecture with random weights, three runs of
# bench/speed.py, each engine in its own fresh process:
#   A  the GPU set (ours fp32/fp16/bf16, sentence-transformers fp32/fp16, FlagReranker fp16) on the
#      usual mixed-length workload, batch size 32
#   B  a workload like the published GPU figures (passages <= 512 tokens): 2000 pairs, passages
#      100-512 tokens, no repeats, batch size 64; sentence-transformers fp32 is the score reference
#   C  ours again on B's workload with a larger --batch-tokens budget, compared with B's reference/peers
# Every engine is timed warm (speed.py --warmup full): its process scores the whole workload once,
# untimed, before the timed pass, so no batch shape meets cold kernels while the clock runs.
#
#   bash bench/gpu.sh                                   # results (JSON) and logs under $OUT
#   DEVICE=cpu QUICK=1 PAIRS_A=24 PAIRS_B=24 bash bench/gpu.sh   # dry run of the script on a CPU
#   RUNS="B C" ENGINES_B=st-predict-fp16,flag-fp16 bash bench/gpu.sh   # a short rerun: B and C only
#
# FlagEmbedding is imported from this interpreter (--flag-python current): carry it where there is no
# network. Env: PYTHON (python3), OUT (bench/.cache/gpu-out), DEVICE (cuda), QUICK (empty), RUNS
# ("A B C"), PAIRS_A (1000), PAIRS_B (2000), BATCH_TOKENS_C (131072), ENGINES_A (speed.py's GPU set),
# ENGINES_B (A's set less ours-torch-fp32), ENGINES_C (ours-torch-bf16,ours-torch-fp16), WARMUP (full;
# 2 for the old cold timing). C takes its reference and peers from B's JSON, so run B with C.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/.cache/gpu-out}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
QUICK_FLAG=()
QUICK_PY=False
if [ -n "${QUICK:-}" ]; then
    QUICK_FLAG=(--quick)
    QUICK_PY=True
fi
PAIRS_A="${PAIRS_A:-1000}"
PAIRS_B="${PAIRS_B:-2000}"
BATCH_TOKENS_C="${BATCH_TOKENS_C:-131072}"
ENGINES_A="${ENGINES_A:-st-predict-fp32,st-predict-fp16,flag-fp16,ours-torch-fp32,ours-torch-fp16,ours-torch-bf16}"
ENGINES_B="${ENGINES_B:-st-predict-fp32,st-predict-fp16,flag-fp16,ours-torch-fp16,ours-torch-bf16}"
ENGINES_C="${ENGINES_C:-ours-torch-bf16,ours-torch-fp16}"
RUNS=" ${RUNS:-A B C} "
WARMUP="${WARMUP:-full}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
stamp() { echo "== $(date -u +%T) $*"; }
common=("${QUICK_FLAG[@]}" --device "$DEVICE" --flag-python current --no-write --progress --rounds 1
    --warmup "$WARMUP")

stamp "machine (in the background) and the model (built once under bench/.cache)"
nvidia-smi || echo "nvidia-smi: not available"
"$PY" - >"$OUT/machine.txt" 2>&1 <<'EOF' &
import importlib, os, platform, sys

print("python", platform.python_version(), sys.executable, "| cpus", os.cpu_count())
for name in ("torch", "transformers", "sentence_transformers", "tokenizers", "huggingface_hub",
             "FlagEmbedding", "datasets", "pyarrow", "fsspec", "peft", "accelerate", "numpy",
             "flash_attn"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as exc:  # report, do not stop: the runs say what they could not do
        print(f"{name}: not importable ({type(exc).__name__}: {str(exc)[:160]})")
import torch

gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-"
print(f"torch CUDA {torch.version.cuda}, available {torch.cuda.is_available()}, {gpu}")
import bge_rerank_cli.backends.torch_scorer  # noqa: F401  (our package's torch path imports here)

print("bge_rerank_cli.backends.torch_scorer imports")
EOF
info=$!
"$PY" -c "import sys; sys.path.insert(0, 'bench'); import speed; print(speed.model_dir($QUICK_PY))" || exit 1
wait "$info"
cat "$OUT/machine.txt"

if [[ $RUNS == *" A "* ]]; then
    stamp "A: the GPU set, mixed-length workload, batch size 32"
    "$PY" bench/speed.py "${common[@]}" --pairs "$PAIRS_A" --engines "$ENGINES_A" --json "$OUT/gpu.json"
fi

if [[ $RUNS == *" B "* ]]; then
    stamp "B: passages 100-512 tokens, no repeats, batch size 64"
    "$PY" bench/speed.py "${common[@]}" --pairs "$PAIRS_B" --passage-tokens 100-512 --repeats 0 \
        --batch-size 64 --engines "$ENGINES_B" --json "$OUT/gpu-512.json"
fi

if [[ $RUNS == *" C "* ]]; then
    stamp "C: ours on B's workload with --batch-tokens $BATCH_TOKENS_C"
    "$PY" bench/speed.py "${common[@]}" --pairs "$PAIRS_B" --passage-tokens 100-512 --repeats 0 \
        --batch-size 64 --batch-tokens "$BATCH_TOKENS_C" --engines "$ENGINES_C" \
        --reference-json "$OUT/gpu-512.json" --json "$OUT/gpu-512-bt.json"
fi
stamp done
