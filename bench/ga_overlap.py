"""How much `grad_align.sampling: windows` changes plain training's batches on a dataset.

    python bench/ga_overlap.py recipes/sasrec-music-gaat.yaml [--set data.source=...] [--seeds 0 1 2]

Gradient alignment's windows sampling shuffles every training window as plain training does, then cuts each
outer iteration's k × batch_size windows on user boundaries, so that no user is in two inner batches. Where
nearly every user owns one window, a random chunk is user-disjoint almost by itself, and gradient alignment
reduces to the Lookahead optimizer (Zhang et al., NeurIPS 2019: k fast steps, then θ ← θ₀ + β(θ_k − θ₀)).
This prints how many windows a random chunk would put beside another window of the same user (the only
windows the user-disjoint cut moves), averaged over an epoch's chunks, and the inner batch sizes it makes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ltrec.data import load  # noqa: E402
from ltrec.recipe import load_recipe  # noqa: E402
from ltrec.training.sampling import window_plan  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args()
    r = load_recipe(args.recipe, args.sets)
    if r.transfer.grad_align is None:
        raise SystemExit(f"{args.recipe}: no transfer.grad_align section")
    k, batch = r.transfer.grad_align.k, r.train.batch_size
    seqs = load(r.data, r.split, r.head, r.seed)
    owner = torch.from_numpy(seqs.train_windows(r.data.max_len)[2])
    _, per_user = np.unique(owner.numpy(), return_counts=True)
    shared, sizes = [], []
    for seed in args.seeds:
        perm = torch.randperm(len(owner), generator=torch.Generator().manual_seed(seed))
        _, counts = zip(
            *(
                torch.unique(owner[perm[lo : lo + k * batch]], return_counts=True)
                for lo in range(0, len(perm), k * batch)
            )
        )
        shared.append(sum(int(c[c > 1].sum()) for c in counts))
        sizes += [len(b) for bs in window_plan(owner, k, batch, torch.Generator().manual_seed(seed)) for b in bs]
    print(
        f"{args.recipe} {' '.join(args.sets)}: {len(owner):,} training windows of {len(per_user):,} users; "
        f"{int((per_user > 1).sum()):,} users own more than one ({int(per_user[per_user > 1].sum()):,} windows)"
    )
    print(
        f"k = {k}, batch {batch}: windows beside another of their user in a random chunk of {k * batch}: "
        f"{np.mean(shared):,.1f} per epoch ({100 * np.mean(shared) / len(owner):.2f}%), seeds {args.seeds}"
    )
    print(
        f"inner batch sizes after the user-disjoint cut: mean {np.mean(sizes):.1f}, min {min(sizes)}, "
        f"max {max(sizes)} (plain: {batch})"
    )


if __name__ == "__main__":
    main()
