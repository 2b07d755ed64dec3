"""A MovieLens-20M-sized log end to end on this machine: wall seconds and peak RSS of every step a user takes.

    python bench/bench_scale.py [--events 20M] [--users 138493] [--items 26744] [--dir DIR] [--keep]
                                [--reference ../shared/data/amazon-music/interactions.csv]

The log is synthetic, with MovieLens-20M's shape: 138,493 users of at least 20 events each with Pareto lengths
(mean ≈ 144, capped at 9,254 like ML-20M's longest user), 26,744 items drawn by a power law, 20M events, as
Parquet. Items are drawn independently of each other, so the model learns popularity only: this measures
cost, not quality. Steps, each the CLI in a fresh process (wall clock includes start-up), peak RSS as the
kernel counted it for that process:

1. ingest: `ltrec.data.load` (file → Sequences) and `train_windows`, the path `ltrec train` takes;
2. train: `ltrec train` for one epoch of SASRec (the shipped recipe's sizes, `train.loss: sampled` with 256
   negatives: a full softmax over 27k items per target is what a user would not pay for at this size), then
   validation and test of every user, full ranking, history masked;
3. eval: `ltrec eval --slice all --slice head --slice tail`, every user of the test split;
4. export: `ltrec export` (ONNX, parity check);
5. predict: `ltrec predict` for every user of the log, onnxruntime on CPU.

`--reference` runs the same steps on a small real log beside it, so the evaluation and predict rates per item
scored are compared on the same machine in the same run. Prints markdown tables and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import machine  # bench/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
CAP = 9254  # MovieLens-20M's longest user
LTREC = [sys.executable, "-m", "ltrec"]

RECIPE = """name: scale
seed: 0
data: {{source: {source}, columns: {{user: user_id, item: item_id, time: timestamp}}, max_len: 50}}
head: {{fraction: 0.2}}
backbone: {{kind: sasrec, dim: 64, layers: 2, heads: 2, dropout: 0.2}}
train: {{epochs: 1, batch_size: 256, lr: 1.0e-3, loss: sampled, negatives: 256}}
eval: {{ks: [10], mask_seen: true}}
"""

INGEST = """
import json, resource, sys, time
from ltrec.data import load
from ltrec.recipe import Data, Head, Split
t = time.perf_counter()
s = load(Data(source=sys.argv[1]), Split(), Head())
inputs, targets, owner = s.train_windows(50)
print(json.dumps({"events": len(s.items), "users": len(s.users), "items": s.n_items, "windows": len(inputs),
                  "targets": int((targets > 0).sum()), "positions": int((inputs > 0).sum()),
                  "seconds": time.perf_counter() - t}))
"""


def generate(path: Path, events: int, users: int, items: int) -> None:
    """ML-20M's shape: lengths 20 + Pareto(α 1.16) scaled to `events` in all; power-law item draws."""
    rng = np.random.default_rng(0)
    extra = 20 * rng.pareto(1.16, users)
    lo, hi = 0.0, 1e6  # the scale f with sum(min(20 + f·extra, cap)) = events, by bisection
    for _ in range(100):
        f = (lo + hi) / 2
        lo, hi = (f, hi) if np.minimum(20 + f * extra, CAP).astype(np.int64).sum() < events else (lo, f)
    lengths = np.minimum(20 + lo * extra, CAP).astype(np.int64)
    short = np.flatnonzero(lengths < CAP)
    lengths[short[np.argsort(-lengths[short])][: events - int(lengths.sum())]] += 1  # the rounding remainder
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    con.register("lengths", {"user_id": np.arange(1, users + 1), "n": lengths})
    part = path.with_name(path.name + ".part")  # renamed when complete: a killed run leaves no half file
    con.execute(
        f"""COPY (
          WITH ev AS (SELECT user_id, unnest(range(n)) AS j FROM lengths)
          SELECT user_id,
                 floor(power((hash(user_id, j, 1) % 1000000007) / 1000000007.0
                             * (power({items} + 1, 1 - 0.9) - 1) + 1, 1 / (1 - 0.9)))::BIGINT AS item_id,
                 1300000000 + hash(user_id, 2) % 100000000 + j * 60 AS timestamp
          FROM ev
        ) TO '{part}' (FORMAT parquet)"""
    )
    con.close()
    part.rename(path)


def run(args: list[str], cwd: Path, log: Path) -> dict:
    """One command in a fresh process: wall seconds, its peak RSS (MB) from os.wait4, its stdout. Output goes
    to files, not pipes, so a chatty child never blocks; a failure stops the benchmark with the child's error."""
    t = time.perf_counter()
    with open(log, "wb") as err, open(log.with_suffix(".out"), "wb") as out:
        child = subprocess.Popen(args, stdout=out, stderr=err, cwd=cwd)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(args[2:5])} failed:\n{log.read_text()[-2000:]}")
    return {"wall": wall, "peak_mb": usage.ru_maxrss / 1024, "out": log.with_suffix(".out").read_text()}


def pipeline(source: Path, work: Path) -> dict:
    """Every step on one log; the figures of each."""
    work.mkdir(parents=True, exist_ok=True)
    r: dict = {}
    r["ingest"] = run([sys.executable, "-c", INGEST, str(source)], ROOT, work / "ingest.log")
    r["shape"] = json.loads(r["ingest"]["out"].strip().splitlines()[-1])
    recipe = work / "recipe.yaml"
    recipe.write_text(RECIPE.format(source=source.resolve()))
    run_dir, bundle = work / "run", work / "bundle"
    r["train"] = run(LTREC + ["train", str(recipe), "--out", str(run_dir), "--overwrite"], ROOT, work / "train.log")
    epoch = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    r["epoch_s"] = epoch["seconds"]
    r["eval"] = run(
        LTREC + ["eval", str(run_dir), "--slice", "all", "--slice", "head", "--slice", "tail", "--json"],
        ROOT,
        work / "eval.log",
    )
    r["evaluated"] = json.loads(r["eval"]["out"])["slices"]["all"]["users"]
    r["export"] = run(LTREC + ["export", str(run_dir), "--out", str(bundle)], ROOT, work / "export.log")
    r["bundle_mb"] = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 2**20
    out = work / "predictions.csv"
    r["predict"] = run(
        LTREC + ["predict", str(bundle), "--input", str(source), "--output", str(out)], ROOT, work / "predict.log"
    )
    r["predicted_users"] = duckdb.sql(f"SELECT count(DISTINCT user_id) FROM read_csv('{out}')").fetchall()[0][0]
    r["test_ndcg10"] = json.loads((run_dir / "metrics.json").read_text())["test"]["all"]["ndcg@10"]
    return r


def flops(shape: dict, dim: int = 64, layers: int = 2, max_len: int = 50, negatives: int = 256) -> dict:
    """Training FLOPs of one SASRec epoch (forward × 3 for the backward), counted from the windows: per
    position and block 12·D² (QKV, projection, the D → D → D feed-forward) + 4·L·D (attention); per target
    2·D·(negatives + 1) for the sampled loss, 2·D·items for a full softmax. Positions are the real ones
    (padding is free on a GPU batch cut to its longest window only to first order)."""
    encoder = shape["positions"] * layers * (12 * dim**2 + 4 * max_len * dim)
    return {
        "sampled": 3 * (encoder + shape["targets"] * 2 * dim * (negatives + 1)),
        "full": 3 * (encoder + shape["targets"] * 2 * dim * shape["items"]),
    }


def report(name: str, r: dict) -> str:
    s = r["shape"]
    users, items = s["users"], s["items"]
    rows = [
        (
            "ingest: file → Sequences → training windows",
            r["ingest"],
            f"{s['events']:,} events, {s['windows']:,} windows",
        ),
        ("train: 1 epoch + validation + test (`ltrec train`)", r["train"], f"epoch {r['epoch_s']:.0f} s"),
        (
            "eval: test, all/head/tail (`ltrec eval`)",
            r["eval"],
            f"{r['evaluated']:,} users, {r['evaluated'] / r['eval']['wall']:,.0f} users/s, "
            f"{r['evaluated'] * items / r['eval']['wall'] / 1e6:,.1f}M items scored/s",
        ),
        ("export: ONNX + parity (`ltrec export`)", r["export"], f"bundle {r['bundle_mb']:.0f} MB"),
        (
            "predict: every user (`ltrec predict`)",
            r["predict"],
            f"{r['predicted_users']:,} users, {r['predicted_users'] / r['predict']['wall']:,.0f} users/s, "
            f"{r['predicted_users'] * items / r['predict']['wall'] / 1e6:,.1f}M items scored/s",
        ),
    ]
    lines = [f"**{name}** ({users:,} users, {items:,} items; test NDCG@10 {r['test_ndcg10']:.4f})", ""]
    lines += ["| step | wall s | peak RSS MB | rate |", "|---|---:|---:|---|"]
    lines += [f"| {a} | {b['wall']:,.1f} | {b['peak_mb']:,.0f} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", default="20M")
    ap.add_argument("--users", type=int, default=138_493)
    ap.add_argument("--items", type=int, default=26_744)
    ap.add_argument("--reference", type=Path, default=ROOT.parent / "shared/data/amazon-music/interactions.csv")
    ap.add_argument("--gpu-tflops", type=float, default=20.0, help="sustained TFLOP/s assumed for the GPU estimate")
    ap.add_argument("--dir", type=Path, help="where the log and runs are written (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the log and the runs")
    args = ap.parse_args()
    n = args.events
    events = int(float(n[:-1]) * {"K": 1e3, "M": 1e6}[n[-1].upper()]) if n[-1].isalpha() else int(n)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="ltrec-bench-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"**Machine**: {machine()}\n\n**Command**: `python {' '.join(sys.argv)}`\n", flush=True)
    try:
        log = folder / f"scale-{events}.parquet"
        t = time.perf_counter()
        if not log.exists():
            generate(log, events, args.users, args.items)
        print(f"<!-- log generated in {time.perf_counter() - t:.0f} s, {log.stat().st_size / 2**20:.0f} MB -->\n")
        results = {}
        if args.reference.exists():
            results["reference"] = pipeline(args.reference, folder / "reference")
            print(report(f"Reference: {args.reference.parent.name}", results["reference"]) + "\n", flush=True)
        results["scale"] = pipeline(log, folder / "scale")
        print(report(f"Synthetic, MovieLens-20M's shape ({events:,} events)", results["scale"]) + "\n", flush=True)
        big = results["scale"]
        if "reference" in results:
            ref = results["reference"]
            for what in ("eval", "predict"):
                who = "evaluated" if what == "eval" else "predicted_users"
                per = [x[who] * x["shape"]["items"] / x[what]["wall"] for x in (ref, big)]
                print(f"- {what}: items scored per second, reference ÷ this log = {per[0] / per[1]:.2f}")
        f = flops(big["shape"])
        cpu = f["sampled"] / big["epoch_s"]
        print(
            f"- one epoch: {f['sampled'] / 1e12:,.1f} TFLOP with the sampled loss ({cpu / 1e9:,.0f} GFLOP/s achieved "
            f"here), {f['full'] / 1e12:,.1f} TFLOP with a full softmax; at {args.gpu_tflops:g} TFLOP/s sustained "
            f"on a GPU: {f['sampled'] / args.gpu_tflops / 1e12:,.1f} s and {f['full'] / args.gpu_tflops / 1e12:,.1f} s"
        )
        w = big["shape"]["windows"]
        for ranks in (2, 4, 8):
            print(
                f"- torchrun, {ranks} ranks: {w // ranks:,} windows and {-(-w // 256):,} steps of "
                f"{-(-256 // ranks)} windows per rank; each rank holds the whole Sequences "
                f"(~{big['ingest']['peak_mb']:,.0f} MB peak to build)"
            )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
