"""The `ltrec` command line. Each command is a thin layer over one module, registered on `app` by the
modules below. Recipes, data columns and run folders are checked before torch is imported, so a user error
answers in a second, not after torch loads."""

from __future__ import annotations

import sys

import typer

from ltrec.cli import results, runs, serve, setup  # noqa: F401  (each registers its commands on app)
from ltrec.cli.app import app
from ltrec.files.errors import UserError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except UserError as exc:  # raised outside a command's own handling
        typer.echo(str(exc), err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
