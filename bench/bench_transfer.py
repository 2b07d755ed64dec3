"""Epoch time of each tail component relative to plain training, side by side in one process.

    python bench/bench_transfer.py recipes/sasrec-music.yaml [--threads 1] [--fraction 0.25] [--rounds 2]

Modes: plain, +GA+AT (the shipped recipe's), +CVaR, +group DRO, +balanced, +user branch, +contrastive, and
the paper's one-user-per-step gradient alignment as one chain and as 32 vmapped chains (`--modes` picks some
by name prefix). Each mode trains on the same first `fraction` of the training windows (whole users), scaled to a
full epoch; the modes run in turn for `rounds` rounds and the fastest round counts, which damps a shared
machine's noise. Beside wall seconds it reports the process's CPU seconds, which other jobs on a shared
machine disturb far less. The one-user modes are timed over --faithful-iters outer iterations and scaled
(stated as such).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_ingest import machine  # noqa: E402
from ltrec.data import load  # noqa: E402
from ltrec.recipe import load_recipe  # noqa: E402
from ltrec.runtime.build import build_model  # noqa: E402
from ltrec.training.transfer import make_runner  # noqa: E402

FAITHFUL = {
    "k": 5,
    "beta": 0.5,
    "sampling": "permuted",
    "users_per_step": 1,
    "inner_optimizer": "sgd",
    "inner_lr": 0.05,
}
MODES = {  # name: (transfer, train overrides)
    "plain": ({}, {}),
    "+GA+AT (k 5, outer Adam)": ({"grad_align": {"k": 5, "beta": 0.5, "outer": "adam"}, "adversarial": {}}, {}),
    "+CVaR (α 0.5, mix 0.5)": ({"robust": {"kind": "cvar", "alpha": 0.5, "mix": 0.5}}, {}),
    "+group DRO (4 length groups)": ({"robust": {"kind": "group_dro"}}, {}),
    "+balanced (power 1)": ({"robust": {"kind": "balanced"}}, {}),
    "+user branch": ({"user_branch": {}}, {}),
    "+contrastive": ({"contrastive": {}}, {}),
    "+GA faithful, 1 chain (1 user/step)": ({"grad_align": FAITHFUL}, {}),
    "+GA faithful, 32 chains (vmap)": ({"grad_align": {**FAITHFUL, "chains": 32}}, {}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--faithful-iters", type=int, default=50)
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", nargs="+", help="time only the modes whose names start with one of these")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override (repeatable)")
    args = ap.parse_args()
    modes = {k: v for k, v in MODES.items() if not args.modes or any(k.startswith(m) for m in args.modes)}
    torch.set_num_threads(args.threads)
    base = load_recipe(args.recipe, args.set)
    seqs = load(base.data, base.split, base.head, base.seed)
    windows = seqs.train_windows(base.data.max_len)
    n = int(len(windows[0]) * args.fraction)
    sub = tuple(a[:n] for a in windows)  # windows are grouped by user: a prefix is whole users
    best: dict[str, tuple[float, float, float, bool]] = {}
    for _ in range(args.rounds):
        for name, (transfer, train) in modes.items():
            recipe = base.model_copy(
                update={
                    "transfer": base.transfer.model_validate(transfer),
                    "train": base.train.model_copy(update=train),
                }
            )
            torch.manual_seed(0)
            model = build_model(recipe, seqs)
            epoch = make_runner(recipe, model, seqs, sub, "cpu", torch.Generator().manual_seed(0))
            scale = 1.0 / args.fraction
            if "faithful" in name:  # even a fraction of an epoch takes long: time a few iterations
                us, ga = epoch.sampler, recipe.transfer.grad_align
                full_iters = math.ceil(len(us.users) / (ga.k * ga.chains))
                keep = args.faithful_iters * ga.k * ga.chains
                us.users, us.counts, us.starts = us.users[:keep], us.counts[:keep], us.starts[:keep]
                us.weights = us.weights[:keep]
                scale *= full_iters / args.faithful_iters
            t0, c0 = time.perf_counter(), time.process_time()
            stats = epoch(lambda n, loss: None)
            sec, cpu = (time.perf_counter() - t0) * scale, (time.process_time() - c0) * scale
            if name not in best or sec < best[name][0]:
                best[name] = (sec, min(cpu, best.get(name, (0, cpu))[1]), stats["loss"], "faithful" in name)
            else:
                best[name] = (best[name][0], min(cpu, best[name][1]), *best[name][2:])
    rows = [(name, *best[name]) for name in modes]
    plain, plain_cpu = rows[0][1], rows[0][2]
    print(
        f"{machine()}; torch threads {args.threads}\n\n**Command**: `python {' '.join(sys.argv)}` — "
        f"{args.recipe}: {len(windows[0]):,} windows, {seqs.n_items:,} items; {args.fraction:.0%} of the windows "
        f"per timing, fastest of {args.rounds} rounds, scaled to an epoch\n"
    )
    print(
        f"| mode | s/epoch (wall) | × {rows[0][0]} | CPU s/epoch | × (CPU) | training loss on the timed part |\n"
        "|---|---|---|---|---|---|"
    )
    for name, sec, cpu, loss, scaled in rows:
        note = f" (from {args.faithful_iters} outer iterations)" if scaled else ""
        print(f"| {name} | {sec:.1f}{note} | {sec / plain:.2f} | {cpu:.1f} | {cpu / plain_cpu:.2f} | {loss:.3f} |")


if __name__ == "__main__":
    main()
