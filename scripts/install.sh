#!/usr/bin/env bash
# Install scans and its dependencies into the current Python environment.
#   bash scripts/install.sh          # library, CLI and the embedded default model
#   bash scripts/install.sh --test   # the same plus the test tools
# PyTorch: on machines without an NVIDIA GPU the CPU build is chosen explicitly (a bare
# `torch` requirement would pull a multi-GB CUDA build). A local wheel is used when pip
# can find one without an index (e.g. via find-links); else the CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${SCANS_TORCH_VERSION:-2.13.0}"
extras="embedded"
[[ "${1:-}" == "--test" ]] && extras="embedded,test"

python -m pip install --upgrade pip >/dev/null
if python -c "import torch" 2>/dev/null; then
    echo "[install] torch $(python -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[install] NVIDIA GPU found: installing the CUDA build of torch ${TORCH_VERSION}"
    python -m pip install "torch==${TORCH_VERSION}"
else
    echo "[install] no GPU: installing the CPU build of torch ${TORCH_VERSION}"
    # A local CPU wheel (pip's find-links) wins: torch==V also matches V+cpu, the higher
    # version. Without one, the CPU wheel index supplies torch and PyPI its dependencies.
    probe_dir="$(mktemp -d)"
    if python -m pip download -q --no-deps --no-index -d "$probe_dir" "torch==${TORCH_VERSION}" >/dev/null 2>&1 \
        && ls "$probe_dir"/torch-*+cpu* >/dev/null 2>&1; then
        python -m pip install "torch==${TORCH_VERSION}"
    else
        python -m pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
            --extra-index-url https://pypi.org/simple
    fi
    rm -rf "$probe_dir"
fi
python -m pip install -e ".[${extras}]"
python -c "import torch, scans; print('[install] scans', scans.__version__, 'with torch', torch.__version__)"
