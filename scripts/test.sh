#!/usr/bin/env bash
# Set up (scripts/setup.sh), install the headless browser the UI test drives, check the import layering
# (pyproject.toml's import-linter contracts), and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-smollm2  # the real-model tests (tests/test_gguf.py) need SmolLM2
bash scripts/install_browser.sh
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
