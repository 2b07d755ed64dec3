"""`ltrec sweep`: a fair comparison of methods on the user's own data, in one command.

A plan (`plan.py`) names a base recipe, arms (overrides, optionally a small grid), seeds and a baseline. Every
run is a real `ltrec train` (`run.py`); grids are searched on the validation split at the first seed, then the
chosen setting runs at every seed. The result (`table.py`) is `ltrec compare`'s paired test per slice, with
mean ± std over seeds, written beside the runs. Nothing here imports torch: the runs are separate processes.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ltrec.files.errors import UserError
from ltrec.files.lock import LOCK, locked
from ltrec.files.sweeps import STATE
from ltrec.sweep.plan import Plan, load_plan
from ltrec.sweep.run import Sweep, sweep_folder
from ltrec.sweep.table import write_table

__all__ = ["Plan", "load_plan", "plan_schema", "run_sweep", "sweep_folder"]


def plan_schema() -> dict:
    schema = Plan.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ltrec sweep plan"
    return schema


def run_sweep(
    plan_path: Path, out: Path | None, jobs: int, resume: bool, table_only: bool, fail_fast: bool
) -> tuple[str, int]:
    """Run (or with `table_only` only tabulate) the sweep; returns (the Markdown table, failed runs)."""
    console = Console(stderr=True, soft_wrap=True)
    plan, base = load_plan(plan_path)
    out = out or Path("runs") / plan_path.stem
    command = f"ltrec sweep {plan_path}" + (f" --out {out}" if out != Path("runs") / plan_path.stem else "")
    _check_out(out)
    state = sweep_folder(out)
    if state is not None and state.plan != str(plan_path.resolve()):
        raise UserError(f"{out}: holds the sweep of another plan ({state.plan}); choose another --out")
    if table_only:
        if state is None:
            raise UserError(f"{out}: no sweep here yet ({STATE} missing); run `{command}` first")
        return write_table(plan, out, state, command), 0
    if state is not None and not resume:
        raise UserError(f"{out}: a sweep is already here; pass --resume to continue it, or choose another --out")
    try:
        if state is None and out.exists() and any(p.name != LOCK for p in out.iterdir()):
            raise UserError(f"{out}: exists and is not a sweep folder; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{out}: cannot create the sweep folder ({exc.strerror or exc}); choose another --out"
        ) from None
    with locked(out, "ltrec sweep", "sweep folder"):
        sweep = Sweep(plan, base, plan_path, out, jobs, fail_fast, console)
        failed = sweep.run()
        return write_table(plan, out, sweep_folder(out), command), failed


def _check_out(out: Path) -> None:
    """--out must be a folder or a path where one can be made: not a file, nor a path below a file."""
    try:
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: exists and is not a directory; choose another --out")
        for parent in out.parents:
            if parent.exists() and not parent.is_dir():
                raise UserError(f"{out}: {parent} is a file, not a folder; choose another --out")
    except OSError as exc:
        raise UserError(f"{out}: cannot use this folder ({exc.strerror or exc}); choose another --out") from None
