"""The fitted item-to-item backbones: what fitting costs, and what keeping `neighbours` weights per item costs EASE.

    python bench/bench_linear.py [--root ../shared/data] [--datasets amazon-beauty amazon-sports movielens-1m]
        [--synthetic 40000] [--fit-only] [--l2 500] [--neighbours 50 100 200 500] [--threads 2]

Each dataset runs in a fresh subprocess, so its peak RSS is its own: the data is loaded (the recipe's split and
head), then `EASE(l2).fit` is timed and the process's peak RSS read right after it (data included; the RSS after
loading is given too), then `Transitions.fit` is timed (window 5 and 20; last, direction and neighbours as the
recipe defaults). The dense B of that same EASE fit is kept (captured as the fit hands it to `strongest`) and
compared on the validation split, history masked, with tables that keep each item's 50 / 100 / 200 / 500
largest-magnitude weights: the share of each user's top-10 that the pruned table keeps, and validation NDCG@10
(all users and the tail) as `ltrec.evaluation.engine.Evaluator` computes it; `--fit-only` skips that comparison.
`--synthetic N` adds a generated log of N items (MovieLens-20M's shape from bench/bench_scale.py, 4·N users,
30·4·N events), for catalogues larger than the real logs'; EASE's `max_items` is raised to fit it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_ingest import machine  # noqa: E402
from bench.bench_scale import generate  # noqa: E402

MAX_LEN = 50


class Dense(torch.nn.Module):
    """EASE scored with the whole B: x·B, x the distinct items of the history (what the table model sums)."""

    trainable, tied = False, False

    def __init__(self, b: torch.Tensor):
        super().__init__()
        self.b = b

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        n = self.b.shape[0]
        keys = torch.unique((torch.arange(len(history)).unsqueeze(1) * (n + 1) + history)[history > 0])
        x = torch.sparse_coo_tensor(
            torch.stack([keys // (n + 1), keys % (n + 1) - 1]), torch.ones(len(keys)), (len(history), n)
        )
        return torch.sparse.mm(x, self.b)  # (B, N): the history's rows of B summed, never a dense B × N × N product


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def top10(model, seqs, history, users) -> torch.Tensor:
    """(U, 10) each validation user's top-10 items, history masked."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(users), 1024):
            scores = model(torch.from_numpy(history[lo : lo + 1024])).float()
            rows, items = seqs.seen(users[lo : lo + 1024], "valid")
            scores[torch.from_numpy(rows), torch.from_numpy(items - 1)] = -torch.inf
            out.append(scores.topk(10, dim=1).indices)
    return torch.cat(out)


def child(path: str, l2: float, neighbours: list[int], threads: int, fit_only: bool) -> dict:
    import ltrec.models.ease as ease_mod
    from ltrec.data import load
    from ltrec.evaluation.engine import Evaluator
    from ltrec.models import EASE, Transitions
    from ltrec.models.neighbours import strongest
    from ltrec.recipe import Data, Eval, Head, Split

    torch.set_num_threads(threads)
    seqs = load(Data(source=path), Split(), Head())
    out = {"users": len(seqs.users), "items": seqs.n_items, "events": len(seqs.items), "rss_data_mb": rss_mb()}

    captured = {}

    def capture(weights, k):  # the dense B the fit solves for, kept for the comparison below
        captured["b"] = weights
        return strongest(weights, k)

    ease_mod.strongest = capture
    t0 = time.perf_counter()
    model = EASE(seqs.n_items, MAX_LEN, l2=l2, neighbours=max(neighbours), max_items=seqs.n_items).fit(seqs)
    out["ease_fit_s"] = time.perf_counter() - t0
    out["ease_rss_mb"] = rss_mb()
    ease_mod.strongest = strongest

    for window in (5, 20):
        t0 = time.perf_counter()
        Transitions(seqs.n_items, MAX_LEN, window=window).fit(seqs)
        out[f"transitions_w{window}_fit_s"] = time.perf_counter() - t0

    b = captured.pop("b")
    if fit_only:
        return out
    cfg = Eval()
    users, history, _ = seqs.eval_inputs("valid", MAX_LEN)

    def ndcg(m) -> dict:
        table = Evaluator(m.eval(), seqs, cfg, MAX_LEN).run("valid").table()
        return {s: table[s]["ndcg@10"] for s in ("all", "tail")}

    dense = Dense(b)
    out["dense"] = ndcg(dense)
    want = top10(dense, seqs, history, users)
    out["pruned"] = {}
    for k in neighbours:
        model.set_table(strongest(b, k))
        got = top10(model, seqs, history, users)
        overlap = (got.unsqueeze(2) == want.unsqueeze(1)).any(dim=2).float().mean().item()
        out["pruned"][k] = {"overlap": overlap, **ndcg(model), "table_mb": 8 * (seqs.n_items + 1) * k / 2**20}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="../shared/data")
    ap.add_argument("--datasets", nargs="+", default=["amazon-beauty", "amazon-sports", "movielens-1m"])
    ap.add_argument("--l2", type=float, default=500.0)
    ap.add_argument("--neighbours", type=int, nargs="+", default=[50, 100, 200, 500])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--synthetic", type=int, nargs="*", default=[], help="also a generated log of this many items")
    ap.add_argument("--fit-only", action="store_true", help="time the fits only, no pruned-table comparison")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.l2, args.neighbours, args.threads, args.fit_only)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="ltrec-bench-linear-"))
    logs = {name: Path(args.root) / name / "interactions.csv" for name in args.datasets}
    for n in args.synthetic:
        logs[f"synthetic, {n:,} items"] = tmp / f"synthetic-{n}.parquet"
        generate(logs[f"synthetic, {n:,} items"], 30 * 4 * n, 4 * n, n)
    results = {}
    for name, path in logs.items():
        if not path.exists():
            print(f"{path}: absent, skipped", file=sys.stderr)
            continue
        cmd = [sys.executable, __file__, "--child", str(path), "--l2", str(args.l2), "--threads", str(args.threads)]
        cmd += ["--neighbours", *map(str, args.neighbours)] + (["--fit-only"] if args.fit_only else [])
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if done.returncode:
            print(f"{name}: failed\n{done.stderr}", file=sys.stderr)
            continue
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"**Machine**: {machine()}; torch threads {args.threads}\n\n**Command**: `python {' '.join(sys.argv)}`\n")
    print(
        "| dataset | users | items | EASE fit (s) | peak RSS (MB; after loading the data) | 8·N² bytes (MB) | "
        "transitions fit, window 5 / 20 (s) |\n|---|---|---|---|---|---|---|"
    )
    for name, r in results.items():
        print(
            f"| {name} | {r['users']:,} | {r['items']:,} | {r['ease_fit_s']:.1f} | {r['ease_rss_mb']:,.0f} "
            f"({r['rss_data_mb']:,.0f}) | {8 * r['items'] ** 2 / 2**20:,.0f} | {r['transitions_w5_fit_s']:.2f} / "
            f"{r['transitions_w20_fit_s']:.2f} |"
        )
    if not any("dense" in r for r in results.values()):
        return
    print(
        "\n| dataset | neighbours | table (MB) | top-10 shared with dense B | valid NDCG@10 all (pruned ÷ dense) "
        "| valid NDCG@10 tail (pruned ÷ dense) |\n|---|---|---|---|---|---|"
    )
    for name, r in results.items():
        if "dense" not in r:
            continue
        d = r["dense"]
        print(f"| {name} | all ({r['items']:,}, dense) | – | 100% | {d['all']:.4f} | {d['tail']:.4f} |")
        for k, p in r["pruned"].items():
            print(
                f"| {name} | {k} | {p['table_mb']:.1f} | {p['overlap']:.1%} | {p['all']:.4f} "
                f"({p['all'] / d['all']:.3f}) | {p['tail']:.4f} ({p['tail'] / d['tail']:.3f}) |"
            )


if __name__ == "__main__":
    main()
