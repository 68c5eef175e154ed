#!/usr/bin/env bash
# Build the bge-rerank serve image (Containerfile) with Podman or Docker, whichever works here.
#
#   scripts/build-image.sh [--model ID|DIR] [--backend onnx [--quantize int8]] [--slim]
#                          [--base IMAGE|debootstrap] [--tag TAG]
#
#   --model ID|DIR   bake a model in: a Hub id is downloaded here first (bge-rerank download), a folder is
#                    copied. Without it the container downloads the default model into /data at first start.
#   --backend onnx   bake the ONNX export in too (made at build time; --quantize int8 for the int8 one).
#   --slim           the ONNX export only, on onnxruntime: no torch (needs --model and --backend onnx).
#   --base IMAGE     the base image (default docker.io/library/python:3.11-slim-bookworm: needs a registry);
#   --base debootstrap  a minimal Debian made here with debootstrap from this host's Debian mirror, for hosts
#                    that reach no image registry (needs root and debootstrap).
#   --tag TAG        the image's name (default bge-rerank:latest).
#
# Air-gapped: the build installs only from a wheelhouse made here first (build/image/wheels, for the
# image's Python 3.11 on this platform), and needs no network. Set TORCH_SPEC as for scripts/setup.sh to
# choose the torch build (default torch==2.13.0, the CPU build where pip finds it).
set -euo pipefail
cd "$(dirname "$0")/.."

SLIM="" MODEL="" BACKEND="auto" QUANTIZE="none" BASE="docker.io/library/python:3.11-slim-bookworm" TAG="bge-rerank:latest"
while [ "$#" -gt 0 ]; do
    case "$1" in
        --model) MODEL="${2:?--model needs an id or a folder}"; shift 2 ;;
        --backend) BACKEND="${2:?--backend needs a value}"; shift 2 ;;
        --quantize) QUANTIZE="${2:?--quantize needs a value}"; shift 2 ;;
        --base) BASE="${2:?--base needs an image or debootstrap}"; shift 2 ;;
        --tag) TAG="${2:?--tag needs a name}"; shift 2 ;;
        --slim) SLIM=1; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$BACKEND" in auto|torch|onnx) ;; *) echo "error: --backend must be auto, torch or onnx" >&2; exit 2 ;; esac
case "$QUANTIZE" in none|int8) ;; *) echo "error: --quantize must be none or int8" >&2; exit 2 ;; esac
if [ "$QUANTIZE" != none ] && [ "$BACKEND" != onnx ]; then
    echo "error: --quantize $QUANTIZE needs --backend onnx" >&2; exit 2
fi

if [ -n "$SLIM" ] && { [ -z "$MODEL" ] || [ "$BACKEND" != onnx ]; }; then
    echo "error: --slim needs --model and --backend onnx (it carries the ONNX export, not torch)" >&2; exit 2
fi

TARGET="${SLIM:+slim}"
TARGET="${TARGET:-full}"

say() { echo "build-image: $*" >&2; }

# --- the container engine --------------------------------------------------------------------------------
ENGINE="${CONTAINER_ENGINE:-}"
if [ -z "$ENGINE" ]; then
    for candidate in podman docker; do
        if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then
            ENGINE="$candidate"; break
        fi
    done
fi
if [ -z "$ENGINE" ]; then
    echo "error: neither Podman nor Docker can build here (no podman; docker has no running engine)." >&2
    echo "Install Podman (Debian: apt-get install podman runc) or start a Docker engine." >&2
    exit 1
fi
say "building with $ENGINE"

CONTEXT=build/image
rm -rf "$CONTEXT/model"
mkdir -p "$CONTEXT/wheels" "$CONTEXT/model"

# --- the wheelhouse: the project, its extras and their dependencies, as wheels for Python 3.11 ------------
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "error: the wheelhouse is made with this host's Python, which must be 3.11 as in the image;" >&2
    echo "set PYTHON to a python3.11." >&2
    exit 1
fi
say "wheelhouse in $CONTEXT/wheels"
rm -f "$CONTEXT"/wheels/bge_rerank_cli-*.whl  # this checkout's wheel, always rebuilt
# async-timeout: what redis needs on a Python older than 3.11.3 (Debian bookworm's 3.11.2), which a newer
# host Python's resolution leaves out.
"$PYTHON" -m pip wheel --quiet --wheel-dir "$CONTEXT/wheels" "${TORCH_SPEC:-torch==2.13.0}" ".[serve,onnx,cache]" \
    "async-timeout>=4.0.3"

cp scripts/image-slim-requirements.txt "$CONTEXT/wheels/slim-requirements.txt"
WHEELHOUSE="$(cd "$CONTEXT/wheels" && sha256sum -- *.whl | sha256sum | cut -c1-16)"

# --- the base -------------------------------------------------------------------------------------------
if [ "$BASE" = debootstrap ]; then
    BASE="localhost/bge-rerank-base:bookworm"
    if ! "$ENGINE" image exists "$BASE" 2>/dev/null && ! "$ENGINE" image inspect "$BASE" >/dev/null 2>&1; then
        bash scripts/debootstrap-base.sh "$ENGINE" "$BASE"
    fi
fi

# --- the model ------------------------------------------------------------------------------------------
MODEL_ARG="" CACHE_ARG="" OFFLINE=""
if [ -n "$MODEL" ]; then
    if [ -d "$MODEL" ]; then
        name="$(basename "$(cd "$MODEL" && pwd)")"
        say "baking in the folder $MODEL as /opt/bge-rerank/model/$name"
        cp -rL "$MODEL" "$CONTEXT/model/$name"
        MODEL_ARG="/opt/bge-rerank/model/$name"
    else
        say "downloading $MODEL to bake it in"
        BGE="${BGE_RERANK:-bge-rerank}"
        command -v "$BGE" >/dev/null || BGE=".venv/bin/bge-rerank"
        "$BGE" download "$MODEL" --cache-dir "$CONTEXT/model/hf" >&2
        MODEL_ARG="$MODEL"
        CACHE_ARG="/opt/bge-rerank/model/hf"
    fi
    chmod -R a+rX "$CONTEXT/model"
    OFFLINE=1
fi

# --- the build ------------------------------------------------------------------------------------------
format=()
if [ "$ENGINE" = podman ]; then
    format=(--format docker)  # OCI images drop HEALTHCHECK
fi
"$ENGINE" build "${format[@]}" -f Containerfile -t "$TAG" --target "$TARGET" \
    --build-arg "BASE=$BASE" \
    --build-arg "WHEELHOUSE=$WHEELHOUSE" \
    --build-arg "MODEL=$MODEL_ARG" \
    --build-arg "MODEL_CACHE_DIR=$CACHE_ARG" \
    --build-arg "BACKEND=$BACKEND" \
    --build-arg "QUANTIZE=$QUANTIZE" \
    --build-arg "OFFLINE=$OFFLINE" \
    "$CONTEXT"
say "built $TAG ($("$ENGINE" image inspect "$TAG" --format '{{.Size}}' | awk '{printf "%.0f MB", $1 / 1e6}'))"
