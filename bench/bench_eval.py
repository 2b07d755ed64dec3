"""Full-ranking evaluation speed: users/s of `ltrec.evaluation.engine.Evaluator` (history masked, as `ltrec eval`).

    python bench/bench_eval.py [--data ../shared/data/amazon-music/interactions.csv] [--threads 2] [--rounds 3]

An untrained SASRec (d=64, 2 layers, 2 heads, max_len 50; speed does not depend on the weights) ranks every
evaluated user's test target against all items at 3.7k and 200k items (synthetic long-tailed histories) and
at Amazon Music's 20k items (its real sequences: the time for all of its evaluated users is the figure that
matters). Each case runs --rounds times in turn and the fastest round counts (the machine is shared). The
split columns time the two halves of the work separately: the model's forward pass (scores for every item)
and the ranking (seen items + `metrics.target_ranks`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_ingest import machine  # noqa: E402
from ltrec.data import Sequences, load  # noqa: E402
from ltrec.data.load import _assign_roles  # noqa: E402
from ltrec.evaluation.engine import Evaluator  # noqa: E402
from ltrec.models import SASRec  # noqa: E402
from ltrec.recipe import Data, Eval, Head, Split  # noqa: E402


def synthetic(n_users: int, n_items: int, seed: int = 0) -> Sequences:
    """Long-tailed histories: lengths 3 + Zipf(2) capped at 500, items Zipf-like over 1..n_items."""
    rng = np.random.default_rng(seed)
    lengths = 3 + np.minimum(rng.zipf(2.0, n_users), 500)
    ranks = np.floor(np.exp(rng.random(lengths.sum()) * np.log(n_items + 1))).astype(np.int64)  # p(r) ∝ 1/r
    items = rng.permutation(n_items)[np.minimum(ranks, n_items) - 1] + 1  # popular items spread over the ids
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    users = np.arange(n_users).astype(str)
    return _assign_roles(items, offsets, users, np.arange(1, n_items + 1).astype(str), Split(), Head(), 0, {})


def full_matrix(model, seqs: Sequences, cfg: Eval):
    """The evaluation without block-wise ranking: model(hist) → the (B, N) matrix → target_ranks."""
    real = type(model).tied
    type(model).tied = property(lambda self: False)
    try:
        return Evaluator(model, seqs, cfg, 50).run("test")
    finally:
        type(model).tied = real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/amazon-music/interactions.csv")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=Eval().batch_size)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = {
        "synthetic, 3.7k items": synthetic(20_000, 3_700),
        "Amazon Music (real), 20k items": load(Data(source=args.data), Split(), Head()),
        "synthetic, 200k items": synthetic(5_000, 200_000),
    }
    cfg = Eval(batch_size=args.batch_size)
    best: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, seqs in cases.items():
            torch.manual_seed(0)
            model = SASRec(seqs.n_items, 50, dim=64, layers=2, heads=2).eval()
            t0 = time.perf_counter()
            result = Evaluator(model, seqs, cfg, 50).run("test")
            t1 = time.perf_counter()
            full = full_matrix(model, seqs, cfg)
            t2 = time.perf_counter()
            diff = np.abs(result.per_user["rank"] - full.per_user["rank"])  # float rounding of near-ties only
            prev = best.get(name, [float("inf")] * 2 + [0, 0.0])
            best[name] = [
                min(prev[0], t1 - t0),
                min(prev[1], t2 - t1),
                max(prev[2], int((diff > 0).sum())),
                max(prev[3], float(diff.max())),
                len(result.users),
            ]
    print(
        f"**Machine**: {machine()}; torch threads {args.threads}\n\n**Command**: `python {' '.join(sys.argv)}` "
        f"(fastest of {args.rounds} rounds; eval batch {cfg.batch_size}, history masked)\n"
    )
    print(
        "| case | items | users | evaluate (s) | users/s | full-matrix path (s) | speed-up | ranks that differ "
        "(max \\|Δ\\|) |\n|---|---|---|---|---|---|---|---|"
    )
    for name, (sec, full, changed, most, n) in best.items():
        print(
            f"| {name} | {cases[name].n_items:,} | {n:,} | {sec:.2f} | {n / sec:,.0f} | {full:.2f} | "
            f"{full / sec:.2f}× | {changed} ({most:.0f}) |"
        )


if __name__ == "__main__":
    main()
