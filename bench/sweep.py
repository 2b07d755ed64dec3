"""Run a plan of training runs side by side, within a time budget, and collect valid/test numbers.

    python bench/sweep.py bench/plans/transfer.yaml --jobs 12 --out runs/sweep --launch-until 380 --deadline 500

The plan is a list of entries, in priority order:

    - name: sasrec-gaat-win          # run dirs <out>/<name>-s<seed>
      recipe: recipes/sasrec-music-gaat.yaml
      seeds: [0, 1, 2]
      set: [train.batch_size=64, transfer.grad_align.sampling=windows]

Every run is the real CLI (`python -m ltrec train`). Runs are started in plan order (seed-major within an
entry) while fewer than --jobs are running; none starts after --launch-until seconds, and any still running
at --deadline is stopped and reported as unfinished (its checkpoint stays, `--resume` continues it). A run
that fails ends the sweep at once (--keep-going to carry on), so a broken environment costs seconds, not
the budget. With --skip-finished, runs whose directory already holds metrics.json are left out, so a plan
that grew after a sweep can be run again into the same --out; --only NAME... runs just those entries (a
second sweep beside a running one). `summary.json` in --out is rewritten after
every finished run (earlier sweeps' rows into the same --out are kept): per run its validation numbers
(which the plan's choices must be made on), test numbers, epochs and seconds per epoch. With
--data-root, recipe sources under ../shared/data are read from that folder instead (a copy on another
machine).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

SHARED = "../shared/data"


def expand(plan: list[dict]) -> list[dict]:
    runs = []
    for entry in plan:
        for seed in entry.get("seeds", [0]):
            runs.append({"name": entry["name"], "seed": seed, "recipe": entry["recipe"],
                         "sets": [f"seed={seed}", *entry.get("set", [])]})
    return runs


def command(run: dict, data_root: str | None, threads: int) -> list[str]:
    sets = list(run["sets"])
    if data_root:
        source = yaml.safe_load(Path(run["recipe"]).read_text())["data"]["source"]
        given = [s for s in sets if s.startswith("data.source=")]
        source = given[-1].split("=", 1)[1] if given else source
        sets.append("data.source=" + source.replace(SHARED, data_root, 1))
    cmd = [sys.executable, "-m", "ltrec", "train", run["recipe"], "--out", str(run["dir"]), "--overwrite",
           "--set", f"train.threads={threads}"]
    return cmd + [a for s in sets for a in ("--set", s)]


def record(run: dict, rc: int | None, seconds: float) -> dict:
    row = {"name": run["name"], "seed": run["seed"], "dir": str(run["dir"]), "sets": run["sets"],
           "rc": rc, "wall_s": round(seconds, 1)}
    metrics = run["dir"] / "metrics.json"
    if rc == 0 and metrics.exists():
        m = json.loads(metrics.read_text())
        row.update({k: m.get(k) for k in ("best_epoch", "epochs", "seconds_per_epoch", "valid", "test", "protocol")})
    else:
        log = run["dir"] / "metrics.jsonl"
        row["epochs_done"] = len(log.read_text().splitlines()) if log.exists() else 0
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plan", type=Path)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="train.threads of each run")
    ap.add_argument("--out", type=Path, default=Path("runs/sweep"))
    ap.add_argument("--data-root", help=f"read recipe sources under {SHARED} from this folder instead")
    ap.add_argument("--launch-until", type=float, default=float("inf"), help="seconds; start no run after")
    ap.add_argument("--deadline", type=float, default=float("inf"), help="seconds; stop runs still going")
    ap.add_argument("--keep-going", action="store_true", help="a failed run does not end the sweep")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these entries of the plan")
    ap.add_argument("--skip-finished", action="store_true",
                    help="leave out runs whose directory already holds metrics.json (a plan grown since)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="an override for every run")
    args = ap.parse_args()

    runs = expand(yaml.safe_load(args.plan.read_text()))
    args.out.mkdir(parents=True, exist_ok=True)
    for r in runs:
        r["dir"] = args.out / f"{r['name']}-s{r['seed']}"
        r["sets"] += args.sets
    if args.only:
        unknown = set(args.only) - {r["name"] for r in runs}
        if unknown:
            raise SystemExit(f"--only {' '.join(sorted(unknown))}: not in {args.plan}")
        runs = [r for r in runs if r["name"] in args.only]
    if args.skip_finished:
        runs = [r for r in runs if not (r["dir"] / "metrics.json").exists()]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    t0, pending, running, done = time.time(), list(runs), {}, []
    failed = False

    summary = args.out / "summary.json"
    mine = {str(r["dir"]) for r in runs}

    def save():  # re-read each time: rows of other sweeps into the same --out (earlier or side by side) stay
        others = [row for row in (json.loads(summary.read_text()) if summary.exists() else []) if row["dir"] not in mine]
        tmp = summary.with_suffix(".tmp")
        tmp.write_text(json.dumps(others + done, indent=1))
        os.replace(tmp, summary)

    while (pending or running) and not failed:
        now = time.time() - t0
        while pending and len(running) < args.jobs and now < args.launch_until:
            r = pending.pop(0)
            r["dir"].parent.mkdir(parents=True, exist_ok=True)
            log = open(r["dir"].with_suffix(".log"), "w")
            r["start"] = time.time()
            running[r["dir"]] = (r, subprocess.Popen(command(r, args.data_root, args.threads), env=env,
                                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        if now >= args.launch_until:
            pending.clear()
        for key, (r, p) in list(running.items()):
            rc = p.poll()
            if rc is None and now < args.deadline:
                continue
            if rc is None:  # past the deadline: stop it, keep what it wrote
                os.killpg(p.pid, signal.SIGTERM)
                p.wait()
            del running[key]
            done.append(record(r, rc, time.time() - r["start"]))
            save()
            state = "unfinished (deadline)" if rc is None else f"exit {rc}"
            print(f"[{now:6.0f}s] {r['dir'].name}: {state} after {time.time() - r['start']:.0f}s", flush=True)
            if rc not in (0, None) and not args.keep_going:
                print(r["dir"].with_suffix(".log").read_text()[-3000:], flush=True)
                failed = True
        time.sleep(1)
    for key, (r, p) in running.items():  # only after a failure
        os.killpg(p.pid, signal.SIGTERM)
        p.wait()
        done.append(record(r, None, time.time() - r["start"]))
    save()
    print(f"{sum(d['rc'] == 0 for d in done)} of {len(runs)} runs finished in {time.time() - t0:.0f}s; "
          f"summary: {args.out / 'summary.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
