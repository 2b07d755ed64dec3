"""Training speed and quality against RecBole 1.2.1: same data, split, model sizes, loss, batch and epochs.

    bash bench/recbole_env.sh && python bench/bench_recbole.py [--dataset music|ml1m] [--epochs 5] \
        [--models sasrec gru4rec] [--seeds 0 1 2] [--ltrec-set K=V ...]

Each model is trained by ltrec (`python -m ltrec train recipes/<model>-<dataset>.yaml`) and then by RecBole
(in the venv bench/recbole_env.sh builds), one after the other, each in its own process with one thread
(OMP_NUM_THREADS=1 and torch.set_num_threads(1)); peak RSS is that process's own (os.wait4). With several
--seeds each seed runs both frameworks in turn, and the table ends with mean ± std per framework. A finished
run's result is kept in --work (ltrec's run directory, RecBole's result-<model>-e<epochs>-s<seed>.json), so
an interrupted benchmark continues where it stopped; delete --work to measure again.

What is the same: the data (Amazon Music or MovieLens-1M), no k-core filtering, each user's events ordered by time
with ties in file
order (RecBole's sort is stable), leave-one-out (last event = test, second-to-last = validation), d=64,
SASRec 2 layers × 2 heads with a d→d feed-forward (RecBole `inner_size: 64`), GRU4Rec 1 layer, dropout
0.2, full-softmax CE over all items, Adam lr 1e-3, batch 256, max_len 50, the epoch with the best
validation NDCG@10 is tested, full ranking over all items. RecBole does NOT mask a sequential user's
history at evaluation, so ltrec runs with `eval.mask_seen=false` here (its default masks it).

What differs: an epoch trains the same next-item targets in both (every training event after a user's
first), but RecBole feeds each target as its own prefix sequence ("data augmentation", one forward pass
per target), while ltrec cuts each user's history into windows of max_len and trains every position of a
window at once; so RecBole makes more, smaller-context forward passes and more optimizer steps per epoch.
Users with exactly 3 events: ltrec uses event 2 as their validation target and trains nothing on them;
RecBole's leave-one-out on the augmented rows puts event 2 into training and gives them no validation row.
Users with 2 events train in both and 1 event in neither. Test users and targets are the same.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_ingest import machine  # noqa: E402

DATASETS = {
    "music": "../shared/data/amazon-music/interactions.csv",
    "ml1m": "../shared/data/movielens-1m/interactions.csv",
}

RECBOLE_NAMES = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "caser": "Caser", "narm": "NARM", "bert4rec": "BERT4Rec"}
RECBOLE_CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
_load = torch.load  # RecBole 1.2.1 reloads its own best checkpoint (a pickled Config): torch >= 2.6 needs this
torch.load = lambda *a, **k: _load(*a, **{"weights_only": False, **k})
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import BERT4Rec, Caser, GRU4Rec, NARM, SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed

model_name, data_path, epochs, workdir, seed, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
curve = "curve" in sys.argv[7:]  # also score test after every epoch (bench_ttq.py), outside the timed part
# stop=N: RecBole's own early stopping (N epochs without a better validation score); default: none
stop = next((int(a[5:]) for a in sys.argv[7:] if a.startswith("stop=")), 1000)
common = {
    "data_path": data_path, "dataset": name, "checkpoint_dir": workdir + "/saved",
    "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
    "MAX_ITEM_LIST_LENGTH": 50, "train_neg_sample_args": None, "loss_type": "CE",
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
    "topk": [10], "metrics": ["NDCG", "Hit"], "valid_metric": "NDCG@10",
    "epochs": epochs, "stopping_step": stop, "eval_step": 1, "train_batch_size": 256, "eval_batch_size": 4096,
    "learning_rate": 1e-3, "weight_decay": 0.0, "seed": seed, "reproducibility": True, "show_progress": False,
    "use_gpu": False, "gpu_id": "", "worker": 0, "save_dataset": False, "save_dataloaders": False,
}
sizes = {"SASRec": {"hidden_size": 64, "inner_size": 64, "n_layers": 2, "n_heads": 2, "hidden_dropout_prob": 0.2,
                    "attn_dropout_prob": 0.2, "hidden_act": "gelu"},
         "GRU4Rec": {"embedding_size": 64, "hidden_size": 64, "num_layers": 1, "dropout_prob": 0.2},
         # Caser convolves the newest MAX_ITEM_LIST_LENGTH items: ltrec's window 5 (RecBole keeps its user embedding)
         "Caser": {"embedding_size": 64, "nh": 16, "nv": 4, "dropout_prob": 0.4, "MAX_ITEM_LIST_LENGTH": 5},
         "NARM": {"embedding_size": 64, "hidden_size": 64, "n_layers": 1, "dropout_probs": [0.25, 0.25]},
         "BERT4Rec": {"hidden_size": 64, "inner_size": 64, "n_layers": 2, "n_heads": 2, "hidden_dropout_prob": 0.2,
                      "attn_dropout_prob": 0.2, "hidden_act": "gelu", "mask_ratio": 0.2, "ft_ratio": 0.1}}[model_name]
config = Config(model=model_name, dataset=name, config_dict={**common, **sizes})
init_seed(config["seed"], config["reproducibility"])
dataset = create_dataset(config)
train_data, valid_data, test_data = data_preparation(config, dataset)
init_seed(config["seed"], config["reproducibility"])
model = {"SASRec": SASRec, "GRU4Rec": GRU4Rec, "Caser": Caser, "NARM": NARM, "BERT4Rec": BERT4Rec}[model_name](
    config, train_data.dataset)
trainer = Trainer(config, model)
seconds, tests = [], []
inner = trainer._train_epoch
def timed(*a, **k):  # training time only, as ltrec's seconds per epoch (validation excluded)
    t0 = time.perf_counter()
    out = inner(*a, **k)
    seconds.append(time.perf_counter() - t0)
    if curve:  # the next _train_epoch puts the model back in train mode
        r = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        tests.append([float(r["ndcg@10"]), float(r["hit@10"])])
    return out
trainer._train_epoch = timed
valids, inner_valid = [], trainer._valid_epoch
def valid(*a, **k):  # the validation score per epoch, to know which epoch RecBole keeps
    score, result = inner_valid(*a, **k)
    valids.append(float(score))
    return score, result
trainer._valid_epoch = valid
trainer.fit(train_data, valid_data, saved=True, show_progress=False)
test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
print(json.dumps({"seconds": seconds, "test_curve": tests, "valid_curve": valids, "train_sequences": len(train_data.dataset), "test_users": len(test_data.dataset),
                  "valid_users": len(valid_data.dataset), "ndcg@10": float(test["ndcg@10"]),
                  "hr@10": float(test["hit@10"]), "params": sum(p.numel() for p in model.parameters())}))
"""


def run(cmd: list[str], env: dict, cwd: Path, log: Path) -> tuple[str, float, float, int]:
    """(stdout, wall seconds, peak RSS MB of the process, exit code); stderr goes to `log`."""
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=cwd)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return out, time.perf_counter() - t0, usage.ru_maxrss / 1024, proc.returncode


def to_atomic(csv_path: Path, out_dir: Path, name: str) -> Path:
    """The events as RecBole's atomic file <name>.inter (tab-separated, typed header), rows in file order."""
    inter = out_dir / name / f"{name}.inter"
    inter.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, newline="") as f, open(inter, "w") as g:
        rows = csv.DictReader(f)
        g.write("user_id:token\titem_id:token\ttimestamp:float\n")
        g.writelines(f"{r['user_id']}\t{r['item_id']}\t{r['timestamp']}\n" for r in rows)
    return out_dir


def ltrec_targets(recipe: str, data: str, sets: list[str]) -> dict:
    from ltrec.data import load
    from ltrec.recipe import load_recipe

    r = load_recipe(recipe, [f"data.source={data}", *sets])
    inputs, targets, _ = load(r.data, r.split, r.head, r.seed).train_windows(r.data.max_len, r.data.stride)
    return {"sequences": len(inputs), "targets": int((targets > 0).sum())}


def ltrec_run(model: str, seed: int, args, env: dict) -> tuple:
    recipe = f"recipes/{model}-{args.dataset}.yaml"
    run_dir = args.work / f"ltrec-{model}-e{args.epochs}-s{seed}"
    done = run_dir / "bench.json"
    if not (done.exists() and json.loads(done.read_text()).get("sets") == args.ltrec_set):  # reuse only the same run
        cmd = [
            sys.executable,
            "-m",
            "ltrec",
            "train",
            recipe,
            "--set",
            f"train.epochs={args.epochs}",
            "--set",
            "train.patience=1000",
            "--set",
            "train.threads=1",
            "--set",
            "eval.mask_seen=false",
            "--set",
            f"seed={seed}",
            "--set",
            f"data.source={args.data}",
            "--out",
            str(run_dir),
            "--overwrite",
            "--set",
            "train.lr=1e-3",
            "--set",
            "train.batch_size=256",  # RecBole's settings, whatever the recipe's
            "--set",
            "backbone.dim=64",  # RecBole's sizes (`sizes` above)
            *[a for kv in args.ltrec_set for a in ("--set", kv)],
        ]
        _, wall, rss, rc = run(cmd, env, ROOT, args.work / f"ltrec-{model}-s{seed}.log")
        if rc:
            sys.exit(f"ltrec {model} failed, see {args.work}/ltrec-{model}-s{seed}.log")
        done.write_text(json.dumps({"wall": wall, "rss": rss, "sets": args.ltrec_set}))
    m = json.loads((run_dir / "metrics.json").read_text())
    b = json.loads(done.read_text())
    n = ltrec_targets(recipe, args.data, args.ltrec_set)
    return (
        "ltrec",
        model,
        seed,
        m["seconds_per_epoch"],
        n["sequences"],
        n["targets"],
        m["test"]["all"]["ndcg@10"],
        m["test"]["all"]["hr@10"],
        b["rss"],
        b["wall"],
    )


def recbole_run(model: str, seed: int, args, env: dict, data_path: Path) -> tuple:
    result = args.work / f"result-{model}-e{args.epochs}-s{seed}.json"
    if not result.exists():
        name = RECBOLE_NAMES[model]
        cmd = [
            str(args.venv / "bin/python"),
            "-c",
            RECBOLE_CHILD,
            name,
            str(data_path),
            str(args.epochs),
            str(args.work),
            str(seed),
            args.dataset,
        ]
        out, wall, rss, rc = run(cmd, env, args.work, args.work / f"recbole-{model}-s{seed}.log")
        if rc:
            sys.exit(f"RecBole {model} failed, see {args.work}/recbole-{model}-s{seed}.log")
        result.write_text(json.dumps({**json.loads(out.strip().splitlines()[-1]), "wall": wall, "rss": rss}))
    r = json.loads(result.read_text())
    per_epoch = sum(r["seconds"]) / len(r["seconds"])
    return (
        "RecBole 1.2.1",
        model,
        seed,
        per_epoch,
        r["train_sequences"],
        r["train_sequences"],
        r["ndcg@10"],
        r["hr@10"],
        r["rss"],
        r["wall"],
    )


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["sasrec", "gru4rec"], choices=sorted(RECBOLE_NAMES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="music",
        help="which recipes/<model>-<dataset>.yaml and which data file",
    )
    ap.add_argument("--data", help="the events CSV (default: the dataset's file under ../shared/data)")
    ap.add_argument("--venv", type=Path, default=Path("/tmp/ltrec-bench/recbole-venv"))
    ap.add_argument("--work", type=Path, help="results (default: /tmp/ltrec-bench/recbole, -ml1m for ml1m)")
    ap.add_argument(
        "--ltrec-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra recipe override for the ltrec runs, e.g. train.batch_size=64 (repeatable)",
    )
    args = ap.parse_args()
    args.data = args.data or DATASETS[args.dataset]
    args.work = args.work or Path("/tmp/ltrec-bench/recbole" + ("" if args.dataset == "music" else f"-{args.dataset}"))
    args.work.mkdir(parents=True, exist_ok=True)
    data_path = to_atomic(Path(args.data), args.work / "data", args.dataset)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    rows = []
    for model in args.models:
        for seed in args.seeds:  # alternate the frameworks, so both see the same background load
            rows.append(ltrec_run(model, seed, args, env))
            rows.append(recbole_run(model, seed, args, env, data_path))
            print(f"<!-- {rows[-2]} / {rows[-1]} -->", file=sys.stderr, flush=True)
    print(
        f"**Machine**: {machine()}\n\n**Command**: `python {' '.join(sys.argv)}` (one thread per framework; "
        f"{args.epochs} epochs, no early stopping)\n"
    )
    print(
        "| framework | model | seed | s/epoch (train) | sequences/epoch | targets/epoch | test NDCG@10 | test HR@10 "
        "| peak RSS (MB) | process wall (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for fw, model, seed, sec, seqs, targets, ndcg, hr, rss, wall in rows:
        print(
            f"| {fw} | {model} | {seed} | {sec:.1f} | {seqs:,} | {targets:,} | {ndcg:.4f} | {hr:.4f} | {rss:,.0f} "
            f"| {wall:.0f} |"
        )
    for model in args.models:
        ours, theirs = ([r for r in rows if r[1] == model and r[0] == fw] for fw in ("ltrec", "RecBole 1.2.1"))
        speed = statistics.mean(r[3] for r in theirs) / statistics.mean(r[3] for r in ours)
        print(
            f"\n{model} over seeds {args.seeds}: ltrec {speed:.2f}× faster per epoch; NDCG@10 "
            f"{mean_std([r[6] for r in ours])} vs {mean_std([r[6] for r in theirs])}, HR@10 "
            f"{mean_std([r[7] for r in ours])} vs {mean_std([r[7] for r in theirs])} (ltrec vs RecBole, mean ± std)"
        )


if __name__ == "__main__":
    main()
