"""Time to quality against RecBole 1.2.1: training seconds until test NDCG@10 reaches what RecBole reaches.

    bash bench/recbole_env.sh && python bench/bench_ttq.py [--dataset music|ml1m] [--models sasrec gru4rec] \
        [--ltrec 'sasrec:lr 2e-3=train.lr=2e-3' ...] [--only ltrec|recbole] [--plot docs/ttq-music.png]

The target, per model: RecBole's converged test NDCG@10 at bench_recbole.py's settings (RecBole's default
Adam lr 1e-3; batch 256, d 64, dropout 0.2 and layer sizes set to ltrec's): trained to its own early stop
(--recbole-stop=10 epochs without a better validation score, RecBole's default, at most --recbole-epochs
300), its best-validation epoch tested. RecBole's time is the training seconds until its own test curve first
reached that score; `--recbole-stop=0 --recbole-epochs 3` gives the weaker target of RecBole after 3 epochs.
ltrec trains the shipped recipe (`recipes/<model>-<dataset>.yaml`) and every --ltrec setting, as a user would
(early stopping on validation); after each epoch the same weights are also scored on test, only to find when
the target was first reached (nothing is chosen on test). Time to quality = training seconds up to that epoch;
validation and the test passes are excluded on both sides. Same protocol on both: history not masked
(RecBole's), full ranking, the same test users and targets (see bench_recbole.py). Every run is a process of
its own with one thread; a finished run is kept in --work and reused (delete it to measure again). The plot shows test
NDCG@10 against training seconds for every run. `--only ltrec` / `--only recbole` run one side (two
invocations, one per core, put the frameworks side by side under the same load); a last invocation without
it reuses both and prints the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from itertools import accumulate
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_ingest import machine  # noqa: E402
from bench.bench_recbole import DATASETS, RECBOLE_CHILD, RECBOLE_NAMES, run, to_atomic  # noqa: E402

# ltrec's own `train`, with one addition: after each epoch's validation, the same weights' test score is
# appended to a curve file. The extra pass runs after the epoch's timer stopped, so the training seconds in
# metrics.jsonl do not include it.
LTREC_CHILD = r"""
import json, sys
from pathlib import Path
from ltrec.evaluation.engine import Evaluator
from ltrec.recipe import load_recipe
from ltrec.training.loop import train

recipe, out, curve, sets = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
inner = Evaluator.run
def run(self, split, ks=None, blend=None):
    result = inner(self, split, ks, blend)
    if split == "valid":
        test = inner(self, "test", [10]).table(("all",))["all"]
        with open(curve, "a") as f:
            f.write(json.dumps({"ndcg@10": test["ndcg@10"], "hr@10": test["hr@10"]}) + "\n")
    return result
Evaluator.run = run
curve.unlink(missing_ok=True)
train(load_recipe(recipe, sets), out=out, overwrite=True)
"""


def ltrec_curve(model: str, label: str, sets: list[str], args, env: dict) -> dict:
    run_dir = args.work / f"ltrec-{model}-{label}-s{args.seed}"
    done = run_dir / "ttq.json"
    sets = [
        f"data.source={args.data}",
        "eval.mask_seen=false",
        "train.threads=1",
        f"seed={args.seed}",
        *([f"train.epochs={args.ltrec_epochs}"] if args.ltrec_epochs else []),
        *sets,
    ]
    recipe = ROOT / f"recipes/{model}-{args.dataset}.yaml"
    from ltrec.recipe import load_recipe  # the validated recipe, so an edited comment does not rerun

    resolved = load_recipe(recipe, sets).model_dump_json()
    key = {"sets": sets, "recipe": hashlib.sha256(resolved.encode()).hexdigest()}
    if not (done.exists() and all(json.loads(done.read_text()).get(k) == v for k, v in key.items())):
        curve = args.work / f"ltrec-{model}-{label}-s{args.seed}.curve.jsonl"
        cmd = [sys.executable, "-c", LTREC_CHILD, str(recipe), str(run_dir), str(curve), *sets]
        _, wall, rss, rc = run(cmd, env, ROOT, args.work / f"ltrec-{model}-{label}.log")
        if rc:
            sys.exit(f"ltrec {model} {label} failed, see {args.work}/ltrec-{model}-{label}.log")
        epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        tests = [json.loads(line) for line in curve.read_text().splitlines()][: len(epochs)]
        final = json.loads((run_dir / "metrics.json").read_text())["test"]["all"]
        done.write_text(
            json.dumps(
                {
                    **key,
                    "wall": wall,
                    "rss": rss,
                    "seconds": [e["seconds"] for e in epochs],
                    "ndcg@10": [t["ndcg@10"] for t in tests],
                    "final": final["ndcg@10"],
                }
            )
        )
    return {"name": f"ltrec, {label}", **json.loads(done.read_text())}


def recbole_curve(model: str, args, env: dict, data_path: Path) -> dict:
    stop = f"-stop{args.recbole_stop}" if args.recbole_stop else ""
    result = args.work / f"recbole-{model}-e{args.recbole_epochs}{stop}-s{args.seed}.curve.json"
    if not result.exists():
        name = RECBOLE_NAMES[model]
        cmd = [
            str(args.venv / "bin/python"),
            "-c",
            RECBOLE_CHILD,
            name,
            str(data_path),
            str(args.recbole_epochs),
            str(args.work),
            str(args.seed),
            args.dataset,
            "curve",
            *([f"stop={args.recbole_stop}"] if args.recbole_stop else []),
        ]
        out, wall, rss, rc = run(cmd, env, args.work, args.work / f"recbole-{model}.log")
        if rc:
            sys.exit(f"RecBole {model} failed, see {args.work}/recbole-{model}.log")
        r = json.loads(out.strip().splitlines()[-1])
        result.write_text(
            json.dumps(
                {
                    "wall": wall,
                    "rss": rss,
                    "seconds": r["seconds"],
                    "ndcg@10": [t[0] for t in r["test_curve"]],
                    "valid": r["valid_curve"],
                    "final": r["ndcg@10"],
                }
            )
        )
    return {"name": "RecBole 1.2.1", **json.loads(result.read_text())}


def reached(c: dict, target: float) -> tuple[int, float] | None:
    """(epochs, training seconds) when the test curve first reaches `target`, or None."""
    totals = accumulate(c["seconds"])
    return next(
        ((epoch, total) for epoch, (total, ndcg) in enumerate(zip(totals, c["ndcg@10"]), 1) if ndcg >= target), None
    )


def recbole_time(c: dict) -> tuple[int, float]:
    """When RecBole's own test curve first reached the score of the epoch it kept (its best validation)."""
    best = max(range(len(c["valid"])), key=c["valid"].__getitem__) if c.get("valid") else len(c["seconds"]) - 1
    # the kept epoch is reloaded before its final test, so allow for float noise between the two passes
    return reached(c, c["final"] - 1e-6) or (best + 1, sum(c["seconds"][: best + 1]))


def target_name(args) -> str:
    return "to its early stop" if args.recbole_stop else f"{args.recbole_epochs} epochs"


def plot(curves: dict[str, list[dict]], targets: dict[str, float], path: Path, title: str, target: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (model, cs) in zip(axes[0], curves.items()):
        for c in cs:
            ax.plot(list(accumulate(c["seconds"])), c["ndcg@10"], marker="o", markersize=3, label=c["name"])
        ax.axhline(targets[model], color="grey", linestyle="--", linewidth=1, label=f"RecBole's score, {target}")
        ax.set(title=f"{model}, {title}", xlabel="training seconds (one thread)", ylabel="test NDCG@10", xscale="log")
        longest = max(sum(c["seconds"]) for c in cs)
        ticks = [t for t in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if t <= 2 * longest]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="music")
    ap.add_argument("--models", nargs="+", default=["sasrec", "gru4rec"], choices=sorted(RECBOLE_NAMES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recbole-epochs", type=int, default=300, help="RecBole's epochs at most (its default 300)")
    ap.add_argument(
        "--recbole-stop",
        type=int,
        default=10,
        help="RecBole's early stopping: epochs without a better validation score (its default 10; 0: none)",
    )
    ap.add_argument("--ltrec-epochs", type=int, help="ltrec's epochs (default: the recipe's; early stopping applies)")
    ap.add_argument(
        "--ltrec",
        action="append",
        default=[],
        metavar="[MODEL:]LABEL=K=V,K=V",
        help="an ltrec setting besides the recipe, e.g. 'sasrec:lr 2e-3=train.lr=2e-3' "
        "(without MODEL: for every model)",
    )
    ap.add_argument("--data", help="the events CSV (default: the dataset's file under ../shared/data)")
    ap.add_argument("--venv", type=Path, default=Path("/tmp/ltrec-bench/recbole-venv"))
    ap.add_argument("--work", type=Path, help="results (default: /tmp/ltrec-bench/ttq-<dataset>)")
    ap.add_argument("--plot", type=Path, help="write the NDCG@10-against-seconds plot here (PNG)")
    ap.add_argument(
        "--only",
        choices=["ltrec", "recbole"],
        help="run one framework's side only (e.g. both at once, one per core); a run without it reuses both",
    )
    args = ap.parse_args()
    args.data = os.path.abspath(args.data or ROOT / DATASETS[args.dataset])
    args.work = (args.work or Path(f"/tmp/ltrec-bench/ttq-{args.dataset}")).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    settings = [(None, "recipe", [])]
    for spec in args.ltrec:
        label, _, sets = spec.partition("=")
        model, _, name = label.rpartition(":")
        settings.append((model or None, name, sets.split(",") if sets else []))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    data_path = to_atomic(Path(args.data), args.work / "data", args.dataset) if args.only != "ltrec" else None
    curves, targets = {}, {}
    for model in args.models:
        if args.only != "ltrec":
            theirs = recbole_curve(model, args, env, data_path)
        ours = (
            []
            if args.only == "recbole"
            else [ltrec_curve(model, label, sets, args, env) for only, label, sets in settings if only in (None, model)]
        )
        if args.only:
            continue
        curves[model], targets[model] = [theirs, *ours], theirs["final"]
        print(f"<!-- {model} done -->", file=sys.stderr, flush=True)
    if args.only:
        return
    print(
        f"**Machine**: {machine()}\n\n**Command**: `python {' '.join(sys.argv)}` (one thread per framework, "
        f"seed {args.seed}; test NDCG@10, history not masked, full ranking)\n"
    )
    print(
        f"| model | run | target (RecBole, {target_name(args)}) | epochs to target | training s to target "
        "| RecBole's s ÷ ltrec's | s/epoch | peak RSS (MB) | test NDCG@10 at its own stop |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model, cs in curves.items():
        base = recbole_time(cs[0])
        for c in cs:
            hit = reached(c, targets[model]) if c is not cs[0] else base
            when = f"{hit[0]} | {hit[1]:,.0f} | {base[1] / hit[1]:.1f}×" if hit else "not reached | – | –"
            per_epoch = sum(c["seconds"]) / len(c["seconds"])
            print(
                f"| {model} | {c['name']} | {targets[model]:.4f} | {when} | {per_epoch:,.1f} | {c['rss']:,.0f} "
                f"| {c['final']:.4f} |"
            )
    if args.plot:
        plot(
            curves,
            targets,
            args.plot,
            {"music": "Amazon Music", "ml1m": "MovieLens-1M"}[args.dataset],
            target_name(args),
        )


if __name__ == "__main__":
    main()
