"""The sweep plans and the sweep table: a typo in a plan must fail here, not after a GPU machine has started."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from ltrec.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import sweep  # noqa: E402
import sweep_table  # noqa: E402

PLANS = sorted((ROOT / "bench" / "plans").glob("*.yaml"))


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name)
def test_every_planned_run_is_a_valid_recipe(plan, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipe sources are relative to the project root
    runs = sweep.expand(yaml.safe_load(plan.read_text()))
    assert runs
    names = [f"{r['name']}-s{r['seed']}" for r in runs]
    assert len(set(names)) == len(names), "two runs would share a directory"
    for r in runs:
        load_recipe(r["recipe"], [*r["sets"], "train.device=cuda"])  # raises on a bad key or value


def test_data_root_rewrites_the_shared_path(monkeypatch):
    monkeypatch.chdir(ROOT)
    run = {"recipe": "recipes/sasrec-music-b64.yaml", "dir": Path("/tmp/x"),
           "sets": ["seed=1", "data.source=../shared/data/yelp/interactions.csv"]}
    cmd = sweep.command(run, ".gpudata", threads=1)
    assert cmd[-2:] == ["--set", "data.source=.gpudata/yelp/interactions.csv"]
    assert "seed=1" in cmd


def _metrics(valid: float, test_all: float, best: int) -> dict:
    slices = {s: {"ndcg@10": test_all, "hr@10": 2 * test_all} for s in ("all", "head", "tail")}
    return {"valid": {"all": {"ndcg@10": valid}}, "test": slices, "best_epoch": best, "epochs": best + 3,
            "seconds_per_epoch": 5.0}


def test_table_groups_seeds_and_points_at_the_paired_comparison(tmp_path, capsys, monkeypatch):
    for name, seed, test_all in [("sasrec-plain", 0, 0.05), ("sasrec-plain", 1, 0.06), ("sasrec-ga", 0, 0.07)]:
        d = tmp_path / f"{name}-s{seed}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(_metrics(0.1, test_all, 4)))
    (tmp_path / "sasrec-ga-s1").mkdir()  # unfinished: no metrics.json, left out
    monkeypatch.setattr(sys, "argv", ["sweep_table.py", str(tmp_path), "--against", "sasrec-plain"])
    sweep_table.main()
    out = capsys.readouterr().out
    assert "| sasrec-plain | 2 | 0.1000 ± 0.0000 | 0.0550 ± 0.0071 |" in out
    assert "| sasrec-ga | 1 | 0.1000 | 0.0700 |" in out
    assert f"ltrec compare {tmp_path}/sasrec-plain-s0,{tmp_path}/sasrec-plain-s1 {tmp_path}/sasrec-ga-s0" in out


def test_table_names_a_missing_baseline(tmp_path, monkeypatch):
    d = tmp_path / "gru-plain-s0"
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps(_metrics(0.1, 0.05, 2)))
    monkeypatch.setattr(sys, "argv", ["sweep_table.py", str(tmp_path), "--against", "sasrec-plain"])
    with pytest.raises(SystemExit, match="no such group; groups: gru-plain"):
        sweep_table.main()


def _per_user(d: Path, ndcg: list[float]) -> None:
    rows = [f"u{i},{'head' if i < 2 else 'tail'},{9 if i < 2 else 3},{v}" for i, v in enumerate(ndcg)]
    (d / "users_test.csv").write_text("user_id,slice,train_events,ndcg@10\n" + "\n".join(rows) + "\n")
    (d / "users_test.json").write_text(json.dumps({"protocol": "full ranking"}))
    (d / ".ltrec-run.json").write_text(json.dumps({"format": 2}))


def test_table_tests_each_group_against_its_own_baseline_paired_over_users(tmp_path, capsys, monkeypatch):
    """Seeds are averaged per user before pairing; a group is tested only against the baseline of its prefix."""
    per_user = {("sasrec-plain", 0): [0.1, 0.3, 0.2, 0.0], ("sasrec-plain", 1): [0.3, 0.1, 0.0, 0.2],
                ("sasrec-ga", 0): [0.4, 0.4, 0.2, 0.4], ("gru-plain", 0): [0.1, 0.1, 0.1, 0.1],
                ("gru-ga", 0): [0.1, 0.1, 0.1, 0.1]}
    for (name, seed), ndcg in per_user.items():
        d = tmp_path / f"{name}-s{seed}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(_metrics(0.1, 0.05, 4)))
        _per_user(d, ndcg)
    monkeypatch.setattr(sys, "argv", ["sweep_table.py", str(tmp_path), "--against", "sasrec-plain",
                                      "--against", "gru-plain"])
    sweep_table.main()
    lines = {line.split(" | ")[0]: line for line in capsys.readouterr().out.splitlines()}
    # plain averaged per user: 0.2, 0.2, 0.1, 0.1 → all 0.15, head 0.2, tail 0.1; ga: 0.35, 0.4, 0.3
    cell = lines["| sasrec-ga"].rsplit(" | ", 1)[1]
    # every one of the 4 users gains, so no resample's mean difference is ≤ 0
    assert cell == "+133.3% (p<0.0001) / +100.0% (p<0.0001) / +200.0% (p<0.0001) |", cell
    assert lines["| gru-ga"].rsplit(" | ", 1)[1] == "+0.0% (p=1.000) / +0.0% (p=1.000) / +0.0% (p=1.000) |"
    assert lines["| sasrec-plain"].endswith("|  |")


def _instant_runs(monkeypatch):
    """Training processes that finish at once; returns the list their command lines are appended to."""
    started = []

    class Done:
        def __init__(self, cmd, **kw):
            started.append(cmd)
            self.pid = 0

        def poll(self):
            return 0

    monkeypatch.setattr(sweep.subprocess, "Popen", Done)
    monkeypatch.setattr(sweep.time, "sleep", lambda s: None)
    return started


def test_skip_finished_leaves_out_runs_with_results_and_keeps_their_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = tmp_path / "plan.yaml"
    plan.write_text("- name: a\n  recipe: recipes/sasrec-music-b64.yaml\n  seeds: [0, 1]\n")
    out = tmp_path / "out"
    (out / "a-s0").mkdir(parents=True)
    (out / "a-s0" / "metrics.json").write_text("{}")
    (out / "summary.json").write_text(json.dumps([{"dir": str(out / "a-s0"), "rc": 0}]))
    started = _instant_runs(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["sweep.py", str(plan), "--out", str(out), "--skip-finished"])
    assert sweep.main() == 0
    assert len(started) == 1 and str(out / "a-s1") in started[0]
    rows = json.loads((out / "summary.json").read_text())
    assert [Path(r["dir"]).name for r in rows] == ["a-s0", "a-s1"]


def test_only_runs_the_named_entries_and_names_a_typo(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = tmp_path / "plan.yaml"
    plan.write_text("- name: a\n  recipe: recipes/sasrec-music-b64.yaml\n"
                    "- name: b\n  recipe: recipes/sasrec-music-b64.yaml\n")
    started = _instant_runs(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["sweep.py", str(plan), "--out", str(tmp_path / "o"), "--only", "b"])
    assert sweep.main() == 0
    assert len(started) == 1 and str(tmp_path / "o" / "b-s0") in started[0]
    monkeypatch.setattr(sys, "argv", ["sweep.py", str(plan), "--out", str(tmp_path / "o"), "--only", "c"])
    with pytest.raises(SystemExit, match="--only c: not in"):
        sweep.main()
