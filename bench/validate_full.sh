#!/usr/bin/env bash
# Full validation run (issue 6): known-truth models, then every check on the bundled model.
# About 2 hours on 2 CPU cores (two 23-minute trainings included); the README's validation table comes from it.
#   bash bench/validate_full.sh [OUT]        (default OUT: validation_out)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-validation_out}
LRP=".venv/bin/liver-lrp"
mkdir -p "$OUT"
# 1. known-truth models: tumor contrast only in T1 120 s, and only in T2 + T1 20 s (1500 steps each)
train_kt() {  # train_kt NAME KEY...
  local name=$1; shift
  [ -f "$OUT/$name/model.safetensors" ] || $LRP train --out "$OUT/$name" --informative "$@" --steps 1500 \
      --patch 24 64 64 --batch 2 --base-channels 8 --depth 3 --refresh 20 --pool 8 --seed 3 --device cpu
}
train_kt kt_T1_120s T1_120s
train_kt kt_T2_T1_20s T2 T1_20s
# 2. Shapley / ablation (20 cases), class sensitivity, randomisation and AOPC (3 cases) on the bundled model
$LRP validate --out "$OUT/bundled" --cases 20 --detail-cases 3 \
    --checks shapley class-sensitivity randomisation aopc --device cpu
# 3. known truth: 10 cases per model, LRP presets and exact Shapley values (zero, mean, blurred baselines)
$LRP validate --out "$OUT/known_truth" --checks known-truth --known-truth-cases 10 \
    --known-truth "$OUT/kt_T1_120s/model.safetensors" "$OUT/kt_T2_T1_20s/model.safetensors" --device cpu
