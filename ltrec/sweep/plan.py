"""The sweep plan: a base recipe, arms (each a name and `--set` overrides, optionally a small grid searched on
the validation split), seeds, and which arm is the baseline. Strict like recipes: every problem of the file at
once, as `plan.yaml: key: message`; every arm's recipe is validated too, before anything runs."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from ltrec.files.errors import UserError
from ltrec.recipe import Recipe, Strict, load_recipe, parse_override, read_yaml, validate_dict
from ltrec.recipe.base import Seed

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_POINTS = 64
# folder names stay far below the 255 bytes most file systems allow, log names (arm + point) included
MAX_ARM_NAME = 64
MAX_POINT_NAME = 100


class Arm(Strict):
    """One method to compare: the base recipe with these overrides."""

    name: str = Field(pattern=NAME, description="run folders are <out>/<name>-s<seed>")
    set: list[str] = Field([], description="overrides of the base recipe, as `--set` takes them: key=value")
    grid: dict[str, list[Any]] = Field(
        {},
        description="key → values: every combination is trained at the first "
        "seed and the one best on the validation split runs at every seed",
    )
    at_baseline: bool = Field(
        False,
        description="train at the baseline's chosen grid combination (its learning "
        "rate, batch, …), then this arm's own set and grid: every method at the control's "
        "tuned setting; the arm starts once the baseline's grid has chosen",
    )

    @model_validator(mode="after")
    def _bounded(self) -> Arm:
        if len(self.name) > MAX_ARM_NAME:
            raise ValueError(
                f"name: {len(self.name)} characters; at most {MAX_ARM_NAME} (it names the arm's run folders)"
            )
        for key, values in self.grid.items():
            parse_override(f"{key}=0")  # a dotted key, or the same error --set gives
            if not values:
                raise ValueError(f"grid: {key}: give at least one value")
        if len(points(self)) > MAX_POINTS:
            raise ValueError(
                f"grid: {len(points(self))} combinations; at most {MAX_POINTS} (a grid is searched "
                "by training every combination)"
            )
        return self


class Select(Strict):
    metric: str = Field(
        "ndcg@10",
        pattern=r"^(hr|ndcg|mrr)@[1-9][0-9]*$",
        description="validation metric that picks a grid's combination",
    )
    slice: str = Field("all", pattern=r"^(all|head|tail)$")


class Plan(Strict):
    """`ltrec sweep PLAN`: several methods, several seeds, tuned on validation, compared on test."""

    recipe: str = Field(description="the base recipe, relative to the plan file")
    set: list[str] = Field([], description="overrides for every arm (e.g. train.epochs=20)")
    seeds: list[Seed] = Field([0, 1, 2], min_length=1, description="every arm runs at each; grids at the first")
    baseline: str = Field(description="the arm every other is compared with")
    select: Select = Select()
    arms: list[Arm] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self) -> Plan:
        names = [a.name for a in self.arms]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"arms: the name {twice[0]} is given twice; arm names must differ")
        if self.baseline not in names:
            raise ValueError(f"baseline: {self.baseline!r} is not an arm (arms: {', '.join(names)})")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: a seed is given twice")
        base = next(a for a in self.arms if a.name == self.baseline)
        for arm in self.arms:
            if arm.at_baseline and (arm is base or not base.grid):
                why = "it is the baseline" if arm is base else f"baseline {base.name} has none"
                raise ValueError(
                    f"arms: {arm.name}: at_baseline needs a baseline with a grid to take the chosen "
                    f"combination from ({why})"
                )
        return self


def points(arm: Arm) -> list[list[str]]:
    """Every combination of the arm's grid, as lists of `key=value` overrides ([[]] without a grid)."""
    keys = list(arm.grid)
    return [
        [f"{k}={json.dumps(v)}" for k, v in zip(keys, combo)]
        for combo in itertools.product(*(arm.grid[k] for k in keys))
    ]


def point_names(arm: Arm) -> list[str]:
    """Folder names for the arm's grid combinations, in `points` order: `train.lr=0.002+train.batch_size=64`.
    A name that would be long, or that two combinations would share once made a file name (`/` and spaces
    replaced), ends in a short hash of the combination instead: names stay bounded, distinct and stable."""
    combos = points(arm)
    plain = ["+".join(s.replace("/", "_").replace(" ", "") for s in sets) or "default" for sets in combos]
    names = []
    for sets, name in zip(combos, plain):
        if len(name.encode()) > MAX_POINT_NAME or plain.count(name) > 1:
            digest = hashlib.sha256("\n".join(sets).encode()).hexdigest()[:12]
            name = name.encode()[: MAX_POINT_NAME - len(digest) - 1].decode(errors="ignore") + "-" + digest
        names.append(name)
    return names


def load_plan(path: Path) -> tuple[Plan, Path]:
    """The validated plan and its base recipe's path; every arm × grid point's recipe is checked as well."""
    raw = read_yaml(path, "sweep plan")
    plan = validate_dict(raw, str(path), Plan)
    base = (path.parent / plan.recipe).resolve() if not Path(plan.recipe).is_absolute() else Path(plan.recipe)
    try:
        load_recipe(base)
    except UserError as exc:
        raise UserError(f"{path}: recipe: {exc}") from None
    problems = []
    baseline = next(a for a in plan.arms if a.name == plan.baseline)
    for i, arm in enumerate(plan.arms):
        inherited = points(baseline)[0] if arm.at_baseline else []  # the baseline's choice is one of these
        for point in points(arm):
            try:
                recipe_for(plan, base, arm, [*inherited, *point], plan.seeds[0])
            except UserError as exc:
                first = str(exc).splitlines()[0]
                problems.append(
                    f"{path}: arms.{i} ({arm.name}){' ' + ','.join(point) if point else ''}: {first.split(': ', 1)[-1]}"
                )
                break
    if problems:
        raise UserError("\n".join(problems))
    return plan, base


def overrides(plan: Plan, base: Recipe | None, arm: Arm, point: list[str], seed: int) -> list[str]:
    """The `--set` list of one run. Runs at different seeds hold out the same cold users (split.seed fixed to
    the base recipe's), so their per-user metrics pair up."""
    split_seed = [] if base is None or base.split.seed is not None else [f"split.seed={base.seed}"]
    return [*plan.set, *arm.set, *point, *split_seed, f"seed={seed}"]


def recipe_for(plan: Plan, base: Path, arm: Arm, point: list[str], seed: int) -> Recipe:
    return load_recipe(base, overrides(plan, load_recipe(base), arm, point, seed))
