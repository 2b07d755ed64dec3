#!/usr/bin/env bash
# SASRec on Amazon Music: pop, plain (batch 256 and the step-matched batch 64) and +GA+AT, 3 seeds,
# 15-epoch budget; then the mean ± std table and the paired comparison of RESULTS.md.
# About 2.5 h on 2 vCPUs. Finished runs are reused, interrupted ones resumed.
# Stop 15 changed plain training's defaults (random batches, SASRec input_norm); the numbers in RESULTS.md
# were made before: add --set train.length_buckets=true to the plain runs and --set backbone.input_norm=false
# to every SASRec run to reproduce them (RESULTS.md, "Correction").
set -euo pipefail
cd "$(dirname "$0")/.."
R="recipes/pop-music.yaml recipes/sasrec-music.yaml recipes/sasrec-music-b64.yaml recipes/sasrec-music-gaat.yaml"
python bench/run_recipes.py $R --seeds 0 1 2 --jobs 2 --set train.epochs=15 --out runs/bench \
    --table bench/results/music-sasrec.md
seeds() { echo "runs/bench/$1-s0,runs/bench/$1-s1,runs/bench/$1-s2"; }
ltrec compare "$(seeds sasrec-music-b64)" "$(seeds sasrec-music-gaat)" "$(seeds sasrec-music)"
