#!/usr/bin/env bash
# Issue #5: GRU4Rec on Amazon Music, plain (batch 64, step-matched) vs +GA+AT, 3 seeds, 15-epoch cap; the
# user-sampling control (GA's sampling, neither component) on seeds 0-1; then the paired comparisons of
# RESULTS.md ("GRU4Rec on Amazon Music"). About 1.5 h on 2 vCPUs; finished runs are reused, interrupted
# ones resumed.
# Stop 15 changed plain training's defaults (random batches, SASRec input_norm); the numbers in RESULTS.md
# were made before: add --set train.length_buckets=true to the plain runs and --set backbone.input_norm=false
# to every SASRec run to reproduce them (RESULTS.md, "Correction").
set -euo pipefail
cd "$(dirname "$0")/.."
python bench/run_recipes.py recipes/gru4rec-music-b64.yaml recipes/gru4rec-music-gaat.yaml --seeds 0 1 2 \
    --jobs 2 --set train.epochs=15 --out runs/gru --table bench/results/music-gru4rec.md
python bench/run_recipes.py recipes/gru4rec-music-users.yaml --seeds 0 1 --jobs 2 --set train.epochs=15 --out runs/gru
seeds() { echo "runs/gru/$1-s0,runs/gru/$1-s1,runs/gru/$1-s2"; }
two() { echo "runs/gru/$1-s0,runs/gru/$1-s1"; }
ltrec compare "$(seeds gru4rec-music-b64)" "$(seeds gru4rec-music-gaat)"
ltrec compare "$(two gru4rec-music-b64)" "$(two gru4rec-music-gaat)" "$(two gru4rec-music-users)"
