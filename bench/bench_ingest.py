"""Data ingest at scale: seconds and peak RSS from a synthetic long-tailed events file to `Sequences`, then to
training tensors.

    python bench/bench_ingest.py [--sizes 1M 10M 30M] [--formats csv parquet] [--baseline DIR] [--dir DIR --keep]

For each size, one synthetic log (user_id, item_id, timestamp; power-law users and items, so user lengths are
long-tailed; rows in time order, so each user's events are chronological) is written as CSV and as Parquet into
a temp folder (deleted at the end unless --keep). Each size × format is then loaded in a fresh subprocess:
`ltrec.data.load(...)` (file → Sequences, the path `ltrec train` takes), then `train_windows(max_len=50)`.
The child reports its seconds and its peak RSS right after loading; the parent reads the child's overall peak
RSS from os.wait4. `--baseline DIR` also runs every measurement with the `ltrec` package found in DIR (e.g. a
copy of the previous version), alternating with the current one, so before and after share the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent

# Zipf-like ranks by inverse transform of a continuous power law p(r) ∝ r^-a on [1, K + 1): uniform u → rank.
# Pseudo-random numbers come from hash(row, stream), so the data are the same for any DuckDB thread count.
GENERATE = """
COPY (
  WITH u AS (
    SELECT i,
           (hash(i, 1) % 1000000007) / 1000000007.0 AS uu,
           (hash(i, 2) % 1000000007) / 1000000007.0 AS ui,
           hash(i, 3) % 100000000 AS dt
    FROM range($n) r(i))
  SELECT floor(power(uu * (power($users + 1, 1 - $au) - 1) + 1, 1 / (1 - $au)))::BIGINT AS user_id,
         floor(power(ui * (power($items + 1, 1 - $ai) - 1) + 1, 1 / (1 - $ai)))::BIGINT AS item_id,
         1300000000 + dt AS timestamp
  FROM u ORDER BY timestamp, i
) TO '{path}' ({fmt})
"""

CHILD = """
import json, resource, sys, time
from ltrec.data import load
from ltrec.recipe import Data, Head, Split
t1, c1 = time.perf_counter(), time.process_time()
s = load(Data(source=sys.argv[1]), Split(), Head())
t2 = time.perf_counter()
load_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
inputs, targets, owner = s.train_windows(50)
t3 = time.perf_counter()
print(json.dumps({"events": len(s.items), "users": len(s.users), "items": s.n_items, "windows": len(inputs),
                  "max_user": int(s.lengths.max()), "load_s": t2 - t1, "windows_s": t3 - t2,
                  "cpu_s": time.process_time() - c1, "load_mb": load_mb}))
"""


def generate(n: int, out: Path) -> dict[str, Path]:
    """CSV and Parquet copies of one synthetic log of n events (users ≈ n/5 and items ≈ n/20 to draw from)."""
    paths = {"csv": out / f"events-{n}.csv", "parquet": out / f"events-{n}.parquet"}
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")  # the rows are ORDER BY time anyway
    con.execute("SET enable_progress_bar = false")
    params = {"n": n, "users": n // 5, "items": n // 20, "au": 0.8, "ai": 0.9}
    for fmt, path in paths.items():
        if not path.exists():
            opts = "HEADER" if fmt == "csv" else "FORMAT parquet"
            part = path.with_name(path.name + ".part")  # renamed when complete: a killed run leaves no half file
            con.execute(GENERATE.format(path=part, fmt=opts), params)
            part.rename(path)
    con.close()
    return paths


def measure(path: Path, tree: Path) -> dict:
    """One load in a fresh process; its own figures plus its whole-life peak RSS (MB) as the kernel counted it."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # cwd = the tree: `python -c` puts the cwd first on sys.path, ahead of PYTHONPATH
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tree
    )
    out, err = child.stdout.read().decode(), child.stderr.read().decode()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {child.returncode}"}
    r = json.loads(out[out.rindex('{"') :])  # an older ltrec's DuckDB may draw a progress bar first
    return {**r, "peak_mb": usage.ru_maxrss / 1024}


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    mem = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))) / 2**20
    import numpy

    versions = f"python {platform.python_version()}, duckdb {duckdb.__version__}, numpy {numpy.__version__}"
    try:
        import onnxruntime
        import torch

        versions += f", torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    except ImportError:
        pass
    load = os.getloadavg()[0]
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; {versions}; load average at start {load:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["1M", "10M", "30M"])
    ap.add_argument("--formats", nargs="+", default=["csv", "parquet"])
    ap.add_argument("--dir", type=Path, help="where the logs are written (default: a temp folder)")
    ap.add_argument("--baseline", type=Path, help="a directory holding another `ltrec` package to compare with")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="ltrec-bench-ingest-"))
    folder.mkdir(parents=True, exist_ok=True)
    trees = [("current", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    threads = duckdb.connect().execute("SELECT current_setting('threads')").fetchone()[0]
    print(
        f"**Machine**: {machine()}; {len(os.sched_getaffinity(0))} CPUs usable (nproc), DuckDB threads {threads}"
        f"\n\n**Command**: `python {' '.join(sys.argv)}`\n"
    )
    print(
        "| events | format | file (MB) | ltrec | users | items | load → Sequences (s) | peak RSS, load (MB) | "
        "train_windows (s) | peak RSS, load + windows (MB) | CPU (s, all threads) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for size in args.sizes:
            n = int(float(size[:-1]) * {"K": 1e3, "M": 1e6}[size[-1].upper()]) if size[-1].isalpha() else int(size)
            t0 = time.perf_counter()
            paths = generate(n, folder)
            gen_s = time.perf_counter() - t0
            r = {}
            for fmt in args.formats:
                for name, tree in trees:
                    r = measure(paths[fmt], tree)
                    mb = paths[fmt].stat().st_size / 2**20
                    if "error" in r:
                        print(f"| {n:,} | {fmt} | {mb:.0f} | {name} | failed: {r['error'][:120]} ||||||", flush=True)
                    else:
                        print(
                            f"| {n:,} | {fmt} | {mb:.0f} | {name} | {r['users']:,} | {r['items']:,} "
                            f"| {r['load_s']:.1f} | {r['load_mb']:,.0f} | {r['windows_s']:.1f} | {r['peak_mb']:,.0f} "
                            f"| {r['cpu_s']:.1f} |",
                            flush=True,
                        )
            print(
                f"<!-- {n:,} events generated in {gen_s:.0f} s; longest user {r.get('max_user', 0):,} events; "
                f"{r.get('windows', 0):,} windows -->",
                flush=True,
            )
            if not args.keep:
                for p in paths.values():
                    p.unlink(missing_ok=True)
    finally:
        if not args.keep:
            for p in folder.glob("events-*"):
                p.unlink(missing_ok=True)
            if not any(folder.iterdir()):
                shutil.rmtree(folder)


if __name__ == "__main__":
    main()
