#!/usr/bin/env bash
# Issue #11: Caser, NARM and BERT4Rec on Amazon Music, plain vs +GA+AT, 3 seeds each, then one
# `ltrec compare` per backbone (RESULTS.md, "More backbones"). Epoch caps: BERT4Rec 20, Caser and NARM 10
# (their epochs cost 3–5× BERT4Rec's on CPU), then the BERT4Rec and Caser controls. About 3 h on 2 vCPUs;
# finished runs are reused, interrupted ones resumed.
# Stop 15 changed plain training's defaults (random batches, SASRec input_norm); the numbers in RESULTS.md
# were made before: add --set train.length_buckets=true to the plain runs and --set backbone.input_norm=false
# to every SASRec run to reproduce them (RESULTS.md, "Correction").
set -euo pipefail
cd "$(dirname "$0")/.."
for spec in bert4rec:20 caser:10 narm:10; do
    kind=${spec%%:*}
    python bench/run_recipes.py "recipes/$kind-music.yaml" "recipes/$kind-music-gaat.yaml" --seeds 0 1 2 \
        --jobs 2 --set "train.epochs=${spec##*:}" --out runs/bb --table "bench/results/music-$kind.md"
done
# Controls (RESULTS.md): plain BERT4Rec without early stopping, and the user-sampling control
python bench/run_recipes.py recipes/bert4rec-music.yaml --seeds 0 1 2 --jobs 2 --set train.epochs=20 \
    --set train.patience=20 --out runs/bb-p20
python bench/run_recipes.py recipes/bert4rec-music-users.yaml --seeds 0 1 2 --jobs 2 --set train.epochs=20 --out runs/bb
python bench/run_recipes.py recipes/caser-music-users.yaml --seeds 0 1 --jobs 2 --set train.epochs=10 --out runs/bb
seeds() { local d=${2:-runs/bb}; echo "$d/$1-s0,$d/$1-s1,$d/$1-s2"; }
for kind in bert4rec caser narm; do
    ltrec compare "$(seeds "$kind-music")" "$(seeds "$kind-music-gaat")"
done
ltrec compare "$(seeds bert4rec-music runs/bb-p20)" "$(seeds bert4rec-music-gaat)" "$(seeds bert4rec-music-users)"
two() { echo "runs/bb/$1-s0,runs/bb/$1-s1"; }
ltrec compare "$(two caser-music)" "$(two caser-music-gaat)" "$(two caser-music-users)"
