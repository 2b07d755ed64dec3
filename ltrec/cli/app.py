"""The typer app every command registers on, and how a user error ends a command (one line, exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ltrec.files.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sequential recommenders that serve long-tail users too.",
)
SCHEMA_DIR = Path("schemas")
Sets = Annotated[list[str] | None, typer.Option("--set", help="override a recipe key: --set train.epochs=5")]
RunDir = Annotated[str | None, typer.Argument(help="run directory (default: the newest under ./runs)")]


def fail(exc: UserError) -> None:
    if exc.echo:
        typer.echo(str(exc), err=True)
    raise typer.Exit(exc.exit_code)


def checked_recipe(path: Path, sets: list[str], data: bool = True):
    """The recipe, validated, and its data source's columns checked (no torch needed for either)."""
    from ltrec.data import check_source
    from ltrec.recipe import load_recipe

    recipe = load_recipe(path, sets)
    for note in recipe.notes:
        typer.echo(note, err=True)
    if data:
        try:
            check_source(recipe.data)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
    return recipe
