"""What `ltrec export --int8` costs in ranking and gains in speed, for one trained run.

    python bench/bench_int8.py RUN [--input EVENTS] [--rounds 3] [--batch-size 256] [--profile]

Exports RUN twice (float32, then --int8) into a temporary folder, then:
- quality: both graphs rank every test user of the run's split against all items with the user's whole history
  excluded (`ltrec eval`'s protocol, through onnxruntime as predict runs it: batches trimmed to their longest
  history); test NDCG@10 and HR@10 of each, and the paired bootstrap of the per-user NDCG@10 (`ltrec compare`'s);
- speed: `ltrec predict BUNDLE --input EVENTS` (default: the run's own data source) timed by the wall clock
  as a user times it, interpreter start-up included, the two bundles alternating for --rounds rounds; users/s
  and each process's peak RSS (by /usr/bin/time, which the machine needs: `apt-get install time`);
- with --profile: each graph on one thread under onnxruntime's profiler, fed the test histories as predict
  feeds them; kernel milliseconds in all and the share of the largest operators.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import cpu_model  # bench/ is on sys.path when a script runs

from ltrec.deploy.bundle import length_batches, ort_session  # noqa: E402
from ltrec.evaluation.metrics import paired_test  # noqa: E402
from ltrec.runtime.build import load_run  # noqa: E402

LTREC = [sys.executable, "-m", "ltrec"]


def per_user_ndcg(model: Path, history: np.ndarray, target: np.ndarray, rows: np.ndarray, seen: np.ndarray):
    """(NDCG@10, hit@10) per user: top-10 of the graph with each user's `seen` (row, item) pairs excluded."""
    sess = ort_session(str(model))
    width = np.bincount(rows, minlength=len(history)).max(initial=1)
    exclude = np.zeros((len(history), width), np.int64)
    col = np.arange(len(rows)) - np.searchsorted(rows, rows)  # rows come sorted: position within the row
    exclude[rows, col] = seen
    lengths = (history > 0).sum(axis=1)
    items = np.zeros((len(history), 10), np.int64)
    for batch in length_batches(lengths, 256):
        w = max(int(lengths[batch].max()), 1)
        items[batch] = sess.run(["items"], {"history": history[batch, -w:], "exclude": exclude[batch]})[0][:, :10]
    match = items == target[:, None]
    hit = match.any(axis=1)
    return np.where(hit, 1.0 / np.log2(np.argmax(match, axis=1) + 2.0), 0.0), hit.astype(float)


def profile(model: Path, history: np.ndarray, exclude: np.ndarray) -> tuple[float, list[tuple[str, float]]]:
    """(kernel ms, [(operator, share)] largest first) of one pass over `history` on one thread."""
    import json
    from collections import Counter

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.enable_profiling = 1, True
    opts.profile_file_prefix = str(model.parent / "profile")
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    lengths = (history > 0).sum(axis=1)
    for batch in length_batches(lengths, 256):
        w = max(int(lengths[batch].max()), 1)
        sess.run(None, {"history": history[batch, -w:], "exclude": exclude[batch]})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return total / 1000, [(op, us / total) for op, us in per_op.most_common(5)]


def time_predict(bundle: Path, events: str, batch: int, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one `ltrec predict` process. The peak comes from /usr/bin/time: a forked
    child's own rusage starts from this process's high-water mark, which holds the data and torch."""
    cmd = [*LTREC, "predict", str(bundle), "--input", events, "--output", str(out), "--batch-size", str(batch)]
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"ltrec predict {bundle} failed: {proc.stderr.decode()}")
    return wall, int(proc.stderr.decode().split()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--input", help="events file for predict (default: the run's data source)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--profile", action="store_true", help="also profile each graph's operators on one thread")
    args = ap.parse_args()

    recipe, seqs = load_run(args.run)
    events = args.input or recipe.data.source
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {"float32": Path(tmp) / "f32", "int8": Path(tmp) / "int8"}
        for name, path in bundles.items():
            flags = ["--int8"] if name == "int8" else []
            subprocess.run([*LTREC, "export", str(args.run), "--out", str(path), *flags], check=True)
        users, history, target = seqs.eval_inputs("test", recipe.data.max_len)
        rows, seen = seqs.seen(users, "test")
        quality = {n: per_user_ndcg(p / "model.onnx", history, target, rows, seen) for n, p in bundles.items()}
        t = paired_test(quality["float32"][0], quality["int8"][0])
        print(f"\n{cpu_model()}, {os.cpu_count()} cores; {args.run}, {len(users):,} test users")
        print("\n| graph | test NDCG@10 | test HR@10 |\n|---|---:|---:|")
        for name, (ndcg, hit) in quality.items():
            print(f"| {name} | {ndcg.mean():.4f} | {hit.mean():.4f} |")
        print(
            f"\nint8 vs float32, NDCG@10: {100 * t['rel_diff']:+.2f}% (p = {t['p_value']:.3g}, paired bootstrap over users)"
        )
        if args.profile:
            print("\nonnxruntime's profiler, one thread, the test histories with the history excluded:\n")
            for name, path in bundles.items():
                ms, ops = profile(path / "model.onnx", history, history)
                print(f"- {name}: {ms:,.0f} ms of kernels; " + ", ".join(f"{op} {share:.0%}" for op, share in ops))

        print(f"\n`ltrec predict --input {events} --batch-size {args.batch_size}`, wall clock, bundles alternating:")
        print("\n| round | graph | wall s | users/s | peak RSS MB |\n|---|---|---:|---:|---:|")
        for r in range(args.rounds):
            for name, path in bundles.items():
                out = Path(tmp) / f"{name}.csv"
                wall, rss = time_predict(path, events, args.batch_size, out)
                with out.open() as f:  # predict answers every user of the events file, one row per item
                    n_users = len({line.split(",", 1)[0] for line in f}) - 1
                print(f"| {r + 1} | {name} | {wall:.2f} | {n_users / wall:,.0f} | {rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
