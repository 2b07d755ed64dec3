"""What the score blends cost: building the transition tables, a full-ranking evaluation pass, and the
exported graph (size, onnxruntime latency), each against the model alone; and the whole validation fit.

    python bench/bench_blend.py [--data ../shared/data/amazon-music/interactions.csv] [--threads 1] [--rounds 3]

An untrained SASRec (d 64, 2 layers, max_len 50; the cost does not depend on the weights or on the fitted
blend weights, which are fixed at 1 here) on the log's real histories. Evaluation ranks every evaluated user's
test target against all items, history masked, as `ltrec eval` does; the model alone scores block by block
against the item table, a transition blend needs the (batch × items) score matrix. The graph rows time
`onnxruntime` on real test histories, one call per batch, after a warm-up. Cases alternate within each round
and the fastest round counts (the machine is shared), so the ratios are side by side.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from machine import cpu_model  # bench/ is on sys.path when a script runs

from ltrec.blend.popularity import FittedPopBlend, prior  # noqa: E402
from ltrec.blend.transitions import FittedTransitionBlend, build, fit  # noqa: E402
from ltrec.data import load  # noqa: E402
from ltrec.deploy.export import TopKScorer, to_onnx  # noqa: E402
from ltrec.evaluation.engine import Evaluator  # noqa: E402
from ltrec.models import SASRec  # noqa: E402
from ltrec.recipe import (  # noqa: E402
    Data,
    Eval,
    Head,
    Split,
    TransitionBlend,  # noqa: E402
)

EDGES = torch.tensor([2, 3, 5, 8, 13, 21])


def fastest(fn, rounds: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-music" / "interactions.csv"
    p.add_argument("--data", default=str(default))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--neighbours", type=int, default=100)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seqs = load(Data(source=args.data), Split(), Head())
    n = seqs.n_items
    print(f"{args.data}: {seqs.describe()}", file=sys.stderr)

    rows = []
    tables = {}
    for direction in ("forward", "both"):
        seconds, table = fastest(
            lambda d=direction: build(seqs.items, seqs.offsets, seqs.train_lengths, n, 5, args.neighbours, d),
            args.rounds,
        )
        tables[direction] = table
        mb = sum(t.numel() * t.element_size() for t in (table.ids, table.strength)) / 2**20
        rows.append(
            f"| build the transition tables ({direction}, window 5, {args.neighbours} neighbours) | "
            f"{seconds:.2f} s | {mb:.1f} MB |"
        )

    torch.manual_seed(0)
    model = SASRec(n, 50, dim=64).eval()
    ones = torch.ones(len(EDGES) + 1)
    blends = {
        "model alone": {},
        "+ popularity blend": {"blend": FittedPopBlend(EDGES, ones, prior(seqs.item_counts()))},
        "+ transition blend": {"transitions": FittedTransitionBlend(EDGES, ones, tables["both"], 5, "both")},
    }
    evaluator = Evaluator(model, seqs, Eval(), 50)
    times = {name: float("inf") for name in blends}
    for _ in range(args.rounds):  # the cases alternate, so a busy spell hits all of them
        for name, kw in blends.items():
            start = time.perf_counter()
            evaluator.run("test", **kw)
            times[name] = min(times[name], time.perf_counter() - start)
    cfg = TransitionBlend()
    start = time.perf_counter()
    fit(evaluator, cfg, seqs, "ndcg@10")
    fitting = time.perf_counter() - start
    users = int((seqs.role == 0).sum())
    for name, t in times.items():
        rows.append(
            f"| evaluate the test split, {name} ({users:,} users) | {t:.2f} s ({t / times['model alone']:.2f}×) | |"
        )

    rows.append(
        f"| fit the transition blend on validation ({len(cfg.directions)} directions × {len(cfg.weights)} "
        f"weights, tables included) | {fitting:.1f} s | |"
    )

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    _, history, _ = seqs.eval_inputs("test", 50)
    rng = np.random.default_rng(0)
    graphs = {
        "model alone": TopKScorer(model, 10),
        "+ transition blend": TopKScorer(
            model, 10, transitions=FittedTransitionBlend(EDGES, ones, tables["both"], 5, "both")
        ),
    }
    sessions = {}
    for name, scorer in graphs.items():
        graph = to_onnx(scorer.eval(), 50, {})
        sessions[name] = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        rows.append(f"| exported graph, {name} | | {len(graph) / 2**20:.1f} MB |")
    for batch in (1, 256):
        lat = {name: [] for name in sessions}
        for _ in range(max(20, 200 // batch)):
            feed = {"history": history[rng.integers(0, len(history), batch)], "exclude": np.zeros((batch, 0), np.int64)}
            for name, sess in sessions.items():
                sess.run(None, feed)  # warm for this shape
                start = time.perf_counter()
                sess.run(None, feed)
                lat[name].append(time.perf_counter() - start)
        base = np.percentile(lat["model alone"], 50)
        for name, t in lat.items():
            p50 = np.percentile(t, 50)
            rows.append(f"| onnxruntime top-10, batch {batch}, {name} | {p50 * 1e3:.2f} ms p50 ({p50 / base:.2f}×) | |")

    print(
        f"\nMachine: {cpu_model()}, {os.cpu_count()} logical CPUs, {args.threads} thread(s); Python "
        f"{platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__}"
    )
    print(f"Data: {args.data} ({n:,} items); untrained SASRec d 64, max_len 50; fastest of {args.rounds} rounds\n")
    print("| what | time | size |\n|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
