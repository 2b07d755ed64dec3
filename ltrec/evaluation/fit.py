"""Fitting the ensemble a recipe asks for on the validation split, after training or by `ltrec eval`, and
saving it with the run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ltrec.data import Sequences
from ltrec.ensemble import records
from ltrec.ensemble.fit import coordinate_ascent
from ltrec.ensemble.scores import Ensemble, fit_members, record, start
from ltrec.evaluation.engine import Evaluator
from ltrec.runtime.distributed import LOCAL, Dist


def fit_ensemble(
    recipe,
    seqs: Sequences,
    evaluator: Evaluator,
    run_dir: Path,
    dist: Dist = LOCAL,
    progress: Callable[[str], None] = lambda _: None,
) -> Ensemble | None:
    """The ensemble the recipe asks for (None if none): members fitted on the training split, weights by
    coordinate ascent on validation; saved with the run (rank 0)."""
    cfg, metric = recipe.eval.ensemble, recipe.train.monitor.metric
    if cfg is None:
        return None
    members = fit_members(cfg, seqs, recipe.data.max_len, run_dir)

    def evaluate(variants: list[Ensemble]) -> tuple[np.ndarray, np.ndarray]:
        results = evaluator.run_many("valid", variants)
        rows = results[0].slice_of != "cold-adapted"  # each user once
        bucket = np.searchsorted(np.asarray(cfg.edges), results[0].lengths[rows], side="right")
        return np.stack([r.per_user[metric][rows] for r in results]), bucket

    ensemble, valid = coordinate_ascent(start(cfg, members), cfg.weights, cfg.rounds, evaluate, progress)
    ensemble.settings, ensemble.valid = records.fit_settings(recipe), valid
    fitted = record(ensemble)
    with dist.together():
        if dist.main:
            records.save(run_dir, fitted)
    return ensemble
