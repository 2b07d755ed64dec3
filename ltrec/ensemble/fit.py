"""Fitting the ensemble's weights on validation: coordinate ascent per history-length bucket.

Users of different buckets never share a weight, so each bucket is its own problem, and one ranking pass
serves all of them: a pass tries every candidate for one coordinate (the model or a member) in every bucket
at once, the others held at each bucket's current choice, and each bucket keeps its best. Starting from the
model alone, a bucket only moves to weights that score higher on its users, so the fit is never below the
model alone on validation. Passes: at most rounds × (members + 1), each ranking the validation users once per
candidate; they stop once a round moves nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ltrec.ensemble.scores import Ensemble


def coordinate_ascent(
    ensemble: Ensemble,
    candidates: list[float],
    rounds: int,
    evaluate: Callable[[list[Ensemble]], tuple[np.ndarray, np.ndarray]],
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[Ensemble, float]:
    """The weights with the best mean validation metric per bucket, and that mean over all users.
    `evaluate(variants)` returns (variants, U) per-user metrics and the (U,) bucket of each user."""
    grid = sorted({float(c) for c in candidates} | {0.0, 1.0})  # 1 and 0: where the model and members start
    # each bucket's and coordinate's weight as an index into the grid: float32 weights never round-trip
    picked = np.array([[grid.index(w) for w in row] for row in ensemble.weights.double().tolist()])
    n_buckets, n_coords = picked.shape
    score = 0.0
    for r in range(rounds):
        moved = False
        for j in range(n_coords):
            variants = []
            for c in range(len(grid)):
                v = picked.copy()
                v[:, j] = c
                variants.append(ensemble.with_weights(as_weights(grid, v)))
            scores, bucket = evaluate(variants)  # (C, U), (U,)
            for b in range(n_buckets):
                users = bucket == b
                if users.any():
                    means = scores[:, users].mean(axis=1)
                    if means.max() > means[picked[b, j]]:  # the current weight wins ties: no move without a gain
                        picked[b, j], moved = int(np.argmax(means)), True
            score = float(scores[picked[bucket, j], np.arange(len(bucket))].mean()) if len(bucket) else 0.0
            name = "model" if j == 0 else ensemble.kinds[j - 1]
            progress(f"ensemble: round {r + 1}, {name} weights {[grid[i] for i in picked[:, j]]}: valid {score:.4f}")
        if not moved:
            break
    return ensemble.with_weights(as_weights(grid, picked)), score


def as_weights(grid: list[float], picked: np.ndarray) -> torch.Tensor:
    """(E + 1, M + 1) float32 weights from indices into the grid."""
    return torch.tensor(np.asarray(grid)[picked], dtype=torch.float32)
