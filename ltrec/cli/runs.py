"""Commands on one run: train, eval, export, predict."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from ltrec.cli.app import RunDir, Sets, app, checked_recipe, fail
from ltrec.files.errors import UserError


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="recipe.yaml")],
    set_: Sets = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default: <output.dir>/<name>)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run from its last checkpoint")] = False,
) -> None:
    """Train a recipe: progress, validation every epoch, early stopping, checkpoints, a test table by slice.

    Data-parallel on N processes: torchrun --nproc_per_node=N -m ltrec train RECIPE."""
    from ltrec.runtime.lifeline import bind

    bind()  # started by a sweep: end with it
    try:
        if int(os.environ.get("RANK", "0") or 0) == 0:  # one process checks; under torchrun all check again below
            given = checked_recipe(recipe, set_ or [])
            from ltrec.files.lock import holder

            busy = holder(out or Path(given.output.dir) / given.name)  # told now, not after torch has loaded
            if busy is not None:
                raise busy
        from ltrec.recipe import load_recipe
        from ltrec.runtime.distributed import process_group
        from ltrec.training.loop import train as run_training

        with process_group() as dist:  # a process group only under torchrun (WORLD_SIZE > 1)
            with dist.together():
                loaded = load_recipe(recipe, set_ or [])
            run_training(loaded, out, overwrite, resume, dist=dist)
    except UserError as exc:
        fail(exc)


@app.command("eval")
def evaluate(
    run_dir: RunDir = None,
    slice_: Annotated[
        list[str] | None, typer.Option("--slice", help="all | head | tail | cold | cold-adapted; repeatable")
    ] = None,
    split: Annotated[str, typer.Option(help="valid | test")] = "test",
    ks: Annotated[str | None, typer.Option(help="cut-offs, e.g. 5,10,20 (default: the recipe's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override an eval key of the run's recipe: --set eval.adapt.steps=5"),
    ] = None,
) -> None:
    """Evaluate a trained run's best checkpoint by user slice (full ranking unless the recipe says sampled)."""
    try:
        from ltrec.files.runs import find_run
        from ltrec.recipe import load_recipe

        slices, cuts = _slices(slice_, split), _parse_ks(ks)
        run = find_run(run_dir)
        overrides, cuts = _eval_overrides(set_ or [], cuts)
        load_recipe(run / "recipe.yaml", overrides)  # a bad --set answers before torch loads
        from ltrec.api import Run
        from ltrec.evaluation.run import format_table

        result = Run(run).evaluate(split, slices, cuts, overrides)
    except UserError as exc:
        fail(exc)
    table = result.slices
    if as_json:
        typer.echo(json.dumps({"run": str(run), "split": split, "protocol": result.protocol, "slices": table}))
        return
    typer.echo(format_table(table, result.protocol, split, result.ks))
    missing = [s for s in slices if s not in table]
    if missing:
        typer.echo(
            f"no {' or '.join(missing)} users in this run, so no row for {'them' if len(missing) > 1 else 'it'}"
            + (
                "; hold users out of training with split.cold_users for a cold slice"
                if any(s.startswith("cold") for s in missing)
                else ""
            )
        )
    typer.echo(f"pictures: ltrec report {run}")


def _slices(given: list[str] | None, split: str) -> list[str]:
    from ltrec.files.runs import SLICES

    bad = [s for s in given or [] if s not in SLICES]
    if bad:
        raise UserError(f"--slice {bad[0]}: expected one of {', '.join(SLICES)}")
    if split not in ("valid", "test"):
        raise UserError(f"--split {split}: expected valid or test")
    return list(given or SLICES)


def _eval_overrides(sets: list[str], cuts: list[int] | None) -> tuple[list[str], list[int] | None]:
    """Only evaluation settings may change after training: anything else would not match the weights.
    `eval.ks` is taken as --ks (the monitored metric only mattered while training)."""
    kept = []
    for text in sets:
        from ltrec.api import check_eval_override

        key, value = check_eval_override(text)
        if key == "eval.ks":
            cuts = _parse_ks(value.strip().strip("[]"), f"--set {text}")
        else:
            kept.append(text)
    return kept, cuts


def _parse_ks(text: str | None, flag: str = "--ks") -> list[int] | None:
    if text is None:
        return None
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise UserError(f"{flag}: expected positive integers separated by commas, e.g. 5,10,20")
    return ks


@app.command()
def export(
    run_dir: RunDir = None,
    out: Annotated[Path | None, typer.Option(help="bundle directory (default: RUN_DIR/bundle)")] = None,
    k: Annotated[int, typer.Option(min=1, help="top-K computed inside the graph")] = 10,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="score items with an int8 copy of the item table: faster predict and serve, the top-K "
            "measured against torch at export (BENCHMARKS.md)",
        ),
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="override an eval key of the run's recipe, e.g. an ensemble `ltrec eval --set` fitted: "
            "--set eval.ensemble={}",
        ),
    ] = None,
) -> None:
    """Export the best checkpoint as an ONNX bundle (model.onnx + bundle.json), checked against torch."""
    try:
        from ltrec.files.runs import find_run
        from ltrec.recipe import load_recipe

        run = find_run(run_dir)
        overrides, _ = _eval_overrides(set_ or [], None)
        load_recipe(run / "recipe.yaml", overrides)  # a bad --set answers before torch loads
        from ltrec.deploy.export import export_bundle

        bundle = export_bundle(run, out or run / "bundle", k, overrides, int8)
    except UserError as exc:
        fail(exc)
    typer.echo(f"bundle: {bundle}  (next: ltrec predict {bundle} --input histories.csv)")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="bundle directory written by `ltrec export`")],
    input_: Annotated[Path, typer.Option("--input", help="events: CSV, Parquet or JSON, one row per event")],
    output: Annotated[
        str, typer.Option(help="file to write: Parquet where it ends in .parquet, else CSV (- for standard output)")
    ] = "predictions.csv",
    k: Annotated[int | None, typer.Option(min=1, help="items per user (default: the bundle's K)")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="users per onnxruntime call [default: 256]")] = None,
    user_col: Annotated[str | None, typer.Option(help="user column (default: the recipe's)")] = None,
    item_col: Annotated[str | None, typer.Option(help="item column (default: the recipe's)")] = None,
    time_col: Annotated[str | None, typer.Option(help="time column (default: the recipe's)")] = None,
    exclude_seen: Annotated[
        bool | None,
        typer.Option(
            "--exclude-seen/--include-seen",
            help="never recommend an item already in the history (default: as the run was evaluated, eval.mask_seen)",
        ),
    ] = None,
) -> None:
    """Top-K next items for each user of an events file, with onnxruntime on CPU (no torch)."""
    try:
        from ltrec.deploy.predict import PREDICT_BATCH, run_predict

        summary = run_predict(
            bundle,
            input_,
            output,
            k=k,
            batch_size=batch_size or PREDICT_BATCH,
            columns={"user": user_col, "item": item_col, "time": time_col},
            exclude_seen=exclude_seen,
        )
    except UserError as exc:
        fail(exc)
    typer.echo(summary, err=output == "-")
