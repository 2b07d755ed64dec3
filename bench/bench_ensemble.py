"""What the ensemble costs: fitting each member, a full-ranking evaluation pass with each member and with all,
the exported graph (size, onnxruntime latency), each against the model alone; and the whole validation fit.
The run member is another run's network: an untrained GRU4Rec (d 64) stands for it.

    python bench/bench_ensemble.py [--data ../shared/data/amazon-beauty/interactions.csv] [--threads 1] [--rounds 2]

An untrained SASRec (d 64, 2 layers, max_len 50; the cost does not depend on the weights, so every member's
weight is fixed at 1 here) on the log's real histories. Evaluation ranks every evaluated user's test target
against all items, history masked, as `ltrec eval` does; the model alone scores block by block against the
item table, an ensemble standardises each user's scores over the catalogue and so needs the (batch × items)
score matrix. The graph rows time onnxruntime on real test histories, one call per batch, after a warm-up.
Cases alternate within each round and the fastest round counts (the machine is shared), so the ratios are
side by side. The fit row is the default coordinate ascent (`eval.ensemble` with every member).
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

from ltrec.data import load  # noqa: E402
from ltrec.deploy.export import TopKScorer, to_onnx  # noqa: E402
from ltrec.ensemble.fit import coordinate_ascent  # noqa: E402
from ltrec.ensemble.runs import RunMember  # noqa: E402
from ltrec.ensemble.scores import fit_members, start  # noqa: E402
from ltrec.evaluation.engine import Evaluator  # noqa: E402
from ltrec.models import GRU4Rec, SASRec  # noqa: E402
from ltrec.recipe import Data, Ensemble, Eval, Head, Split  # noqa: E402

MEMBERS = [{"kind": "pop"}, {"kind": "transitions"}, {"kind": "ease"}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-beauty" / "interactions.csv"
    p.add_argument("--data", default=str(default))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seqs = load(Data(source=args.data), Split(), Head())
    n = seqs.n_items
    print(f"{args.data}: {seqs.describe()}", file=sys.stderr)

    rows, members = [], {}
    for member in MEMBERS:
        cfg = Ensemble(members=[member])
        t0 = time.perf_counter()
        (members[member["kind"]],) = fit_members(cfg, seqs, 50)
        rows.append(f"| fit the {member['kind']} member | {time.perf_counter() - t0:.2f} s | |")

    torch.manual_seed(0)
    model = SASRec(n, 50, dim=64).eval()
    others = {**members, "run": RunMember(GRU4Rec(n, 50, dim=64), 50, "0" * 16)}
    cases = {"model alone": None}
    for kinds in (["pop"], ["transitions"], ["ease"], ["run"], ["pop", "transitions", "ease"]):
        cfg = Ensemble(members=[{"kind": k, "path": "-"} if k == "run" else {"kind": k} for k in kinds])
        ensemble = start(cfg, [others[k] for k in kinds])
        cases["+ " + ", ".join(kinds)] = ensemble.with_weights(torch.ones_like(ensemble.weights))
    evaluator = Evaluator(model, seqs, Eval(), 50)
    times = {name: float("inf") for name in cases}
    for _ in range(args.rounds):  # the cases alternate, so a busy spell hits all of them
        for name, ensemble in cases.items():
            t0 = time.perf_counter()
            evaluator.run("test", ensemble=ensemble)
            times[name] = min(times[name], time.perf_counter() - t0)
    users = int((seqs.role == 0).sum())
    for name, t in times.items():
        rows.append(
            f"| evaluate the test split, {name} ({users:,} users) | {t:.2f} s ({t / times['model alone']:.2f}×) | |"
        )

    cfg = Ensemble(members=MEMBERS)
    passes = []

    def evaluate(variants):
        passes.append(len(variants))
        results = evaluator.run_many("valid", variants)
        return np.stack([r.per_user["ndcg@10"] for r in results]), np.searchsorted(
            cfg.edges, results[0].lengths, "right"
        )

    t0 = time.perf_counter()
    coordinate_ascent(start(cfg, list(members.values())), cfg.weights, cfg.rounds, evaluate)
    rows.append(
        f"| fit the weights on validation (pop, transitions, ease; {len(passes)} passes of {passes[0]} "
        f"candidates) | {time.perf_counter() - t0:.1f} s | |"
    )

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    _, history, _ = seqs.eval_inputs("test", 50)
    rng = np.random.default_rng(0)
    sessions = {}
    for name in ("model alone", "+ transitions", "+ run", "+ pop, transitions, ease"):
        graph = to_onnx(TopKScorer(model, 10, cases[name]).eval(), 50, {})
        sessions[name] = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        rows.append(f"| exported graph, {name} | | {len(graph) / 2**20:.1f} MB |")
    for batch in (1, 256):
        lat = {name: [] for name in sessions}
        for _ in range(max(20, 200 // batch)):
            feed = {"history": history[rng.integers(0, len(history), batch)], "exclude": np.zeros((batch, 0), np.int64)}
            for name, sess in sessions.items():
                sess.run(None, feed)  # warm for this shape
                t0 = time.perf_counter()
                sess.run(None, feed)
                lat[name].append(time.perf_counter() - t0)
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
