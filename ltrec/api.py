"""ltrec from Python: what the CLI's verbs do, as calls that return plain data (dataclasses and dicts, each
with `.to_pandas()` where pandas is installed). The CLI's `train`, `eval`, `export` and `compare` call these,
so the two cannot drift. Errors are the CLI's one-line `UserError`s.

Nothing here imports torch until a call trains, evaluates or exports: `import ltrec` stays light, and
`Bundle` (onnxruntime and numpy only) never loads it.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltrec.files.errors import UserError, optional
from ltrec.recipe import Recipe

if TYPE_CHECKING:
    from ltrec.deploy.recommend import Bundle

RecipeLike = Recipe | str | Path | Mapping[str, Any]
SLICES = ("all", "head", "tail", "cold", "cold-adapted")


def load_recipe(recipe: RecipeLike, overrides: Sequence[str] = (), data: Any = None) -> Recipe:
    """A validated recipe from a file, a dict or a `Recipe`, with `overrides` as `--set` takes them. `data`, a
    pandas or polars DataFrame or a pyarrow Table, stands in for `data.source` (see `train`)."""
    from ltrec.recipe import apply_overrides, validate_dict
    from ltrec.recipe import load_recipe as from_file

    if isinstance(recipe, (str, Path)) and data is None:
        return from_file(recipe, list(overrides))
    if isinstance(recipe, (str, Path)):
        from ltrec.recipe import read_yaml

        raw, where = read_yaml(Path(recipe)), str(recipe)
    else:
        raw = recipe.model_dump() if isinstance(recipe, Recipe) else copy.deepcopy(dict(recipe))  # the caller's stays
        where = "recipe"
    raw = apply_overrides(raw, list(overrides))
    if data is not None:  # validated with a stand-in source; the snapshot replaces it
        raw = {**raw, "data": {**(raw.get("data") or {}), "source": "frame.parquet"}}
    loaded = validate_dict(raw, where)
    return loaded if data is None else _with_snapshot(loaded, data)


def _with_snapshot(recipe: Recipe, frame: Any) -> Recipe:
    """`recipe` reading a Parquet snapshot of `frame`, written once by DuckDB under output.dir/data and named
    by its content: every later `ltrec eval`, `export` or `--resume` of the run reads the same events, and
    the run's data fingerprint can be checked against them."""
    import duckdb

    folder = Path(recipe.output.dir) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{recipe.name}.{os.getpid()}.parquet"
    con = duckdb.connect()
    try:
        try:
            con.register("frame", frame)
        except Exception as exc:  # DuckDB names what it cannot scan
            raise UserError(
                f"data: a {type(frame).__name__} is not a table DuckDB can read ({str(exc).splitlines()[0][:200]}); "
                "pass a pandas or polars DataFrame or a pyarrow Table"
            ) from None
        con.execute(f"COPY (SELECT * FROM frame) TO '{tmp}' (FORMAT parquet)")
    finally:
        con.close()
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:16]
    final = folder / f"{recipe.name}-{digest}.parquet"
    os.replace(tmp, final)
    out = recipe.model_copy(deep=True)
    out.data.source = str(final.resolve())
    return out


def check_eval_override(text: str) -> tuple[str, str]:
    """(key, value) of an override of a finished run, which may change evaluation settings only: anything
    else would not match the trained weights."""
    key, _, value = text.partition("=")
    key = key.strip()
    if not key.startswith("eval."):
        raise UserError(
            f"--set {key}: only eval.* keys can change after training (the run was trained with the rest); "
            "train a new run to change it"
        )
    return key, value


@dataclass(frozen=True)
class Evaluation:
    run: Path
    split: str
    protocol: str
    ks: list[int]  # the cut-offs of the metrics
    slices: dict[str, dict[str, float]]  # slice → {"users": n, "ndcg@10": ..., ...}

    def to_pandas(self):
        """One row per slice, one column per metric (and `users`)."""
        return optional("pandas", "pandas").DataFrame.from_dict(self.slices, orient="index")


@dataclass(frozen=True)
class Run:
    """A run folder that `train` wrote (or `ltrec train`)."""

    path: Path

    @classmethod
    def open(cls, path: str | Path) -> Run:
        from ltrec.files.runs import check_run

        return cls(check_run(Path(path)))

    @property
    def recipe(self) -> Recipe:
        from ltrec.recipe import load_recipe as from_file

        return from_file(self.path / "recipe.yaml")

    @property
    def metrics(self) -> dict:
        """metrics.json: the best epoch, and valid and test by slice as training finished them."""
        from ltrec.files.runs import Summary, read_json

        return read_json(self.path / "metrics.json", Summary).model_dump()

    def evaluate(
        self,
        split: str = "test",
        slices: Sequence[str] | None = None,
        ks: Sequence[int] | None = None,
        overrides: Sequence[str] = (),
    ) -> Evaluation:
        """`ltrec eval`: the best checkpoint by slice; writes users_<split>.csv. `overrides`: eval.* keys."""
        from ltrec.evaluation.run import evaluate_run
        from ltrec.files.lock import locked
        from ltrec.recipe import load_recipe as from_file

        chosen = list(slices or SLICES)
        bad = [s for s in chosen if s not in SLICES]
        if bad:
            raise UserError(f"slice {bad[0]}: expected one of {', '.join(SLICES)}")
        if split not in ("valid", "test"):
            raise UserError(f"split {split}: expected valid or test")
        for text in overrides:
            check_eval_override(text)
        from_file(self.path / "recipe.yaml", list(overrides))  # a bad override answers before torch loads
        with locked(self.path, "ltrec train or eval"):  # eval rewrites users_*.csv and the fitted ensemble
            result, table = evaluate_run(self.path, split, chosen, list(ks) if ks else None, list(overrides))
        kept = {k: v for k, v in table.items() if k in chosen}
        return Evaluation(self.path, split, result.protocol, list(ks or result.ks), kept)

    def export(
        self, out: str | Path | None = None, k: int = 10, overrides: Sequence[str] = (), int8: bool = False
    ) -> Bundle:
        """`ltrec export`: the ONNX bundle (default: RUN/bundle), checked against torch; opened. `int8`: as
        `ltrec export --int8`."""
        from ltrec.deploy.export import export_bundle
        from ltrec.deploy.recommend import Bundle

        folder = export_bundle(self.path, Path(out) if out else self.path / "bundle", k, list(overrides), int8)
        return Bundle.open(folder)


def train(
    recipe: RecipeLike,
    overrides: Sequence[str] = (),
    *,
    data: Any = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    quiet: bool = False,
) -> Run:
    """`ltrec train`: the recipe (with `overrides`) trained into a run folder. `data`: a DataFrame or Arrow
    table in place of data.source, snapshotted to Parquet by DuckDB under output.dir/data so the run stays
    reproducible by every verb. Progress goes to standard error unless `quiet`."""
    from rich.console import Console

    from ltrec.training.loop import train as run_training

    loaded = load_recipe(recipe, overrides, data)
    console = Console(stderr=True, soft_wrap=True, quiet=quiet)
    return Run(Path(run_training(loaded, Path(out) if out else None, overwrite, resume, console)))


@dataclass(frozen=True)
class Comparison:
    split: str
    protocol: str
    table: dict  # as `ltrec compare --json` prints it

    def to_pandas(self):
        """One row per (slice, metric): users, each run's mean, and each later run's paired test against the
        first (relative difference and p-value)."""
        rows = []
        for row in self.table["rows"]:
            out = {"slice": row["slice"], "metric": row["metric"], "users": row["users"]}
            out.update(zip(self.table["runs"], row["values"]))
            for label, test in zip(self.table["runs"][1:], row["tests"]):
                out[f"{label} Δ"], out[f"{label} p"] = test["rel_diff"], test["p_value"]
            rows.append(out)
        return optional("pandas", "pandas").DataFrame(rows)


def compare(
    runs: Sequence[str | Path | Sequence[str | Path]],
    split: str = "test",
    metrics: Sequence[str] = ("ndcg@10", "hr@10"),
    slices: Sequence[str] = SLICES,
) -> Comparison:
    """`ltrec compare`: runs (a list of runs stands for several seeds of one) against the first, paired by user."""
    from ltrec.evaluation.compare import compare as compare_runs

    specs = [",".join(map(str, r)) if isinstance(r, (list, tuple)) else str(r) for r in runs]
    result = compare_runs(specs, split, tuple(metrics), tuple(slices))
    return Comparison(split, result["protocol"], result)


@dataclass(frozen=True)
class SweepResult:
    path: Path
    table: str  # the Markdown table `ltrec sweep` prints
    failed: int  # runs that failed


def sweep(plan: str | Path, out: str | Path | None = None, jobs: int = 1, resume: bool = False) -> SweepResult:
    """`ltrec sweep`: every arm of the plan at every seed, as subprocesses; the paired table."""
    from ltrec.sweep import run_sweep

    plan = Path(plan)
    folder = Path(out) if out else Path("runs") / plan.stem
    table, failed = run_sweep(plan, folder, jobs, resume, False, False)
    return SweepResult(folder, table, failed)


__all__ = [
    "Comparison",
    "Evaluation",
    "Recipe",
    "Run",
    "SweepResult",
    "UserError",
    "compare",
    "load_recipe",
    "sweep",
    "train",
]
