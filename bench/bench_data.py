"""Seconds and peak RSS from an events file to training tensors, for each shared dataset.

    python bench/bench_data.py [../shared/data]

Each dataset is loaded in a fresh subprocess so peak RSS is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from ltrec.data import load
from ltrec.recipe import Data, Head, Split
t1 = time.perf_counter()
s = load(Data(source=sys.argv[1]), Split(), Head())
t2 = time.perf_counter()
w = s.train_windows(50); e = s.eval_inputs("test", 50)
t3 = time.perf_counter()
print(json.dumps({"events": len(s.items), "users": len(s.users), "items": s.n_items, "load_s": t2 - t1,
                  "tensors_s": t3 - t2, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    print("| dataset | events | users | items | DuckDB → Sequences (s) | windows + eval tensors (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(root.glob("*/interactions.csv")):
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout)
        print(
            f"| {path.parent.name} | {r['events']:,} | {r['users']:,} | {r['items']:,} | {r['load_s']:.2f} | "
            f"{r['tensors_s']:.2f} | {r['rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
