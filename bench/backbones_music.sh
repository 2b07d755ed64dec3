#!/usr/bin/env bash
# Issue #11: Caser, NARM and BERT4Rec on Amazon Music, plain vs +GA+AT, 3 seeds each, then one
# `ltrec compare` per backbone (RESULTS.md, "More backbones"). Epoch caps: BERT4Rec 20, Caser and NARM 10
# (their epochs cost 3–5× BERT4Rec's on CPU). About 2 h on 2 vCPUs; finished runs are reused, interrupted
# ones resumed.
set -euo pipefail
cd "$(dirname "$0")/.."
for spec in bert4rec:20 caser:10 narm:10; do
    kind=${spec%%:*}
    python bench/run_recipes.py "recipes/$kind-music.yaml" "recipes/$kind-music-gaat.yaml" --seeds 0 1 2 \
        --jobs 2 --set "train.epochs=${spec##*:}" --out runs/bb --table "bench/results/music-$kind.md"
done
seeds() { echo "runs/bb/$1-s0,runs/bb/$1-s1,runs/bb/$1-s2"; }
for kind in bert4rec caser narm; do
    ltrec compare "$(seeds "$kind-music")" "$(seeds "$kind-music-gaat")"
done
