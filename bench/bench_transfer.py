"""Epoch time of each transfer mode relative to plain training, side by side in one process.

    python bench/bench_transfer.py recipes/sasrec-music.yaml [--threads 1] [--fraction 0.25] [--rounds 2]

Modes: plain, +GA (users_per_step 64), +AT, +GA+AT, the same with 4 vmapped chains, and the paper's
faithful one-user-per-step GA. Each
mode trains on the same first `fraction` of the training windows (whole users), scaled to a full epoch;
the modes run in turn for `rounds` rounds and the fastest round counts, which damps a shared machine's
noise. The faithful mode is timed over --faithful-iters outer iterations and scaled (stated as such).
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from ltrec.data import load
from ltrec.recipe import load_recipe
from ltrec.train import build_model
from ltrec.transfer import make_epoch

GA = {"k": 5, "beta": 0.5, "users_per_step": 64}
MODES = {"plain": {}, "+GA": {"grad_align": GA}, "+AT": {"adversarial": {}},
         "+GA+AT": {"grad_align": GA, "adversarial": {}},
         "+GA 4 chains (vmap)": {"grad_align": {**GA, "chains": 4}},
         "+GA+AT 4 chains (vmap)": {"grad_align": {**GA, "chains": 4}, "adversarial": {}},
         "+GA faithful (1 user/step)": {"grad_align": {**GA, "users_per_step": 1}}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--faithful-iters", type=int, default=50)
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_recipe(args.recipe)
    seqs = load(base.data, base.split, base.head, base.seed)
    inputs, targets, owner = (torch.from_numpy(a) for a in seqs.train_windows(base.data.max_len))
    n = int(len(inputs) * args.fraction)
    sub = (inputs[:n], targets[:n], owner[:n])  # windows are grouped by user: a prefix is whole users
    best: dict[str, tuple[float, float, bool]] = {}
    for _ in range(args.rounds):
        for name, transfer in MODES.items():
            recipe = base.model_copy(update={"transfer": base.transfer.model_validate(transfer)})
            torch.manual_seed(0)
            model = build_model(recipe, seqs)
            epoch = make_epoch(recipe, model, seqs, *sub, "cpu", torch.Generator().manual_seed(0))
            scale = 1.0 / args.fraction
            if "faithful" in name:  # even a fraction of an epoch takes long: time a few iterations
                full_iters = math.ceil(len(epoch.users) / recipe.transfer.grad_align.k)
                epoch.users = epoch.users[: args.faithful_iters * recipe.transfer.grad_align.k]
                epoch.weights = epoch.weights[: len(epoch.users)]
                scale *= full_iters / args.faithful_iters
            t0 = time.perf_counter()
            stats = epoch(lambda n, loss: None)
            sec = (time.perf_counter() - t0) * scale
            if name not in best or sec < best[name][0]:
                best[name] = (sec, stats["loss"], "faithful" in name)
    rows = [(name, *best[name]) for name in MODES]
    plain = rows[0][1]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"{args.recipe}: {len(inputs):,} windows, {seqs.n_items:,} items")
    print(f"{args.fraction:.0%} of the windows per timing, fastest of {args.rounds} rounds, scaled to an epoch")
    print("| mode | s/epoch | × plain | training loss on the timed part |\n|---|---|---|---|")
    for name, sec, loss, scaled in rows:
        note = f" (from {args.faithful_iters} outer iterations)" if scaled else ""
        print(f"| {name} | {sec:.1f}{note} | {sec / plain:.2f} | {loss:.3f} |")


if __name__ == "__main__":
    main()
