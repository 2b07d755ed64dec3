"""Train recipes × seeds through the real CLI and print a mean ± std table by slice.

    python bench/run_recipes.py recipes/sasrec-music.yaml recipes/pop-music.yaml --seeds 0 1 2 --jobs 2 \
        --set train.epochs=20 --out runs/bench --table bench/results/music.md

Each run goes to <out>/<recipe name>-s<seed>; runs that already finished (metrics.json present) are reused,
so an interrupted benchmark continues where it stopped. With --jobs N, N runs go side by side with
train.threads=1 each (on 2 cores this beats one run with 2 threads).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml


def run_one(recipe: str, seed: int, out: Path, sets: list[str], threads: int) -> Path:
    name = yaml.safe_load(Path(recipe).read_text())["name"]
    run_dir = out / f"{name}-s{seed}"
    if (run_dir / "metrics.json").exists():
        return run_dir
    cmd = [sys.executable, "-m", "ltrec", "train", recipe, "--out", str(run_dir), "--set", f"seed={seed}",
           "--set", f"train.threads={threads}", *[a for s in sets for a in ("--set", s)]]
    cmd += ["--resume"] if (run_dir / "last.pt").exists() else ["--overwrite"]
    t0 = time.time()
    log = run_dir.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    print(f"{run_dir}: exit {rc} after {time.time() - t0:.0f}s (log {log})", flush=True)
    return run_dir


def evaluated(run_dir: Path) -> dict:
    """metrics.json (epochs, timing) with the test table as `ltrec eval` computes it today."""
    summary = json.loads((run_dir / "metrics.json").read_text())
    out = subprocess.run([sys.executable, "-m", "ltrec", "eval", str(run_dir), "--json"], capture_output=True,
                         text=True, check=True).stdout
    summary["test"] = json.loads(out)["slices"]
    return summary


def table(run_dirs: list[Path], metrics=("ndcg@10", "hr@10"), slices=("all", "head", "tail")) -> str:
    groups: dict[str, list[dict]] = {}
    for d in run_dirs:
        if (d / "metrics.json").exists():
            groups.setdefault(d.name.rsplit("-s", 1)[0], []).append(evaluated(d))
    cols = [f"{m} {s}" for s in slices for m in metrics]
    lines = ["| run | seeds | " + " | ".join(cols) + " | epochs | s/epoch |", "|---" * (len(cols) + 4) + "|"]
    for name, runs in groups.items():
        cells = []
        for s in slices:
            for m in metrics:
                vals = [r["test"][s][m] for r in runs]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.mean(vals):.4f} ± {sd:.4f}")
        epochs = statistics.mean(r["epochs"] for r in runs)
        spe = statistics.mean(r["seconds_per_epoch"] for r in runs)
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {epochs:.1f} | {spe:.1f} |")
    proto = next((json.loads((d / "metrics.json").read_text())["protocol"] for d in run_dirs
                  if (d / "metrics.json").exists()), "")
    return "\n".join(lines) + f"\n\nTest split; {proto}; mean ± std over seeds.\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--table", type=Path, help="also write the table to this file")
    ap.add_argument("--table-only", action="store_true", help="train nothing; tabulate the finished runs")
    args = ap.parse_args()
    threads = 1 if args.jobs > 1 else 0
    jobs = [(r, s) for s in args.seeds for r in args.recipes]
    if args.table_only:
        dirs = [args.out / f"{yaml.safe_load(Path(r).read_text())['name']}-s{s}" for r, s in jobs]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            dirs = list(pool.map(lambda job: run_one(job[0], job[1], args.out, args.sets, threads), jobs))
    text = table(dirs)
    print(text)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(f"Command: `python {' '.join(sys.argv)}`\n\n{text}")


if __name__ == "__main__":
    main()
