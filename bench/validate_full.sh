#!/usr/bin/env bash
# Full validation run (issues 6 and 15): known-truth models, then every check on WHOLE phantom volumes
# (48 x 128 x 128, as users run `liver-lrp analyze`), >= 30 cases per known-truth model, every rate with a
# 95 % Wilson interval (rates.csv), per-case results in validation.json; the README's validation table comes
# from it.  All presets, the reference-based `reference-blur` included.
# Cost: whole volumes make every pass ~20x dearer than the old 24 x 64 x 64 crops; on 2 CPU cores expect well
# over a day (two 23-minute trainings included) -- run it on a GPU (DEVICE=cuda) or a many-core machine.
#   bash bench/validate_full.sh [OUT]        (default OUT: validation_out; DEVICE=cpu|cuda, default cpu)
# Fast mode for development only: add `--crop 24 64 64` to the validate commands (numbers then describe crops).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-validation_out}
DEVICE=${DEVICE:-cpu}
LRP=".venv/bin/liver-lrp"
PRESETS="recommended paper epsilon epsilon-gamma-box alpha2-beta1 reference-blur"
mkdir -p "$OUT"
# 1. known-truth models: tumor contrast only in T1 120 s, and only in T2 + T1 20 s (1500 steps each)
train_kt() {  # train_kt NAME KEY...
  local name=$1; shift
  [ -f "$OUT/$name/model.safetensors" ] || $LRP train --out "$OUT/$name" --informative "$@" --steps 1500 \
      --patch 24 64 64 --batch 2 --base-channels 8 --depth 3 --refresh 20 --pool 8 --seed 3 --device "$DEVICE"
}
train_kt kt_T1_120s T1_120s
train_kt kt_T2_T1_20s T2 T1_20s
# 2. Shapley / ablation (30 cases), class sensitivity, randomisation and AOPC (10 cases) on the bundled model
$LRP validate --out "$OUT/bundled" --cases 30 --detail-cases 10 --presets $PRESETS \
    --checks shapley class-sensitivity randomisation aopc --device "$DEVICE"
# 3. known truth: 30 whole-volume cases per model, LRP presets and exact Shapley values (zero, mean, blurred)
$LRP validate --out "$OUT/known_truth" --checks known-truth --known-truth-cases 30 --presets $PRESETS \
    --known-truth "$OUT/kt_T1_120s/model.safetensors" "$OUT/kt_T2_T1_20s/model.safetensors" --device "$DEVICE"
