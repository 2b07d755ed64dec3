"""A training epoch against its bound: the output layer's unavoidable work, side by side in one process.

    python bench/bench_epoch.py recipes/sasrec-ml1m.yaml [--fraction 0.3] [--threads 2] [--set KEY=VALUE]

Times, on the batches of the same first `fraction` of the training windows (scaled to an epoch): (1) the output
layer alone — for the batch's targets, logits = h·Wᵀ over all items, softmax, and both backward matmuls, with
random states, in chunks: the work no implementation of full-softmax training avoids; (2) a training step with
the cross-entropy computed in chunks of targets (ltrec's); (3) the same step, on a second model, with the
(targets × items) logits held whole; (4) the same step, on a third model, with each batch encoded at its
longest window's width rather than in groups of similar length (`ltrec.models.base.encode_by_length`). The
four take turns batch by batch, so a shared machine that slows for a while slows all four alike and the ratios
stay side by side; the range is the ratio over each fifth of the batches. Beside wall seconds: user and system
CPU seconds and minor page faults of the process, which show the cost of allocating and freeing large logits
every step.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ltrec.models.base as base  # noqa: E402
import ltrec.models.losses as losses  # noqa: E402
from bench.bench_ingest import machine  # noqa: E402
from ltrec.data import load  # noqa: E402
from ltrec.recipe import load_recipe  # noqa: E402
from ltrec.runtime.allocator import keep_freed_memory  # noqa: E402
from ltrec.runtime.build import build_model  # noqa: E402
from ltrec.training.transfer import make_runner  # noqa: E402

NAMES = (
    "output layer alone (the bound)",
    "epoch, chunked cross-entropy",
    "epoch, whole logits",
    "epoch, one width per batch",
)


def usage() -> list[float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return [time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt]


class Bound:
    """The output layer's forward and backward for one batch's targets, on random states: the logits, the
    softmax and both gradient matmuls, in cache-sized chunks of targets (no allocation churn of its own)."""

    def __init__(self, W: torch.Tensor):
        self.W, self.grad_W = W, torch.zeros_like(W)

    def __call__(self, m: int) -> None:
        W, rows = self.W, losses.chunk_rows(self.W.shape[0], self.W.device)
        h = torch.randn(m, W.shape[1])
        for lo in range(0, m, rows):
            p = torch.softmax(h[lo : lo + rows] @ W.T, dim=1)  # (c, N)
            p @ W  # grad wrt h
            self.grad_W.addmm_(p.T, h[lo : lo + rows])  # grad wrt W


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `ltrec train` does
    recipe = load_recipe(args.recipe, args.set)
    seqs = load(recipe.data, recipe.split, recipe.head, recipe.seed)
    windows = seqs.train_windows(recipe.data.max_len, recipe.data.stride)
    n = int(len(windows[0]) * args.fraction)
    sub = tuple(a[:n] for a in windows)

    def runner():
        torch.manual_seed(0)
        model = build_model(recipe, seqs)
        r = make_runner(recipe, model, seqs, sub, "cpu", torch.Generator().manual_seed(0))
        r.objective.start_epoch(1)
        return r, model

    (chunked, model), (whole, _), (wide, _) = runner(), runner(), runner()
    bound = Bound(model.item_emb.weight.detach()[1:].clone())
    chunk = losses.CHUNK_BYTES, losses.THREAD_ROWS
    steps: list[list[list[float]]] = []  # batch → what → (wall, user, system, faults)
    _, groups = chunked.plan()
    for group in groups:
        m = int((chunked.objective.targets[group[0]] > 0).sum())
        marks = [usage()]
        bound(m)
        marks.append(usage())
        chunked.update(group, lambda n, loss: None)
        marks.append(usage())
        losses.CHUNK_BYTES, losses.THREAD_ROWS = 1 << 62, 1 << 62
        whole.update(group, lambda n, loss: None)
        losses.CHUNK_BYTES, losses.THREAD_ROWS = chunk
        marks.append(usage())
        rows, base.GROUP_ROWS = base.GROUP_ROWS, 1 << 30
        wide.update(group, lambda n, loss: None)
        base.GROUP_ROWS = rows
        marks.append(usage())
        steps.append([[b - a for a, b in zip(marks[i], marks[i + 1])] for i in range(len(NAMES))])
    scale = 1 / args.fraction
    total = [[sum(s[i][j] for s in steps) * scale for j in range(4)] for i in range(len(NAMES))]
    fifths = [steps[k * len(steps) // 5 : (k + 1) * len(steps) // 5] for k in range(5)]
    print(
        f"{machine()}; torch threads {args.threads}\n\n**Command**: `python {' '.join(sys.argv)}` — "
        f"{len(windows[0]):,} windows, {seqs.n_items:,} items; the batches of {args.fraction:.0%} of an epoch, "
        "scaled\n"
    )
    print(
        "| what | wall s/epoch | × the bound (over each fifth) | user CPU s | system CPU s | minor page faults |\n"
        "|---|---|---|---|---|---|"
    )
    for i, name in enumerate(NAMES):
        parts = [sum(s[i][0] for s in f) / sum(s[0][0] for s in f) for f in fifths if f]
        wall, user, sys_, faults = total[i]
        spread = f"{wall / total[0][0]:.2f} ({min(parts):.2f}–{max(parts):.2f})"
        print(f"| {name} | {wall:.1f} | {spread} | {user:.1f} | {sys_:.1f} | {faults:,.0f} |")


if __name__ == "__main__":
    main()
