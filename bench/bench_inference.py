"""Inference latency: the exported ONNX bundle graph under onnxruntime vs the same module in torch eager.

    .venv/bin/python bench/bench_inference.py [--items 20000] [--threads 2]

Untrained SASRec and GRU4Rec (weights do not change the cost), full-length random histories (the worst
case), top-10 inside the graph for both sides, so both return the same thing. Batches 1 / 32 / 256;
p50 / p95 over timed repetitions after a warm-up. Both runtimes get the same number of intra-op threads,
and run one after the other, never at the same time. Prints a markdown table and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import cpu_model  # bench/ is on sys.path when a script runs

from ltrec.deploy.export import TopKScorer, to_onnx  # noqa: E402
from ltrec.models import GRU4Rec, SASRec  # noqa: E402


def timings(fn, min_seconds: float, min_reps: int = 20, warmup: int = 5) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out, start = [], time.perf_counter()
    while len(out) < min_reps or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.asarray(out) * 1e3  # ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=20000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum timed seconds per cell")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as `ltrec predict` runs it
    rng = np.random.default_rng(0)
    rows = []
    for name, cls in (("SASRec", SASRec), ("GRU4Rec", GRU4Rec)):
        torch.manual_seed(0)
        backbone = cls(args.items, args.max_len, dim=args.dim).eval()
        scorer = TopKScorer(backbone, args.k).eval()
        model = to_onnx(scorer, args.max_len, {})
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        for batch in (int(b) for b in args.batches.split(",")):
            history = rng.integers(1, args.items + 1, (batch, args.max_len))  # (B, L), no padding
            exclude = np.zeros((batch, 0), np.int64)
            feed = {"history": history, "exclude": exclude}
            th, te = torch.from_numpy(history), torch.from_numpy(exclude)

            def eager():
                with torch.inference_mode():
                    scorer(th, te)

            o = timings(lambda: session.run(None, feed), args.seconds)
            t = timings(eager, args.seconds)
            rows.append(
                (name, batch, np.percentile(o, 50), np.percentile(o, 95), np.percentile(t, 50), np.percentile(t, 95))
            )
            print(
                f"{name} batch {batch}: onnxruntime p50 {rows[-1][2]:.3f} ms, torch p50 {rows[-1][4]:.3f} ms",
                file=sys.stderr,
            )

    print(
        f"\nMachine: {cpu_model()}, {os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable), "
        f"{args.threads} threads for both runtimes; Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}, numpy {np.__version__}"
    )
    print(
        f"Models: untrained, dim {args.dim}, max_len {args.max_len}, {args.items:,} items, top-{args.k} in the "
        "graph; full-length histories; latency per call in ms\n"
    )
    print(
        "| model | batch | onnxruntime p50 | onnxruntime p95 | torch eager p50 | torch eager p95 | speed-up (p50) "
        "| onnxruntime users/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, batch, o50, o95, t50, t95 in rows:
        print(
            f"| {name} | {batch} | {o50:.3f} | {o95:.3f} | {t50:.3f} | {t95:.3f} | {t50 / o50:.1f}× "
            f"| {batch / o50 * 1e3:,.0f} |"
        )


if __name__ == "__main__":
    main()
