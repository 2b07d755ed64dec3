"""Peak memory of evaluation with and without one very long history.

    python bench/bench_eval_memory.py [--users 20000] [--long 200000]

A synthetic long-tailed log (`--users` users, 3–40 events each, 5,000 items) is evaluated by a fresh process
(an untrained SASRec, d=64, the test split, history masked), once as is and once with one extra user holding
`--long` events. Seen items are held as (user, item) pairs, so the long user should cost memory for its own
events only, not for every user of its evaluation batch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_ingest import machine  # noqa: E402

CHILD = """
import json, resource, sys, time
import torch
from ltrec.data import load
from ltrec.evaluation.engine import Evaluator
from ltrec.models import BACKBONES
from ltrec.recipe import Data, Eval, Head, Split
torch.set_num_threads(1)
seqs = load(Data(source=sys.argv[1]), Split(), Head())
torch.manual_seed(0)
model = BACKBONES["sasrec"](seqs.n_items, 50)
t0 = time.perf_counter()
Evaluator(model, seqs, Eval(), 50).run("test")
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "longest": int(seqs.lengths.max()), "users": len(seqs.users)}))
"""


def write(path: Path, users: int, long: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lengths = np.minimum(3 + rng.zipf(1.7, users), 40)
    rows = [f"u{u},{i},{t}" for u, n in enumerate(lengths) for t, i in enumerate(rng.integers(1, 5001, n))]
    if long:
        rows += [f"long,{i},{t}" for t, i in enumerate(rng.integers(1, 5001, long))]
    path.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--long", type=int, default=200000)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for long in (0, args.long):
            path = Path(tmp) / f"events-{long}.csv"
            write(path, args.users, long)
            out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{machine()}\n\n**Command**: `python {' '.join(sys.argv)}`\n")
    print("| log | users | longest history | evaluate (s) | peak RSS (MB) |\n|---|---|---|---|---|")
    for label, r in zip(("long-tailed", f"+ one user with {args.long:,} events"), rows):
        print(f"| {label} | {r['users']:,} | {r['longest']:,} | {r['seconds']:.1f} | {r['peak_mb']:,.0f} |")


if __name__ == "__main__":
    main()
