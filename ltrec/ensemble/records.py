"""What fitting an ensemble leaves on disk (`ensemble.json`), validated whenever it is read: train and eval
write it, export reads it and copies it into `bundle.json`, so a file is accepted or refused the same way
whichever command touches it. Numbers are finite and in range, edges increase, weights are candidates, one
row per bucket and one column per member. A fitted ensemble records the settings it was fitted with and is
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
from ltrec.files.safe import atomic_write, read_bytes
from ltrec.recipe import Ensemble

FITTED_FORMAT = 2  # ensemble.json
FILE = "ensemble.json"
Weight = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]  # the recipe's bounds on candidates


class _Monitor(Record):
    metric: str = Field(pattern=r"^(hr|ndcg|mrr)@[1-9][0-9]*$")


class _Train(Record):  # only the metric a fit maximises
    monitor: _Monitor


class _Eval(Record):
    mask_seen: bool | None  # full ranking only; sampled mode ignores it
    mode: Literal["full", "sampled"]
    negatives: int | None = Field(ge=1, le=1_000_000)  # sampled mode only
    ensemble: Ensemble


class Settings(Record):
    eval: _Eval
    train: _Train


class FittedEnsemble(Record):
    format: int
    settings: Settings
    members: list[str]  # "model", then the members' kinds in the recipe's order
    edges: list[Annotated[int, Field(ge=1, le=4096)]]
    weights: list[list[Weight]]  # one row per bucket, one column per entry of `members`
    valid: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]  # the fitted weights' validation metric
    # each run member's best.pt sha256 (16 hex digits) when fitted, in the members' order
    checkpoints: list[Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]] = []

    @model_validator(mode="before")
    @classmethod
    def _format_first(cls, value):
        return check_version(value, "format", FITTED_FORMAT, "not a fitted ensemble written by this ltrec")

    @property
    def section(self) -> Ensemble:
        return self.settings.eval.ensemble

    @model_validator(mode="after")
    def _agree(self):
        section = self.section
        kinds = ["model", *(m.kind for m in section.members)]
        if self.members != kinds:
            raise ValueError(f"members {self.members} differ from the settings' {kinds}")
        if self.edges != section.edges:
            raise ValueError(f"edges {self.edges} differ from the settings' {section.edges}")
        runs = sum(1 for m in section.members if m.kind == "run")
        if len(self.checkpoints) != runs:
            raise ValueError(f"checkpoints: expected {runs} (one per run member), got {len(self.checkpoints)}")
        if len(self.weights) != len(self.edges) + 1 or any(len(row) != len(kinds) for row in self.weights):
            raise ValueError(
                f"weights: expected {len(self.edges) + 1} rows (one per bucket) of {len(kinds)} (one per member)"
            )
        allowed = {0.0, 1.0, *(rounded(c) for c in section.weights)}  # a bucket without users keeps 1, 0, ...
        for w in (w for row in self.weights for w in row):
            if w not in allowed:
                raise ValueError(f"weight {w} is not one of the candidates {sorted(allowed)} a fit chooses from")
        return self


def rounded(weight: float) -> float:
    """A weight as fitted files hold it: the float32 the ensemble computes with, to 6 decimals."""
    return round(float(np.float32(weight)), 6)


def fit_settings(recipe) -> dict:
    """What the ensemble's fit depends on: its section, the ranking protocol it is scored under and the
    metric it maximises."""
    ev, sampled = recipe.eval, recipe.eval.mode == "sampled"
    out = {
        "mask_seen": None if sampled else ev.mask_seen,
        "mode": ev.mode,
        "negatives": ev.negatives if sampled else None,
        "ensemble": ev.ensemble.model_dump(),
    }
    return {"eval": out, "train": {"monitor": {"metric": recipe.train.monitor.metric}}}


def fitted_record(
    settings: dict,
    members: list[str],
    edges: list[int],
    weights: list[list[float]],
    valid: float,
    checkpoints: list[str] | None = None,
):
    """The content of ensemble.json (and of the bundle's record of it), validated as it will be read."""
    record = {
        "format": FITTED_FORMAT,
        "settings": settings,
        "members": members,
        "edges": edges,
        "weights": [[rounded(w) for w in row] for row in weights],
        "valid": round(float(valid), 6),
        "checkpoints": list(checkpoints or []),
    }
    FittedEnsemble.model_validate(record)  # what is written must read back
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
    """The `ltrec eval` that fits a run's ensemble under the recipe with `overrides`."""
    return " ".join(["ltrec eval", shlex.quote(str(run_dir)), *(f"--set {shlex.quote(o)}" for o in overrides)])


def read_fitted(text: bytes | str, path: Path, recipe, run_dir: Path, overrides=()) -> FittedEnsemble:
    """The fitted ensemble in `text` (read from `path`), validated and checked to have been fitted with the
    settings `recipe` (the run's, with `overrides`) asks for."""
    refit = refit_command(run_dir, overrides)
    try:
        fitted = FittedEnsemble.model_validate_json(text)
    except ValidationError as exc:
        raise problem(path, exc, f"refit it: `{refit}`") from None
    diff = _first_difference(fitted.settings.model_dump(), fit_settings(recipe))
    if diff:
        name, was, now = diff
        fitted_set = shlex.quote(f"{name}={was if isinstance(was, str) else json.dumps(was)}")
        raise UserError(
            f"{path}: {name}: the ensemble was fitted with {json.dumps(was)} but the recipe (with any "
            f"--set) says {json.dumps(now)}; refit it with these settings (`{refit}`) or pass the "
            f"fitted ones (--set {fitted_set})"
        )
    return fitted


def read(run_dir: Path, recipe, overrides=()) -> FittedEnsemble:
    """The run's ensemble.json, validated, fitted with the settings of `recipe` (the run's, with the eval.*
    `overrides`)."""
    path = run_dir / FILE
    if not path.is_file():
        hint = (
            ""
            if any(o.startswith("eval.ensemble") for o in overrides)
            else " (add --set eval.ensemble={} if the run's recipe has none)"
        )
        raise UserError(f"{path}: no fitted ensemble; fit it with `{refit_command(run_dir, overrides)}`{hint}")
    return read_fitted(read_bytes(path, "fitted file"), path, recipe, run_dir, overrides)


def save(run_dir: Path, record: dict) -> None:
    atomic_write(run_dir / FILE, json.dumps(record) + "\n")
