"""`ltrec sweep`: a fair comparison of methods on the user's own data, in one command.

A plan (`plan.py`) names a base recipe, arms (overrides, optionally a small grid), seeds and a baseline. Every
run is a real `ltrec train` (`run.py`); grids are searched on the validation split at the first seed, then the
chosen setting runs at every seed. The result (`table.py`) is `ltrec compare`'s paired test per slice, with
mean ± std over seeds, written beside the runs. Nothing here imports torch: the runs are separate processes.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..errors import UserError
from .plan import Plan, load_plan
from .run import STATE, Sweep, sweep_folder
from .table import write_table

__all__ = ["Plan", "load_plan", "plan_schema", "run_sweep", "sweep_folder"]


def plan_schema() -> dict:
    schema = Plan.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ltrec sweep plan"
    return schema


def run_sweep(plan_path: Path, out: Path | None, jobs: int, resume: bool, table_only: bool,
              fail_fast: bool) -> tuple[str, int]:
    """Run (or with `table_only` only tabulate) the sweep; returns (the Markdown table, failed runs)."""
    console = Console(stderr=True, soft_wrap=True)
    plan, base = load_plan(plan_path)
    out = out or Path("runs") / plan_path.stem
    command = f"ltrec sweep {plan_path}" + (f" --out {out}" if out != Path("runs") / plan_path.stem else "")
    state = sweep_folder(out)
    if state is not None and state.get("plan") != str(plan_path.resolve()):
        raise UserError(f"{out}: holds the sweep of another plan ({state.get('plan')}); choose another --out")
    if table_only:
        if state is None:
            raise UserError(f"{out}: no sweep here yet ({STATE} missing); run `{command}` first")
        return write_table(plan, out, state, command), 0
    if state is not None and not resume:
        raise UserError(f"{out}: a sweep is already here; pass --resume to continue it, or choose another --out")
    if state is None and out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not a sweep folder; choose another --out")
    sweep = Sweep(plan, base, plan_path, out, jobs, fail_fast, console)
    failed = sweep.run()
    return write_table(plan, out, sweep_folder(out), command), failed
