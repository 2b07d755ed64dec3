"""What fitting leaves on disk, validated whenever it is read: fitted blends (`pop_blend.json`,
`transition_blend.json`), bundles (`bundle.json`, and what `model.onnx` returns) and stored negatives.

Every reader and writer goes through here (train and eval write blends, export reads them; export writes
bundles, predict and serve read them; every sampled evaluation reads negatives), so a file is accepted or
refused the same way whichever command touches it, and a refusal is one line naming the file and key, what
was expected, and how to fix it. Numbers are finite and in range, edges increase, weights are ≥ 0 and one
per bucket, tables agree in shape. A fitted blend records the settings it was fitted with and is used only
under them: the same weights under other settings rank users differently from `ltrec eval`. numpy and
pydantic only: predict and serve never load torch.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ltrec.files.errors import UserError
from ltrec.files.runs import Summary
from ltrec.recipe import PopBlend, TransitionBlend

FITTED_FORMAT = 1  # pop_blend.json / transition_blend.json; files without "format" predate recorded settings
BUNDLE_FORMAT = 3  # bundle.json
Finite = Annotated[float, Field(allow_inf_nan=False)]
Weight = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]  # the recipe's bounds on candidates


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _version(value, key: str, reads: int, legacy: str):
    """A file of another format is refused before its fields are read: they may mean something else."""
    if not isinstance(value, dict):
        return value
    found = value.get(key)
    if found is None:
        raise PydanticCustomError("ltrec_version", legacy)
    if found != reads:
        newer = isinstance(found, int) and found > reads
        age = "a newer" if newer else "an older" if isinstance(found, int) else "another"
        raise PydanticCustomError("ltrec_version", "written by {age} ltrec (format {found}, this ltrec reads "
                                  "{reads})" + ("; upgrade ltrec or" if newer else ""),
                                  {"age": age, "found": json.dumps(found)[:40], "reads": reads})
    return value


def problem(path: Path, exc: ValidationError, fix: str) -> UserError:
    """The first problem pydantic found, as one line: `path: key: what (got value); fix`."""
    err = exc.errors()[0]
    if err["type"] == "json_invalid":
        return UserError(f"{path}: not valid JSON ({err['msg'].removeprefix('Invalid JSON: ')}); {fix}")
    msg = " ".join(err["msg"].removeprefix("Value error, ").split())
    if err["type"] == "ltrec_version":
        return UserError(f"{path}: {msg} {fix}" if msg.endswith(" or") else f"{path}: {msg}; {fix}")
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    got = err.get("input")
    shown = f" (got {got!r:.40})" if isinstance(got, (int, float, str)) and not isinstance(got, bool) else ""
    return UserError(f"{path}: {key}: {msg}{shown}; {fix}")


# -- fitted blends ---------------------------------------------------------------------------------------


class _Monitor(_Model):
    metric: str = Field(pattern=r"^(hr|ndcg|mrr)@[1-9][0-9]*$")


class _Train(_Model):  # only the metric a fit maximises
    monitor: _Monitor


class _EvalPop(_Model):
    mask_seen: bool | None  # full ranking only; sampled mode ignores it
    mode: Literal["full", "sampled"]
    negatives: int | None = Field(ge=1, le=1_000_000)  # sampled mode only
    pop_blend: PopBlend | None


class _EvalTransitions(_EvalPop):
    transition_blend: TransitionBlend


class PopSettings(_Model):
    eval: _EvalPop
    train: _Train


class TransitionSettings(_Model):
    eval: _EvalTransitions
    train: _Train


class FittedPop(_Model):
    format: int
    settings: PopSettings
    edges: list[Annotated[int, Field(ge=1, le=4096)]]
    weights: list[Weight]

    @model_validator(mode="before")
    @classmethod
    def _format_first(cls, value):
        return _version(value, "format", FITTED_FORMAT, "written by an older ltrec, which did not record the "
                        "settings a blend is fitted with")

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
    out = {"mask_seen": None if sampled else ev.mask_seen, "mode": ev.mode,
           "negatives": ev.negatives if sampled else None,
           "pop_blend": ev.pop_blend.model_dump() if ev.pop_blend else None}
    if key == "transition_blend":
        out["transition_blend"] = ev.transition_blend.model_dump()
    return {"eval": out, "train": {"monitor": {"metric": recipe.train.monitor.metric}}}


def fitted_record(key: str, settings: dict, edges: list[int], weights: list[float], **extra) -> dict:
    """The content of a fitted blend file (and of the bundle's record of it), validated as it will be read."""
    record = {"format": FITTED_FORMAT, "settings": settings, "edges": edges,
              "weights": [rounded(w) for w in weights], **extra}
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
        raise UserError(f"{path}: {name}: the blend was fitted with {json.dumps(was)} but the recipe (with any "
                        f"--set) says {json.dumps(now)}; refit it with these settings (`{refit}`) or pass the "
                        f"fitted ones (--set {fitted_set})")
    return fitted


# -- bundles ---------------------------------------------------------------------------------------------


class BundleColumns(_Model):
    user: str
    item: str
    time: str


class Parity(_Model):
    users: int = Field(ge=0)
    max_abs_score_diff: Finite = Field(ge=0)
    topk_agreement: Finite = Field(ge=0, le=1)


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class BundleMeta(_Model):
    format_version: int
    model: Literal["model.onnx"]
    backbone: str
    run: str
    recipe_sha256: Sha256
    model_sha256: Sha256
    max_len: int = Field(ge=1, le=4096)
    pad_id: Literal[0]
    k: int = Field(ge=1)
    n_items: int = Field(ge=1)
    inputs: dict[str, str]
    outputs: dict[str, str]
    parity: Parity
    columns: BundleColumns
    exclude_seen: bool
    pop_blend: FittedPop | None
    transition_blend: FittedTransitions | None
    metrics: Summary | None  # as metrics.json: a slice without users has NaN metrics
    versions: dict[str, str | int]
    popularity: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]]  # training counts, item i + 1 at i
    vocab: list[Annotated[str, Field(min_length=1)]]  # original item ids, item i + 1 at i

    @model_validator(mode="before")
    @classmethod
    def _version_first(cls, value):
        return _version(value, "format_version", BUNDLE_FORMAT, "no format_version")

    @model_validator(mode="after")
    def _sizes_agree(self) -> "BundleMeta":
        if not len(self.vocab) == len(self.popularity) == self.n_items or self.k > self.n_items:
            raise ValueError(f"vocab ({len(self.vocab)}), popularity ({len(self.popularity)}), n_items "
                             f"({self.n_items}) and k ({self.k}) do not agree")
        if len(set(self.vocab)) != len(self.vocab):
            seen: set[str] = set()
            twice = next(v for v in self.vocab if v in seen or seen.add(v))
            raise ValueError(f"vocab holds {twice!r} twice; item ids must be distinct")
        return self


def read_meta(data: bytes | str, path: Path) -> BundleMeta:
    try:
        return BundleMeta.model_validate_json(data)
    except ValidationError as exc:
        raise problem(path, exc, "re-export the run with this ltrec (`ltrec export RUN`)") from None


def check_outputs(items, scores, rows: int, meta: BundleMeta, where: Path, probe: bool = False) -> None:
    """What the graph returned must be what bundle.py documents: int64 items and float32 scores, each (rows, K);
    wherever a score is finite, an item 1..N; no NaN or +inf score. On the probe batch (nothing excluded)
    every score is finite, best first, and no item comes twice."""
    shape = (rows, meta.k)
    bad = None
    if not (isinstance(items, np.ndarray) and isinstance(scores, np.ndarray)):
        bad = "outputs that are not tensors"
    elif items.dtype != np.int64 or scores.dtype != np.float32 or items.shape != shape or scores.shape != shape:
        bad = f"items {items.dtype} {items.shape} and scores {scores.dtype} {scores.shape}, expected int64 and " \
              f"float32 {shape}"
    elif np.isnan(scores).any() or np.isposinf(scores).any() or (probe and not np.isfinite(scores).all()):
        bad = "non-finite scores"
    elif ((items < 1) | (items > meta.n_items))[np.isfinite(scores)].any():
        bad = f"item ids outside 1..{meta.n_items}"
    elif probe and ((np.diff(scores, axis=1) > 0).any() or (np.diff(np.sort(items, axis=1), axis=1) == 0).any()):
        bad = "items out of order or repeated"
    if bad:
        raise UserError(f"{where}: the graph returned {bad}; not a model written by `ltrec export` (re-export "
                        "the run)")


# -- stored negatives ------------------------------------------------------------------------------------


def check_negatives(negs: np.ndarray, targets: np.ndarray, history: np.ndarray, n_items: int, n: int,
                    path: Path) -> np.ndarray:
    """Stored negatives must be what `sample_negatives` draws: (users, n) item ids 1..N, none the user's target
    or in the history it was drawn against, none twice in a row."""
    fix = "the file is damaged or from other settings: delete it to draw them again"
    if negs.shape != (len(targets), n) or negs.dtype.kind not in "iu":
        raise UserError(f"{path}: expected {(len(targets), n)} item ids, found {negs.shape} {negs.dtype}; {fix}")
    negs = negs.astype(np.int64)
    if negs.size and not (1 <= negs.min() and negs.max() <= n_items):
        raise UserError(f"{path}: item ids outside 1..{n_items} (found {negs.min()}..{negs.max()}); {fix}")
    seen = np.concatenate([targets[:, None], history], axis=1)
    row = np.arange(len(targets))[:, None] * (n_items + 1)  # (user row, item) as one key
    clash = np.isin(row + negs, (row + seen)[seen > 0]).any(axis=1)
    ordered = np.sort(negs, axis=1)
    twice = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    if clash.any() or twice.any():
        row = int(np.flatnonzero(clash | twice)[0])
        what = "the user's target or an item of its history" if clash[row] else "the same item twice"
        raise UserError(f"{path}: row {row} holds {what}; {fix}")
    return negs
