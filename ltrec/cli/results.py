"""Commands that compare runs: compare, report, sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ltrec.cli.app import app, fail
from ltrec.files.errors import UserError


@app.command("compare")
def compare_runs(
    runs: Annotated[list[str], typer.Argument(help="run dirs; join seeds with commas: runs/a-s0,runs/a-s1")],
    split: Annotated[str, typer.Option(help="valid | test")] = "test",
    metric: Annotated[list[str] | None, typer.Option(help="repeatable (default: ndcg@10 and hr@10)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """One table of slices × metrics across runs, with the difference to the first and a paired p-value."""
    try:
        from ltrec.evaluation.compare import compare, format_comparison

        if len(runs) < 2:
            raise UserError("compare: give at least two runs (the first is the baseline)")
        result = compare(runs, split, tuple(metric or ("ndcg@10", "hr@10")))
    except UserError as exc:
        fail(exc)
    typer.echo(json.dumps(result, default=float) if as_json else format_comparison(result))


@app.command()
def report(
    runs: Annotated[list[str], typer.Argument(help="run directories; the first is the baseline")],
    out: Annotated[str, typer.Option(help="the HTML file to write (- for standard output)")] = "report.html",
) -> None:
    """One self-contained HTML page: long-tail curve, slice table with significance, training curves."""
    try:
        from ltrec.evaluation.report import write_report

        path = write_report([Path(r) for r in runs], out)
    except UserError as exc:
        fail(exc)
    typer.echo(f"wrote {path}", err=out == "-")


@app.command()
def sweep(
    plan: Annotated[Path, typer.Argument(help="sweep plan (YAML): a base recipe, arms, seeds, a baseline")],
    out: Annotated[Path | None, typer.Option(help="folder of the sweep's runs (default: runs/<plan name>)")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="runs side by side; the cores are split between them")] = 1,
    resume: Annotated[
        bool, typer.Option(help="continue a sweep: finished runs are kept, interrupted ones resume")
    ] = False,
    table: Annotated[bool, typer.Option("--table", help="only write and print the table of what has finished")] = False,
    fail_fast: Annotated[
        bool, typer.Option(help="stop at the first failed run (default: report it, carry on)")
    ] = False,
) -> None:
    """Compare methods on your data: every arm at every seed (grids tuned on validation), then the table of
    test metrics by slice with paired p-values against the baseline."""
    try:
        from ltrec.sweep import run_sweep

        text, failed = run_sweep(plan, out, jobs, resume, table, fail_fast)
    except UserError as exc:
        fail(exc)
    typer.echo(text)
    if failed:
        typer.echo(f"{failed} run(s) failed; their logs are named above", err=True)
        raise typer.Exit(1)
