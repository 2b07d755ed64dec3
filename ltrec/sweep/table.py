"""The sweep's result: per arm and slice, the test metrics' mean ± std over seeds and the difference to the
baseline with a paired bootstrap p-value over users (seeds averaged per user, as `ltrec compare` does),
written as table.md and table.json beside the runs, with the grid results and the chosen settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ltrec.evaluation.compare import compare
from ltrec.evaluation.compare import format_test as fmt_test
from ltrec.files.runs import Summary, read_json
from ltrec.files.safe import atomic_write
from ltrec.files.sweeps import SweepState
from ltrec.sweep.plan import Plan
from ltrec.sweep.run import finished

METRICS = ("ndcg@10", "hr@10")
SLICES = ("all", "head", "tail", "cold")


def sweep_table(plan: Plan, out: Path, state: SweepState) -> dict:
    """What the finished runs of the sweep in `out` say (arms with no finished run are listed as such)."""
    done = {a.name: [s for s in plan.seeds if finished(out / f"{a.name}-s{s}")] for a in plan.arms}
    base = plan.baseline
    result = {
        "baseline": base,
        "seeds": plan.seeds,
        "protocol": None,
        "chosen": state.chosen,
        "grid": state.grid,
        "failed": state.failed,
        "arms": [],
        "at_baseline": [a.name for a in plan.arms if a.at_baseline],
    }
    for arm in plan.arms:
        seeds = done[arm.name]
        row = {"arm": arm.name, "seeds": seeds, "slices": {}}
        if seeds:
            summaries = [read_json(out / f"{arm.name}-s{s}" / "metrics.json", Summary) for s in seeds]
            result["protocol"] = summaries[0].protocol
            row["epochs"] = float(np.mean([s.epochs for s in summaries]))
            row["seconds_per_epoch"] = float(np.mean([s.seconds_per_epoch for s in summaries]))
            for name in SLICES:
                if name in summaries[0].test:
                    row["slices"][name] = {
                        m: {
                            "mean": float(np.mean([s.test[name][m] for s in summaries])),
                            "std": float(np.std([s.test[name][m] for s in summaries])),
                            "users": int(summaries[0].test[name]["users"]),
                        }
                        for m in METRICS
                    }
        common = [s for s in seeds if s in done[base]]
        if arm.name != base and common:  # paired over users, on the seeds both have finished
            joined = [",".join(str(out / f"{a}-s{s}") for s in common) for a in (base, arm.name)]
            for r in compare(joined, "test", METRICS, SLICES)["rows"]:
                row["slices"].get(r["slice"], {}).get(r["metric"], {}).update(
                    {
                        "rel_diff": r["tests"][0]["rel_diff"],
                        "p_value": r["tests"][0]["p_value"],
                        "test": fmt_test(r["tests"][0]),
                        "paired_seeds": common,
                    }
                )
        result["arms"].append(row)
    return result


def format_table(result: dict, command: str) -> str:
    """Markdown: one row per arm, per slice NDCG@10 and HR@10 mean ± std with Δ% vs the baseline (p)."""
    slices = [s for s in SLICES if any(s in a["slices"] for a in result["arms"])]
    head = ["arm", "seeds", *(f"{s} {m}" for s in slices for m in METRICS), "epochs", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in result["arms"]:
        cells = [a["arm"] + (" (baseline)" if a["arm"] == result["baseline"] else ""), str(len(a["seeds"]))]
        for s in slices:
            for m in METRICS:
                c = a["slices"].get(s, {}).get(m)
                cells.append(
                    "–" if c is None else f"{c['mean']:.4f} ± {c['std']:.4f}" + (f" {c['test']}" if "test" in c else "")
                )
        cells += [
            f"{a['epochs']:.1f}" if "epochs" in a else "–",
            f"{a['seconds_per_epoch']:.1f}" if "seconds_per_epoch" in a else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    at_base = result.get("at_baseline", [])
    chosen = [
        f"{arm}: " + ", ".join([f"at {result['baseline']}'s choice"] * (arm in at_base) + p)
        for arm, p in result["chosen"].items()
        if p or arm in at_base
    ]
    notes = [
        f"test split; {result['protocol'] or 'no run finished yet'}; mean ± std over seeds; Δ% vs "
        f"{result['baseline']} with a two-sided paired bootstrap p over users (seeds averaged per user)",
        f"reproduce: {command}",
    ]
    if chosen:
        notes.insert(1, "chosen on validation: " + "; ".join(chosen))
    if result["failed"]:
        notes.append("failed: " + "; ".join(f"{k} (log {v})" for k, v in result["failed"].items()))
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def write_table(plan: Plan, out: Path, state: SweepState, command: str) -> str:
    result = sweep_table(plan, out, state)
    text = format_table(result, command)
    atomic_write(out / "table.json", json.dumps({**result, "command": command}, indent=1))
    atomic_write(out / "table.md", text)
    return text
