#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# pyflakes and the complexity limit (config: [tool.ruff] in pyproject.toml)
.venv/bin/ruff check .
export MPLBACKEND=Agg
.venv/bin/python -m pytest -q -p no:cacheprovider Testing "$@"
