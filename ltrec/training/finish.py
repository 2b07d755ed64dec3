"""The end of training: the best epoch's weights evaluated on valid and test, the ensemble fitted, and
`metrics.json` and the per-user files written."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from ltrec.evaluation.engine import Evaluator
from ltrec.evaluation.fit import fit_ensemble
from ltrec.evaluation.run import format_table, write_per_user
from ltrec.files.runs import read_epochs
from ltrec.files.safe import atomic_write
from ltrec.runtime.checkpoint import load_weights, save_torch
from ltrec.runtime.distributed import LOCAL, Dist


def finish(recipe, seqs, model, evaluator: Evaluator, run_dir: Path, console: Console, dist: Dist = LOCAL) -> Path:
    """Evaluate the best epoch's weights on valid and test; write metrics.json and the per-user files."""
    history = []
    with dist.together():
        if dist.main:
            if model.trainable:
                load_weights(model, run_dir / "best.pt")
            else:  # a fitted model's checkpoint is its fitted state: eval and export load it as any other
                save_torch(run_dir / "best.pt", {"model": model.state_dict(), "epoch": 0})
            history = read_epochs(run_dir / "metrics.jsonl")
    dist.broadcast_module_(model)  # rank 0 read best.pt; the others get its weights
    monitor = recipe.train.monitor
    summary = {
        "best_epoch": max(history, key=lambda r: r["valid"][monitor.slice][monitor.metric])["epoch"] if history else 0,
        "epochs": len(history),
        "seconds_per_epoch": sum(r["seconds"] for r in history) / len(history) if history else 0.0,
    }
    ensemble = fit_ensemble(recipe, seqs, evaluator, run_dir, dist, console.print)
    for split in ("valid", "test"):
        result = evaluator.run(split, None, ensemble)
        summary[split], summary["protocol"] = result.table(), result.protocol
        with dist.together():
            if dist.main:
                write_per_user(result, seqs, run_dir / f"users_{split}.csv")
    with dist.together():
        if dist.main:
            atomic_write(run_dir / "metrics.json", json.dumps(summary, indent=2))
    console.print(format_table(summary["test"], summary["protocol"], "test", recipe.eval.ks))
    console.print(f"run: {run_dir}  (next: ltrec eval {run_dir} --slice tail; pictures: ltrec report {run_dir})")
    return run_dir
