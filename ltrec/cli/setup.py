"""Commands that set a project up: init, validate, schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ltrec.cli.app import SCHEMA_DIR, Sets, app, checked_recipe, fail
from ltrec.files.errors import UserError


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="folder for recipe.yaml")] = Path("."),
    data: Annotated[str | None, typer.Option(help="your own events file instead of MovieLens-100K")] = None,
    source: Annotated[str, typer.Option(help="where to get MovieLens-100K: pypi | grouplens")] = "pypi",
    force: Annotated[bool, typer.Option(help="overwrite an existing recipe.yaml")] = False,
    user_col: Annotated[
        str | None, typer.Option(help="with --data: the user column (default: from the header)")
    ] = None,
    item_col: Annotated[
        str | None, typer.Option(help="with --data: the item column (default: from the header)")
    ] = None,
    time_col: Annotated[
        str | None, typer.Option(help="with --data: the time column (default: from the header)")
    ] = None,
    sweep: Annotated[
        bool,
        typer.Option(
            "--sweep", help="also write sweep.yaml: plain training against the tail methods, for `ltrec sweep`"
        ),
    ] = False,
) -> None:
    """Write a commented starter recipe.yaml (and its JSON Schema) that trains on a real dataset."""
    from ltrec.cli.starter import init_project, write_sweep

    try:
        recipe, path = init_project(
            directory, data, source, force, {"user": user_col, "item": item_col, "time": time_col}
        )
        plan = write_sweep(directory, force) if sweep else None
    except UserError as exc:
        fail(exc)
    typer.echo(
        f"wrote {recipe} (data: {path})"
        + (f" and {plan}" if plan else "")
        + f"\nnext: ltrec train {recipe}"
        + (f"  or  ltrec sweep {plan} --jobs 2" if plan else "")
    )


@app.command()
def validate(
    recipes: Annotated[list[Path], typer.Argument(help="recipe files or sweep plans")],
    set_: Sets = None,
    data: Annotated[bool, typer.Option(help="also check the data source and its columns")] = True,
) -> None:
    """Check recipes and sweep plans: every problem in each file is reported at once, as `file: key: message`."""
    problems = []
    for path in recipes:
        try:
            if _is_plan(path):
                _checked_plan(path, set_ or [], data)
            else:
                checked_recipe(path, set_ or [], data)
            typer.echo(f"{path}: ok")
        except UserError as exc:
            problems.append(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}")
    if problems:
        typer.echo("\n".join(problems), err=True)
        raise typer.Exit(2)


def _is_plan(path: Path) -> bool:
    """A sweep plan is a mapping with `arms`; anything unreadable is left to the recipe check to explain."""
    from ltrec.recipe.load import read_yaml

    try:
        return "arms" in read_yaml(path, "sweep plan")
    except UserError:
        return False


def _checked_plan(path: Path, sets: list[str], data: bool) -> None:
    """The plan and every arm × grid point's recipe (load_plan checks them), and the base recipe's data."""
    from ltrec.sweep.plan import load_plan

    if sets:
        raise UserError(f"{path}: is a sweep plan; --set applies to recipes (a plan's overrides go in its `set:` list)")
    _, base = load_plan(path)
    if data:
        checked_recipe(base, [], data=True)


@app.command()
def schema(
    check: Annotated[bool, typer.Option(help="fail if the committed schema differs from the code")] = False,
    out: Annotated[
        str | None,
        typer.Option(help="where to write it (- for standard output; default: schemas/<recipe|sweep>.schema.json)"),
    ] = None,
    sweep: Annotated[bool, typer.Option("--sweep", help="the sweep plan's schema instead of the recipe's")] = False,
) -> None:
    """Write the recipe's JSON Schema (or the sweep plan's) for editor completion, or --check it is up to date."""
    from ltrec.files.safe import atomic_write, read_text
    from ltrec.recipe import recipe_schema

    if sweep:
        from ltrec.sweep import plan_schema as make
    else:
        make = recipe_schema
    out = out or str(SCHEMA_DIR / f"{'sweep' if sweep else 'recipe'}.schema.json")
    text = json.dumps(make(), indent=2) + "\n"
    try:
        if check:
            current = read_text(Path(out), "schema") if Path(out).is_file() else ""
            if current != text:
                typer.echo(
                    f"{out}: out of date; run `ltrec schema{' --sweep' if sweep else ''}` and commit it", err=True
                )
                raise typer.Exit(1)
            typer.echo(f"{out}: up to date")
            return
        if out != "-":
            Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, text, "--out")
    except UserError as exc:
        fail(exc)
    except OSError as exc:
        fail(UserError(f"--out {out}: cannot write here ({exc.strerror})"))
    if out != "-":
        typer.echo(f"wrote {out}")
