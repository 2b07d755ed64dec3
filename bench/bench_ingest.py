"""Data ingest at scale: seconds and peak RSS from a synthetic long-tailed events file to training tensors.

    python bench/bench_ingest.py [--sizes 1M 10M 30M] [--formats csv parquet] [--baseline DIR]

For each size, one synthetic log (user_id, item_id, timestamp; Zipf-like users and items; rows in time
order, so each user's events are chronological) is written as CSV and as Parquet under --dir (deleted at the
end unless --keep). Each size × format is then loaded in a fresh subprocess — `ltrec.data.load(...)` then
`train_windows(max_len=50)` — which reports its own time and peak RSS. `--baseline DIR` also runs every
measurement with the `ltrec` package found in DIR (e.g. a checkout of the previous commit), alternating
with the current one, so before/after are measured side by side under the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
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
t0 = time.perf_counter()
from ltrec.data import load
from ltrec.recipe import Data, Head, Split
t1, c1 = time.perf_counter(), time.process_time()
s = load(Data(source=sys.argv[1]), Split(), Head())
t2 = time.perf_counter()
inputs, targets, owner = s.train_windows(50)
t3 = time.perf_counter()
print(json.dumps({"events": len(s.items), "users": len(s.users), "items": s.n_items, "windows": len(inputs),
                  "max_user": int(s.lengths.max()), "load_s": t2 - t1, "windows_s": t3 - t2,
                  "cpu_s": time.process_time() - c1,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
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
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # cwd = the tree: `python -c` puts the cwd first on sys.path, ahead of PYTHONPATH
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env, cwd=tree)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout[out.stdout.rindex('{"') :])  # an older ltrec's DuckDB may draw a progress bar first


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
    ap.add_argument("--dir", type=Path, default=Path("/tmp/ltrec-bench/ingest"))
    ap.add_argument("--baseline", type=Path, help="a directory holding another `ltrec` package to compare with")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    trees = [("current", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    print(f"**Machine**: {machine()}\n\n**Command**: `python {' '.join(sys.argv)}`\n")
    print(
        "| events | format | file (MB) | ltrec | users | items | windows | load → Sequences (s) | "
        "train_windows (s) | total (s) | CPU (s, all threads) | peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        n = int(float(size[:-1]) * {"K": 1e3, "M": 1e6}[size[-1].upper()]) if size[-1].isalpha() else int(size)
        t0 = time.perf_counter()
        paths = generate(n, args.dir)
        gen_s = time.perf_counter() - t0
        for fmt in args.formats:
            for name, tree in trees:
                r = measure(paths[fmt], tree)
                mb = paths[fmt].stat().st_size / 2**20
                if "error" in r:
                    print(f"| {n:,} | {fmt} | {mb:.0f} | {name} | failed: {r['error'][:120]} |||||||")
                else:
                    print(
                        f"| {n:,} | {fmt} | {mb:.0f} | {name} | {r['users']:,} | {r['items']:,} | {r['windows']:,} "
                        f"| {r['load_s']:.1f} | {r['windows_s']:.1f} | {r['load_s'] + r['windows_s']:.1f} "
                        f"| {r['cpu_s']:.1f} | {r['rss_mb']:,.0f} |",
                        flush=True,
                    )
        print(
            f"<!-- {n:,} events generated in {gen_s:.0f} s; longest user {r.get('max_user', 0):,} events -->",
            flush=True,
        )
        if not args.keep:
            for p in paths.values():
                p.unlink(missing_ok=True)
    if not args.keep and not any(args.dir.iterdir()):
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
