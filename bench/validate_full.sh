#!/usr/bin/env bash
# Full validation run (issue 6): known-truth models, then every check on the bundled model.
# About 45 minutes on 2 CPU cores; the README's validation table comes from this script.
#   bash bench/validate_full.sh [OUT]        (default OUT: validation_out)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-validation_out}
LRP=".venv/bin/liver-lrp"
mkdir -p "$OUT"
# 1. a known-truth model: tumor contrast only in T1 120 s (500 steps, ~6 min); for two informative sequences
#    train another with e.g. `--informative T2 T1_20s` and pass it to --known-truth as well
[ -f "$OUT/kt_T1_120s/model.safetensors" ] || $LRP train --out "$OUT/kt_T1_120s" --informative T1_120s --steps 500 \
    --patch 24 64 64 --batch 2 --base-channels 8 --depth 3 --refresh 20 --pool 8 --seed 3 --device cpu
# 2. Shapley / ablation (20 cases), class sensitivity, randomisation and AOPC (3 cases) on the bundled model
$LRP validate --out "$OUT/bundled" --cases 20 --detail-cases 3 \
    --checks shapley class-sensitivity randomisation aopc --device cpu
# 3. known truth: 10 cases per model
$LRP validate --out "$OUT/known_truth" --checks known-truth --known-truth-cases 10 \
    --known-truth "$OUT/kt_T1_120s/model.safetensors" --device cpu
