"""Seconds per epoch with 1 process vs N data-parallel processes (torchrun, gloo), one thread each.

    python bench/bench_distributed.py [--recipe recipes/sasrec-ml1m.yaml] [--epochs 1] [--nproc 2]
        [--data ../shared/data/movielens-1m/interactions.csv]

Runs the real command lines one after the other, `python -m ltrec train` and
`python -m torch.distributed.run --nproc_per_node=N -m ltrec train`, each with OMP_NUM_THREADS=1 and
train.threads=1, and reads the per-epoch training seconds (rank 0's clock, validation excluded) from each
run's metrics.jsonl, plus the whole command's wall time (start-up, data, validation and test evaluation
included). Prints a Markdown block for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_model  # bench/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], out: Path) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "metrics.json").read_text())
    return {
        "seconds": [e["seconds"] for e in epochs],
        "loss": epochs[-1]["loss"],
        "wall": wall,
        "valid": epochs[-1]["valid"]["all"]["ndcg@10"],
        "test": summary["test"]["all"]["ndcg@10"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/sasrec-ml1m.yaml")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/movielens-1m/interactions.csv"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        sets = [
            "--set",
            f"data.source={Path(args.data).resolve()}",
            "--set",
            f"train.epochs={args.epochs}",
            "--set",
            "train.patience=100",
            "--set",
            "train.threads=1",
        ]
        one = run(
            [sys.executable, "-m", "ltrec", "train", args.recipe, *sets, "--out", f"{tmp}/one"], Path(tmp) / "one"
        )
        many = run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={args.nproc}",
                "-m",
                "ltrec",
                "train",
                args.recipe,
                *sets,
                "--out",
                f"{tmp}/many",
            ],
            Path(tmp) / "many",
        )
    load_after = os.getloadavg()[0]
    per = {k: sum(r["seconds"]) / len(r["seconds"]) for k, r in (("one", one), ("many", many))}
    n = args.nproc
    print(f"""## Distributed training: 1 vs {n} processes (CPU, gloo)

`python bench/bench_distributed.py --recipe {args.recipe} --epochs {args.epochs} --nproc {n}` —
`ltrec train` vs `torchrun --nproc_per_node={n} -m ltrec train`, OMP_NUM_THREADS=1 and `train.threads: 1` per
process, {args.epochs} epoch(s) of {Path(args.recipe).name} on {Path(args.data).parent.name}. Machine: {cpu_model()},
{os.cpu_count()} logical cores, torch {torch.__version__}, Python {platform.python_version()}. The cores are shared
with other jobs (1-minute load average {load_before:.1f} before, {load_after:.1f} after), so seconds are
pessimistic and the ratio is noisy.

| processes | train s/epoch | speed-up | wall s (start-up, data, validation, test included) | train loss | valid ndcg@10 | test ndcg@10 |
|---:|---:|---:|---:|---:|---:|---:|
| 1 | {per["one"]:.1f} | 1.00× | {one["wall"]:.1f} | {one["loss"]:.4f} | {one["valid"]:.4f} | {one["test"]:.4f} |
| {n} | {per["many"]:.1f} | {per["one"] / per["many"]:.2f}× | {many["wall"]:.1f} | {many["loss"]:.4f} | {many["valid"]:.4f} | {many["test"]:.4f} |

`train.batch_size` is the global batch ({n} ranks × batch_size/{n}), so both runs take the same number of
optimizer steps per epoch; each rank trains on its own users' windows.""")


if __name__ == "__main__":
    main()
