"""`ltrec report`: one self-contained HTML page (images embedded as data URIs, no scripts, opens offline).

Every figure comes from the runs' own files: the slice table from `metrics.json` (the evaluator's own
numbers, what `ltrec eval --json` prints), falling back to the means of `users_test.csv`; p-values, the
activity histogram and the long-tail curve from `users_test.csv` (per-user metrics and training events);
the head/tail threshold from `data.json`; training curves from `metrics.jsonl`.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ltrec.evaluation.charts import METRICS, K, bucket_label, buckets, curve_png, histogram_png, training_png
from ltrec.files.errors import UserError
from ltrec.files.runs import DataInfo, Summary, find_run, read_epochs, read_json, read_per_user
from ltrec.files.safe import atomic_write, read_text, same_or_inside


def fmt(value: float) -> str:
    """How the page writes a metric (tests format `ltrec eval --json` output with this too)."""
    return f"{value:.4f}"


def read_run(path: Path) -> dict:
    """Everything the page needs from one run directory, each file validated (a clear UserError if not)."""
    from ltrec.recipe import load_recipe

    run = find_run(str(path))
    users, slices, per_user, events = read_per_user(run, "test")  # sorted by user id
    missing = [m for m in METRICS if m not in per_user]
    if missing:
        raise UserError(
            f"{run}/users_test.csv: no {', '.join(missing)} column; run `ltrec eval {run} --ks 5,{K},20` first"
        )
    recipe = load_recipe(run / "recipe.yaml")
    tags = "".join(
        tag
        for on, tag in ((recipe.transfer.grad_align, " +GA"), (recipe.transfer.adversarial, " +AT"))
        if on is not None
    )
    summary = run / "metrics.json"
    return {
        "dir": run,
        "name": run.name,
        "label": f"{run.name} ({recipe.backbone.kind}{tags})",
        "recipe": read_text(run / "recipe.yaml", "recipe"),
        "slices": slices,
        "per_user": per_user,
        "events": events,
        "threshold": read_json(run / "data.json", DataInfo).head_threshold,
        "summary": read_json(summary, Summary).model_dump() if summary.is_file() else {},
        "history": read_epochs(run / "metrics.jsonl"),
    }


def slice_table(runs: list[dict]) -> list[dict]:
    """Rows slice × metric: users, each run's value (the evaluator's), and the paired test against run 1."""
    from ltrec.evaluation.compare import compare

    result = compare([str(r["dir"]) for r in runs], "test", METRICS)
    for row in result["rows"]:
        for j, run in enumerate(runs):
            saved = run["summary"].get("test", {}).get(row["slice"], {})
            if saved.get("users") == row["users"] and row["metric"] in saved:
                row["values"][j] = saved[row["metric"]]  # the evaluator's exact mean, not one from rounded CSV
    return result["rows"]


def long_tail(run: dict, bounds) -> list[dict]:
    """Per activity bucket (evaluated non-cold users): users and mean NDCG@K / HR@K."""
    warm = np.isin(run["slices"], ("head", "tail"))
    rows = []
    for lo, hi in bounds:
        mask = warm & (run["events"] >= lo) & (run["events"] < (hi or np.inf))
        rows.append(
            {
                "lo": lo,
                "label": bucket_label(lo, hi),
                "users": int(mask.sum()),
                **{m: float(run["per_user"][m][mask].mean()) if mask.any() else float("nan") for m in METRICS},
            }
        )
    return rows


def _p(test: dict) -> str:
    return f"p<{1 / test['n_boot']:g}" if test["p_value"] == 0 else f"p={test['p_value']:.3f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table><tr>{th}</tr>\n{body}</table>"


def slice_html(runs: list[dict], rows: list[dict]) -> str:
    head = [
        "slice",
        "metric",
        "users",
        *(r["name"] for r in runs),
        *(f"Δ {r['name']} vs {runs[0]['name']}" for r in runs[1:]),
    ]
    cells = []
    for row in rows:
        base = row["values"][0]
        diffs = [
            f"{v - base:+.4f} ({100 * (v / base - 1):+.1f}%, {_p(t)})" if base else f"{v - base:+.4f} ({_p(t)})"
            for v, t in zip(row["values"][1:], row["tests"])
        ]
        cells.append([row["slice"], row["metric"], str(row["users"]), *(fmt(v) for v in row["values"]), *diffs])
    return _table(head, cells)


def curve_html(runs: list[dict], curves: list[list[dict]]) -> str:
    head = ["training events", "users", *(f"{m} {r['name']}" for r in runs for m in METRICS)]
    rows = [
        [b["label"], f"{b['users']:,}", *(fmt(c[i][m]) for c in curves for m in METRICS)]
        for i, b in enumerate(curves[0])
    ]
    return _table(head, rows)


def run_html(run: dict) -> str:
    s = run["summary"]
    facts = (
        f"best epoch {s['best_epoch']} of {s['epochs']}, {s['seconds_per_epoch']:.1f} s/epoch"
        if s
        else "no metrics.json (training did not finish); evaluated with `ltrec eval`"
    )
    curves = training_png(run)
    what = " and discriminator accuracy" if any("disc_acc" in r for r in run["history"]) else ""
    img = (
        f'<img alt="training curves{what}: {html.escape(run["name"])}" src="{curves}">'
        if curves
        else "<p>no training epochs (nothing to train, e.g. the popularity baseline)</p>"
    )
    return (
        f"<h3>{html.escape(run['label'])}</h3><p class=note>{html.escape(str(run['dir']))}: "
        f"{html.escape(facts)}</p>{img}<details><summary>recipe.yaml</summary>"
        f"<pre>{html.escape(run['recipe'])}</pre></details>"
    )


CSS = """body{font-family:sans-serif;max-width:1140px;margin:1em auto;color:#222}img{max-width:100%}
table{border-collapse:collapse;margin:.5em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:14px}pre{background:#f6f6f6;padding:8px}"""


def expand_sweep(path: Path) -> list[Path]:
    """A sweep folder stands for its arms' runs at the first seed, the baseline first; a run for itself."""
    from ltrec.files.sweeps import read_state

    state = read_state(path)
    if state is None:
        return [path]
    runs = [r for r in state.runs if not r.folder.startswith("grid/")]
    first = min((r.seed for r in runs), default=None)
    chosen = [path / r.folder for r in runs if r.seed == first and (path / r.folder / "metrics.json").is_file()]
    if not chosen:
        raise UserError(f"{path}: a sweep with no finished run yet; run `ltrec sweep` on its plan first")
    base = state.baseline
    return sorted(chosen, key=lambda run: run.name != f"{base}-s{first}")


def activity_html(runs: list[dict], curves: list[list[dict]], threshold: int | None) -> str:
    """The histogram and the long-tail curve; both need evaluated (head or tail) users, which a run whose
    users_test.csv holds cold users only has none of."""
    if not curves[0]:
        return (
            "<h2>Users by activity</h2><p class=note>no head or tail user in users_test.csv of "
            f"{html.escape(runs[0]['name'])} (cold users only), so no activity histogram or long-tail "
            "curve</p>"
        )
    return f"""<h2>Users by activity</h2><img alt="user activity histogram" src="{histogram_png(runs[0])}">
<h2>The long-tail curve</h2>
<img alt="NDCG@{K} and HR@{K} by activity bucket" src="{curve_png(runs, curves, threshold)}">
{curve_html(runs, curves)}
<p class=note>Mean per-user metrics of the evaluated (non-cold) users in each bucket of training events,
from users_test.csv; the dashed line is the head/tail threshold.</p>
"""


def write_report(runs: list[Path], out: str | Path) -> str | Path:
    """Write the HTML page for `runs` (the first is the baseline) to `out` (- for standard output)."""
    runs = [r for run in runs for r in expand_sweep(Path(run))]
    if not runs:
        raise UserError("report: give at least one run directory")
    for run in runs:  # a page written over a run's own file would destroy it
        if str(out) != "-" and Path(out).exists() and same_or_inside(Path(out), run):
            raise UserError(
                f"--out {out}: is inside the run {run}; writing there would replace one of its "
                "files: choose another path"
            )
    loaded = [read_run(Path(r)) for r in runs]
    rows = slice_table(loaded)  # also checks that the runs share users and slices
    threshold = loaded[0]["threshold"]
    bounds = buckets(threshold)
    curves = [long_tail(r, bounds) for r in loaded]
    used = [i for i, b in enumerate(curves[0]) if b["users"]]  # buckets with no user are left out, not nan
    curves = [[c[i] for i in used] for c in curves]
    protocol = next((r["summary"]["protocol"] for r in loaded if r["summary"].get("protocol")), "see `ltrec eval`")
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>ltrec report</title><style>{CSS}</style></head>
<body><h1>ltrec report: {html.escape(", ".join(r["name"] for r in loaded))}</h1>
<p class=note>test split; {html.escape(protocol)}; head/tail threshold {threshold} training events.</p>
{activity_html(loaded, curves, threshold)}
<h2>By slice</h2>{slice_html(loaded, rows)}
<p class=note>Values as computed by <code>ltrec eval</code>. Δ: difference to the first run; p: two-sided paired
bootstrap over users (10,000 resamples), as <code>ltrec compare</code>.</p>
<h2>Training</h2>{"".join(run_html(r) for r in loaded)}
</body></html>
"""
    atomic_write(out, page, "--out")
    return out
