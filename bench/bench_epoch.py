"""A training epoch against its bound: the output layer's unavoidable work, side by side in one process.

    python bench/bench_epoch.py recipes/sasrec-ml1m.yaml [--fraction 0.3] [--threads 2]

Times, on the same first `fraction` of the training windows (scaled to an epoch): (1) the output layer alone
— for every batch's targets, logits = h·Wᵀ over all items, softmax, and both backward matmuls, with random
states, in chunks: the work no implementation of full-softmax training avoids; (2) a plain epoch with the cross-entropy
computed in chunks of targets (ltrec's); (3) the same epoch with the (targets × items) logits held whole.
Beside wall seconds: user and system CPU seconds and minor page faults of the process, which show the cost of
allocating and freeing large logits every step.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ltrec.models.losses as losses  # noqa: E402
from bench.bench_ingest import machine  # noqa: E402
from ltrec.data import load  # noqa: E402
from ltrec.recipe import load_recipe  # noqa: E402
from ltrec.runtime.allocator import keep_freed_memory  # noqa: E402
from ltrec.runtime.build import build_model  # noqa: E402
from ltrec.training.transfer import make_runner  # noqa: E402


def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt


def delta(a, b, scale):
    return [(y - x) * scale for x, y in zip(a, b)]


def bound(runner, W: torch.Tensor) -> None:
    """The output layer's forward and backward for each batch of the epoch, on random states: the logits, the
    softmax and both gradient matmuls, in cache-sized chunks of targets (no allocation churn of its own)."""
    rows = max(1, losses.CHUNK_BYTES // (4 * W.shape[0]))
    grad_W = torch.zeros_like(W)
    count, groups = runner.plan()
    for group in groups:
        idx = group[0]
        m = int((runner.objective.targets[idx] > 0).sum())
        h = torch.randn(m, W.shape[1])
        for lo in range(0, m, rows):
            p = torch.softmax(h[lo : lo + rows] @ W.T, dim=1)  # (c, N)
            p @ W  # grad wrt h
            grad_W.addmm_(p.T, h[lo : lo + rows])  # grad wrt W


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `ltrec train` does
    recipe = load_recipe(args.recipe)
    seqs = load(recipe.data, recipe.split, recipe.head, recipe.seed)
    windows = seqs.train_windows(recipe.data.max_len, recipe.data.stride)
    n = int(len(windows[0]) * args.fraction)
    sub = tuple(a[:n] for a in windows)
    scale = 1 / args.fraction
    rows = []

    def runner():
        torch.manual_seed(0)
        model = build_model(recipe, seqs)
        return make_runner(recipe, model, seqs, sub, "cpu", torch.Generator().manual_seed(0)), model

    r, model = runner()
    a = usage()
    bound(r, model.item_emb.weight.detach()[1:])
    rows.append(("output layer alone (the bound)", *delta(a, usage(), scale)))
    for name, chunk in (("epoch, chunked cross-entropy", losses.CHUNK_BYTES), ("epoch, whole logits", 1 << 62)):
        losses.CHUNK_BYTES = chunk
        r, _ = runner()
        a = usage()
        r(lambda n, loss: None)
        rows.append((name, *delta(a, usage(), scale)))
    print(
        f"{machine()}; torch threads {args.threads}\n\n**Command**: `python {' '.join(sys.argv)}` — "
        f"{len(windows[0]):,} windows, {seqs.n_items:,} items; {args.fraction:.0%} of an epoch, scaled\n"
    )
    print(
        "| what | wall s/epoch | × the bound | user CPU s | system CPU s | minor page faults |\n|---|---|---|---|---|---|"
    )
    for name, wall, user, sys_, faults in rows:
        print(f"| {name} | {wall:.1f} | {wall / rows[0][1]:.2f} | {user:.1f} | {sys_:.1f} | {faults:,.0f} |")


if __name__ == "__main__":
    main()
