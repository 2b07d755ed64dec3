"""Fitting the blends a recipe asks for on the validation split, after training or by `ltrec eval`: the
popularity blend first, then the transition blend on top of it; each saved with the run."""

from __future__ import annotations

from pathlib import Path

from ltrec.blend import popularity, transitions
from ltrec.blend.popularity import FittedPopBlend
from ltrec.blend.records import fit_settings
from ltrec.blend.transitions import FittedTransitionBlend
from ltrec.data import Sequences
from ltrec.evaluation.engine import Evaluator
from ltrec.runtime.distributed import LOCAL, Dist


def fit_blends(
    recipe, seqs: Sequences, evaluator: Evaluator, run_dir: Path, dist: Dist = LOCAL
) -> tuple[FittedPopBlend | None, FittedTransitionBlend | None]:
    """The blends the recipe asks for (popularity, then transitions on top), fitted on validation and saved
    with the run (rank 0)."""
    cfg, metric = recipe.eval, recipe.train.monitor.metric
    blend = popularity.fit(evaluator, cfg.pop_blend, seqs.item_counts(), metric) if cfg.pop_blend else None
    trans = transitions.fit(evaluator, cfg.transition_blend, seqs, metric, blend) if cfg.transition_blend else None
    fits = [
        (key, module, fitted)
        for key, module, fitted in (("pop_blend", popularity, blend), ("transition_blend", transitions, trans))
        if fitted is not None
    ]
    for key, _, fitted in fits:
        fitted.settings = fit_settings(recipe, key)
    with dist.together():
        if dist.main:
            for _, module, fitted in fits:
                module.save(run_dir, fitted)
    return blend, trans
