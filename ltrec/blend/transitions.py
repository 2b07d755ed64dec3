"""The transition blend (`eval.transition_blend`): score(u, i) + w_b·log(1 + Σ_j 2^-j·T[h_j, i]), where h_0 is
the user's newest item, h_1 the one before, ..., b the bucket of the history's length, and T[a, i] how often
item i followed item a within `window` events in the training histories (weighted 1 / distance; with
direction `both`, preceded it too).

Item-to-item transitions are what a short history can offer: one or two items say little to a sequence
model trained mostly on long histories, but many other users went from those items somewhere. The weights
and the direction are chosen on the validation split after training, as the popularity blend's are, and
applied in `ltrec eval` and in the exported graph. Each item keeps its `neighbours` strongest transitions,
as (N + 1, K) id and strength tables (`ltrec.models.neighbours`, shared with `kind: transitions`), so a
user's prior is one gather and one scatter-add: no N × N matrix is ever formed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ltrec.blend.popularity import bucket_weight, fit_buckets, read
from ltrec.blend.records import fitted_record
from ltrec.files.safe import atomic_write
from ltrec.models.neighbours import Table, transition_table
from ltrec.models.transitions import DECAY

FILE = "transition_blend.json"


def prior(table: Table, history: torch.Tensor, last: int) -> torch.Tensor:
    """(B, N + 1) log(1 + Σ_j 2^-j·T[h_j, i]) over the newest `last` items; column 0 (padding) is 0."""
    return torch.log1p(table.summed(history, last, DECAY))


def table_for(seqs, cfg, direction: str) -> Table:
    args = (seqs.items, seqs.offsets, seqs.train_lengths, seqs.n_items)
    return transition_table(*args, cfg.window, cfg.neighbours, direction)


@dataclass
class FittedTransitionBlend:
    edges: torch.Tensor  # (E,) int64, history lengths where a bucket starts
    weights: torch.Tensor  # (E + 1,) float32, one per bucket
    table: Table
    last: int
    direction: str
    settings: dict | None = None  # what it was fitted with (ltrec.blend.records.fit_settings); set once saved or read

    def weight(self, history: torch.Tensor) -> torch.Tensor:
        """(B,) the weight of each left-padded history's length bucket."""
        return bucket_weight(self.edges, self.weights, history)

    def prior(self, history: torch.Tensor) -> torch.Tensor:
        """(B, N) the transition prior of items 1..N, before the bucket's weight."""
        return prior(self.table, history, self.last)[:, 1:]

    def record(self) -> dict:
        """The fitted file's content, which the bundle records too."""
        return fitted_record(
            "transition_blend", self.settings, self.edges.tolist(), self.weights.tolist(), direction=self.direction
        )


def fit(evaluator, cfg, seqs, metric: str, pop_blend=None) -> FittedTransitionBlend:
    """The direction and each bucket's weight with the best mean validation `metric` (over the bucket's users
    for the weight, over all users for the direction), on top of the fitted popularity blend if any."""
    edges, best = torch.tensor(cfg.edges), None
    for direction in cfg.directions:
        table = table_for(seqs, cfg, direction)

        def blend_with(weights, table=table, direction=direction):
            return pop_blend, FittedTransitionBlend(edges, weights, table, cfg.last, direction)

        chosen, score = fit_buckets(evaluator, cfg.edges, cfg.weights, metric, blend_with)
        if best is None or score > best[0]:
            best = (
                score,
                FittedTransitionBlend(edges, torch.tensor(chosen, dtype=torch.float32), table, cfg.last, direction),
            )
    return best[1]


def load(run_dir: Path, recipe, seqs, overrides=()) -> FittedTransitionBlend:
    """The blend fitted for a run (by training or `ltrec eval`), for the run's recipe with `overrides`; its
    tables rebuilt from the training data with the settings it was fitted with."""
    fitted = read(run_dir, "transition_blend", recipe, overrides)
    cfg = fitted.section
    return FittedTransitionBlend(
        torch.tensor(fitted.edges, dtype=torch.long),
        torch.tensor(fitted.weights, dtype=torch.float32),
        table_for(seqs, cfg, fitted.direction),
        cfg.last,
        fitted.direction,
        fitted.settings.model_dump(),
    )


def save(run_dir: Path, blend: FittedTransitionBlend) -> None:
    atomic_write(run_dir / FILE, json.dumps(blend.record()) + "\n")
