"""A run's evaluation as `ltrec eval` runs it, the per-user file it writes, and the table it prints."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ltrec.data import Sequences
from ltrec.evaluation.engine import WARM, Evaluator, Result
from ltrec.evaluation.fit import fit_ensemble
from ltrec.files.safe import atomic_write
from ltrec.runtime.checkpoint import load_weights


def evaluate_run(run: Path, split: str, slices: list[str], ks: list[int] | None, overrides: list[str]):
    """`ltrec eval`: the run's best checkpoint on `split`; writes users_<split>.csv; returns (result, table)."""
    from ltrec.runtime.build import build_model, load_run

    recipe, seqs = load_run(run, overrides)
    model = build_model(recipe, seqs, fit=False)
    load_weights(model, run / "best.pt")
    evaluator = Evaluator(model, seqs, recipe.eval, recipe.data.max_len, "cpu", run, recipe.seed)
    from rich.console import Console

    progress = Console(stderr=True, soft_wrap=True).print  # fitting an ensemble takes minutes on a large log
    result = evaluator.run(split, ks, fit_ensemble(recipe, seqs, evaluator, run, progress=progress))
    write_per_user(result, seqs, run / f"users_{split}.csv")
    return result, {k: v for k, v in result.table(slices).items() if k in slices}


def write_per_user(result: Result, seqs: Sequences, path: Path) -> None:
    """Per-user metrics (CSV) so slices and significance tests can be computed later."""
    keys = [k for k in result.per_user]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["user_id", "slice", "train_events", *keys])
    train_len = seqs.train_lengths
    n = seqs.lengths
    for j, u in enumerate(result.users):
        events = train_len[u] if result.slice_of[j] in WARM else n[u] - 2
        w.writerow([seqs.users[u], result.slice_of[j], int(events), *(f"{result.per_user[k][j]:.6g}" for k in keys)])
    atomic_write(path, out.getvalue())
    # the protocol beside it: `ltrec eval --set` may rewrite the file under another one, and compare must see that
    atomic_write(path.with_suffix(".json"), json.dumps({"protocol": result.protocol}) + "\n")


def format_table(table: dict[str, dict[str, float]], proto: str, split: str, ks) -> str:
    """A plain-text table: one row per slice, users and hr/ndcg/mrr at each K."""
    cols = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "mrr")]
    head = f"{'slice':<6} {'users':>7} " + " ".join(f"{c:>8}" for c in cols)
    lines = [f"{split} — {proto}", head, "-" * len(head)]
    for name, row in table.items():
        vals = " ".join(f"{row.get(c, float('nan')):>8.4f}" for c in cols)
        lines.append(f"{name:<6} {int(row['users']):>7} {vals}")
    return "\n".join(lines)
