#!/usr/bin/env bash
# The main job on the bundled sample: generate a phantom case, segment it with the bundled model,
# run the paper's sequence-relevance analysis and write pictures to demo_out/ (or the folder given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${1:-demo_out}
.venv/bin/liver-lrp demo --out "$OUT" --device auto
