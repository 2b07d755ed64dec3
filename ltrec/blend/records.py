"""What fitting a blend leaves on disk (`pop_blend.json`, `transition_blend.json`), validated whenever it
is read: train and eval write them, export reads them and copies them into `bundle.json`, so a file is
accepted or refused the same way whichever command touches it. Numbers are finite and in range, edges
increase, weights are ≥ 0 and one per bucket. A fitted blend records the settings it was fitted with and is
used only under them: the same weights under other settings rank users differently from `ltrec eval`. numpy
and pydantic only: predict and serve never load torch.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from ltrec.files.errors import UserError
from ltrec.files.records import Record, check_version, problem
from ltrec.recipe import PopBlend, TransitionBlend

FITTED_FORMAT = 1  # pop_blend.json / transition_blend.json; files without "format" predate recorded settings
Weight = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]  # the recipe's bounds on candidates


class _Monitor(Record):
    metric: str = Field(pattern=r"^(hr|ndcg|mrr)@[1-9][0-9]*$")


class _Train(Record):  # only the metric a fit maximises
    monitor: _Monitor


class _EvalPop(Record):
    mask_seen: bool | None  # full ranking only; sampled mode ignores it
    mode: Literal["full", "sampled"]
    negatives: int | None = Field(ge=1, le=1_000_000)  # sampled mode only
    pop_blend: PopBlend | None


class _EvalTransitions(_EvalPop):
    transition_blend: TransitionBlend


class PopSettings(Record):
    eval: _EvalPop
    train: _Train


class TransitionSettings(Record):
    eval: _EvalTransitions
    train: _Train


class FittedPop(Record):
    format: int
    settings: PopSettings
    edges: list[Annotated[int, Field(ge=1, le=4096)]]
    weights: list[Weight]

    @model_validator(mode="before")
    @classmethod
    def _format_first(cls, value):
        return check_version(
            value,
            "format",
            FITTED_FORMAT,
            "written by an older ltrec, which did not record the settings a blend is fitted with",
        )

    @property
    def section(self) -> PopBlend | TransitionBlend:
        return self.settings.eval.pop_blend

    @model_validator(mode="after")
    def _agree(self):
        section = self.section
        if section is None:
            raise ValueError("settings: the blend's own settings are missing")
        if self.edges != section.edges:
            raise ValueError(f"edges {self.edges} differ from the settings' {section.edges}")
        if len(self.weights) != len(self.edges) + 1:
            raise ValueError(f"{len(self.weights)} weights for {len(self.edges) + 1} buckets (one per bucket)")
        allowed = {0.0, *(rounded(c) for c in section.weights)}  # a bucket without users keeps 0
        for w in self.weights:
            if w not in allowed:
                raise ValueError(f"weight {w} is not one of the candidates {sorted(allowed)} a fit chooses from")
        return self


class FittedTransitions(FittedPop):
    settings: TransitionSettings
    direction: Literal["forward", "both"]

    @property
    def section(self) -> TransitionBlend:
        return self.settings.eval.transition_blend

    @model_validator(mode="after")
    def _direction_is_a_candidate(self):
        if self.direction not in self.section.directions:
            raise ValueError(f"direction {self.direction!r} is not one of the candidates {self.section.directions}")
        return self


FITTED = {"pop_blend": FittedPop, "transition_blend": FittedTransitions}


def rounded(weight: float) -> float:
    """A weight as fitted files hold it: the float32 the blend computes with, to 6 decimals."""
    return round(float(np.float32(weight)), 6)


def fit_settings(recipe, key: str) -> dict:
    """What the `key` blend's fit depends on: its section, the ranking protocol it is scored under, the
    metric it maximises, and for the transition blend the popularity blend it is fitted on top of."""
    ev, sampled = recipe.eval, recipe.eval.mode == "sampled"
    out = {
        "mask_seen": None if sampled else ev.mask_seen,
        "mode": ev.mode,
        "negatives": ev.negatives if sampled else None,
        "pop_blend": ev.pop_blend.model_dump() if ev.pop_blend else None,
    }
    if key == "transition_blend":
        out["transition_blend"] = ev.transition_blend.model_dump()
    return {"eval": out, "train": {"monitor": {"metric": recipe.train.monitor.metric}}}


def fitted_record(key: str, settings: dict, edges: list[int], weights: list[float], **extra) -> dict:
    """The content of a fitted blend file (and of the bundle's record of it), validated as it will be read."""
    record = {
        "format": FITTED_FORMAT,
        "settings": settings,
        "edges": edges,
        "weights": [rounded(w) for w in weights],
        **extra,
    }
    FITTED[key].model_validate(record)  # what is written must read back
    return record


def _first_difference(fitted, wanted, key: str = ""):
    if isinstance(fitted, dict) and isinstance(wanted, dict):
        for k in [*fitted, *(k for k in wanted if k not in fitted)]:
            found = _first_difference(fitted.get(k), wanted.get(k), f"{key}.{k}" if key else k)
            if found:
                return found
        return None
    return None if fitted == wanted else (key, fitted, wanted)


def refit_command(run_dir: Path, overrides=()) -> str:
    """The `ltrec eval` that fits a run's blends under the recipe with `overrides`."""
    return " ".join(["ltrec eval", shlex.quote(str(run_dir)), *(f"--set {shlex.quote(o)}" for o in overrides)])


def read_fitted(text: bytes | str, path: Path, key: str, recipe, run_dir: Path, overrides=()):
    """The fitted `key` blend in `text` (read from `path`), validated and checked to have been fitted with the
    settings `recipe` (the run's, with `overrides`) asks for."""
    refit = refit_command(run_dir, overrides)
    try:
        fitted = FITTED[key].model_validate_json(text)
    except ValidationError as exc:
        raise problem(path, exc, f"refit it: `{refit}`") from None
    diff = _first_difference(fitted.settings.model_dump(), fit_settings(recipe, key))
    if diff:
        name, was, now = diff
        fitted_set = shlex.quote(f"{name}={was if isinstance(was, str) else json.dumps(was)}")
        raise UserError(
            f"{path}: {name}: the blend was fitted with {json.dumps(was)} but the recipe (with any "
            f"--set) says {json.dumps(now)}; refit it with these settings (`{refit}`) or pass the "
            f"fitted ones (--set {fitted_set})"
        )
    return fitted
