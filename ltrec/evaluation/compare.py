"""`ltrec compare`: slices × metrics across runs, with paired per-user significance against the first run.

A run argument may join several runs with commas (e.g. the same recipe at seeds 0,1,2): their per-user
metrics are averaged per user first, so the test pairs users, not seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ltrec.evaluation.metrics import paired_test
from ltrec.files.errors import UserError
from ltrec.files.runs import ENSEMBLE, check_run, protocol_of, ranking_protocol, read_per_user


def _check_protocols(runs: list[Path], split: str) -> str:
    protocols = [(run, protocol_of(run, split)) for run in runs]
    first = ranking_protocol(protocols[0][1])
    for run, p in protocols[1:]:
        if ranking_protocol(p) != first:
            raise UserError(
                f"{run}: its per-user {split} metrics are '{p}', but {protocols[0][0]}'s are "
                f"'{protocols[0][1]}'; a comparison needs one protocol: re-run `ltrec eval` on one of "
                "them with the other's --set (plain `ltrec eval RUN` restores the run's own recipe)"
            )
    notes = {p[len(ranking_protocol(p)) :] for _, p in protocols}
    with_ensemble = [run.name for run, p in protocols if ENSEMBLE in p]
    if len(with_ensemble) == len(runs) and len(notes) == 1:
        first += notes.pop()
    elif with_ensemble:
        first += f"; scores of an ensemble in {', '.join(with_ensemble)}"
    return first


def _check_same(ref: tuple, other: tuple, ref_name: str, name: str) -> None:
    if not (np.array_equal(ref[0], other[0]) and np.array_equal(ref[1], other[1])):
        raise UserError(f"{name}: its users or slices differ from {ref_name}; compare runs on the same data and split")


def load_group(spec: str, split: str) -> tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    runs = [Path(p) for p in spec.split(",") if p]
    parts = [read_per_user(run, split)[:3] for run in runs]
    for run, part in zip(runs[1:], parts[1:]):
        _check_same(parts[0], part, str(runs[0]), str(run))
    means = {k: np.mean([p[2][k] for p in parts], axis=0) for k in parts[0][2]}
    label = runs[0].name if len(runs) == 1 else f"{runs[0].name} (+{len(runs) - 1})"
    return label, parts[0][0], parts[0][1], means


def compare(
    specs: list[str],
    split: str = "test",
    metrics=("ndcg@10", "hr@10"),
    slices=("all", "head", "tail", "cold", "cold-adapted"),
) -> dict:
    runs = [check_run(Path(p)) for spec in specs for p in spec.split(",") if p]
    if not runs or any(not [p for p in spec.split(",") if p] for spec in specs):
        raise UserError("compare: an empty run argument; give run folders, seeds joined by commas")
    protocol = _check_protocols(runs, split)
    groups = [load_group(s, split) for s in specs]
    for g, spec in zip(groups[1:], specs[1:]):
        _check_same(groups[0][1:3], g[1:3], specs[0], spec)
    base_slices = groups[0][2]
    out = {"split": split, "protocol": protocol, "runs": [g[0] for g in groups], "rows": []}
    for name in slices:
        mask = np.isin(base_slices, ("head", "tail")) if name == "all" else base_slices == name
        if not mask.any():
            continue
        for metric in metrics:
            if metric not in groups[0][3]:
                raise UserError(f"--metric {metric}: not in the per-user file (have: {', '.join(groups[0][3])})")
            base = groups[0][3][metric][mask]
            row = {
                "slice": name,
                "metric": metric,
                "users": int(mask.sum()),
                "values": [float(base.mean())],
                "tests": [],
            }
            for g in groups[1:]:
                other = g[3][metric][mask]
                row["values"].append(float(other.mean()))
                row["tests"].append(paired_test(base, other))
            out["rows"].append(row)
    return out


def format_test(t: dict) -> str:
    """A paired test as `+2.5% (p=0.012)`."""
    pv = t["p_value"]  # under 0.001 one significant digit, so 0.0003 does not print as 0.000
    p = f"p<{1 / t['n_boot']:g}" if pv == 0 else f"p={pv:.3f}" if pv >= 1e-3 else f"p={pv:.1g}"
    return f"{100 * t['rel_diff']:+.1f}% ({p})"


def format_comparison(result: dict) -> str:
    labels = result["runs"]
    head = ["slice", "metric", "users", *labels] + [f"Δ% {lab} (p)" for lab in labels[1:]]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for row in result["rows"]:
        cells = [row["slice"], row["metric"], str(row["users"]), *(f"{v:.4f}" for v in row["values"])]
        cells += [format_test(t) for t in row["tests"]]
        lines.append(" | ".join(cells))
    proto = f"{result['protocol']}; " if result.get("protocol") else ""
    note = (
        f"\n{result['split']} split; {proto}per-user metrics averaged over the runs joined by commas; "
        "p: two-sided paired bootstrap over users (10,000 resamples) of the difference to the first column"
    )
    return "\n".join("| " + line + " |" for line in lines) + note
