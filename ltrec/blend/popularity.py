"""The popularity blend (`eval.pop_blend`): score(u, i) + w_b·log(1 + count_i), where b is the bucket of the
user's history length (the items the model sees) and count_i the item's training events.

The cheapest head→tail transfer there is: a user with one or two events says little the model can use, and
the catalogue's popularity says a lot; a user with fifty says more than popularity. One weight per bucket is
chosen on the validation split (the one maximising the monitored metric over the bucket's users) from the
recipe's candidates, after training, and applied to the test split, in `ltrec eval`, and in the exported
graph. Written as an extra state coordinate against an extra item column, [h, w_b]·[e_i, log(1 + count_i)],
the blended score is still a dot product, so full ranking stays block by block.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltrec.blend.records import fitted_record, read_fitted, refit_command
from ltrec.files.errors import UserError
from ltrec.files.safe import atomic_write, read_bytes

FILE = "pop_blend.json"


@dataclass
class FittedPopBlend:
    edges: torch.Tensor  # (E,) int64, history lengths where a bucket starts
    weights: torch.Tensor  # (E + 1,) float32, one per bucket
    prior: torch.Tensor  # (N,) float32, log(1 + training count) of item 1..N
    settings: dict | None = None  # what it was fitted with (ltrec.blend.records.fit_settings); set once saved or read

    def weight(self, history: torch.Tensor) -> torch.Tensor:
        """(B,) the weight of each left-padded history's length bucket."""
        return bucket_weight(self.edges, self.weights, history)

    def record(self) -> dict:
        """The fitted file's content, which the bundle records too."""
        return fitted_record("pop_blend", self.settings, self.edges.tolist(), self.weights.tolist())


def prior(item_counts: np.ndarray) -> torch.Tensor:
    return torch.log1p(torch.from_numpy(np.asarray(item_counts, dtype=np.float64))).float()


def bucket_weight(edges: torch.Tensor, weights: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """(B,) the weight of each left-padded history's length bucket."""
    lengths = (history > 0).sum(dim=1)
    return weights.to(history.device)[torch.bucketize(lengths, edges.to(history.device), right=True)]


def fit_buckets(
    evaluator, edges: list[int], candidates: list[float], metric: str, blend_with
) -> tuple[list[float], float]:
    """Each length bucket's weight: the candidate whose blends (`blend_with(weights)`: the popularity and
    transition blends, all buckets at that weight) have the best mean validation `metric` over the bucket's
    users. Returns the weights and the mean validation metric of the users under them."""
    results = evaluator.run_many("valid", [blend_with(torch.full((len(edges) + 1,), float(w))) for w in candidates])
    rows = results[0].slice_of != "cold-adapted"  # each user once
    per_weight = [result.per_user[metric][rows] for result in results]
    bucket = np.searchsorted(np.asarray(edges), results[0].lengths[rows], side="right")
    scores = np.stack(per_weight)  # (weights, users)
    best = [
        int(np.argmax(scores[:, bucket == b].mean(axis=1))) if (bucket == b).any() else None
        for b in range(len(edges) + 1)
    ]
    chosen = [candidates[i] if i is not None else 0.0 for i in best]
    picked = scores[np.array([i or 0 for i in best])[bucket], np.arange(len(bucket))]  # each user's pick
    return chosen, float(picked.mean()) if len(picked) else 0.0


def fit(evaluator, cfg, item_counts: np.ndarray, metric: str) -> FittedPopBlend:
    """Each bucket's weight: the candidate with the best mean validation `metric` over the bucket's users."""
    edges, p = torch.tensor(cfg.edges), prior(item_counts)
    chosen, _ = fit_buckets(
        evaluator, cfg.edges, cfg.weights, metric, lambda weights: (FittedPopBlend(edges, weights, p), None)
    )
    return FittedPopBlend(edges, torch.tensor(chosen, dtype=torch.float32), p)


def read(run_dir: Path, key: str, recipe, overrides=()):
    """The validated content of the run's fitted `key` blend (ltrec.blend.records), fitted with the settings of
    `recipe` (the run's, with the eval.* `overrides`)."""
    path = run_dir / f"{key}.json"
    if not path.is_file():
        hint = (
            ""
            if any(o.startswith(f"eval.{key}") for o in overrides)
            else f" (add --set eval.{key}=... if the run's recipe has none)"
        )
        raise UserError(
            f"{path}: no fitted {'popularity' if key == 'pop_blend' else 'transition'} blend; fit it "
            f"with `{refit_command(run_dir, overrides)}`{hint}"
        )
    return read_fitted(read_bytes(path, "fitted file"), path, key, recipe, run_dir, overrides)


def load(run_dir: Path, recipe, item_counts: np.ndarray, overrides=()) -> FittedPopBlend:
    """The blend fitted for a run (by training or `ltrec eval`), for the run's recipe with `overrides`."""
    fitted = read(run_dir, "pop_blend", recipe, overrides)
    return FittedPopBlend(
        torch.tensor(fitted.edges, dtype=torch.long),
        torch.tensor(fitted.weights, dtype=torch.float32),
        prior(item_counts),
        fitted.settings.model_dump(),
    )


def save(run_dir: Path, blend: FittedPopBlend) -> None:
    atomic_write(run_dir / FILE, json.dumps(blend.record()) + "\n")
