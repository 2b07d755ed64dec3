"""`ltrec sweep`: a plan of arms × seeds (grids tuned on validation) through the real CLI, resumed, tabulated,
reported; bad plans are one-line errors; a failed arm is reported while the rest carries on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import processes_naming, write_long_tailed
from typer.testing import CliRunner

from ltrec.cli import app

runner = CliRunner()
ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k" / "interactions.csv"
PLAN = """\
recipe: recipe.yaml
set: [train.epochs=1, backbone.dim=16, data.max_len=20]
seeds: [0, 1]
baseline: plain
arms:
  - name: plain
  - name: cvar
    set: ["transfer.robust={kind: cvar, alpha: 0.5}"]
    grid: {transfer.robust.mix: [0.0, 0.5]}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The `ltrec init` example (MovieLens-100K from the shared data; a synthetic log where it is absent)."""
    folder = tmp_path_factory.mktemp("sweep")
    data = ML100K if ML100K.exists() else write_long_tailed(folder / "events.csv", users=300)
    r = runner.invoke(app, ["init", str(folder / "demo"), "--data", str(data), "--sweep"])
    assert r.exit_code == 0, r.output
    (folder / "demo" / "plan.yaml").write_text(PLAN)
    return folder


def sweep(project, *args):
    import os

    cwd = os.getcwd()
    os.chdir(project)
    try:
        return runner.invoke(app, ["sweep", "demo/plan.yaml", *map(str, args)])
    finally:
        os.chdir(cwd)


def test_a_sweep_runs_resumes_and_tabulates(project):
    r = sweep(project, "--jobs", "2")
    assert r.exit_code == 0, r.output
    out = project / "runs" / "plan"
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(("-s0", "-s1"))) == [
        "cvar-s0",
        "cvar-s1",
        "plain-s0",
        "plain-s1",
    ]
    assert "chosen on validation" in r.output and "cvar: transfer.robust.mix=" in r.output
    table = (out / "table.md").read_text()
    assert "| cvar |" in table and "(p=" in table and "plain (baseline)" in table and table in r.output
    result = json.loads((out / "table.json").read_text())
    cvar = next(a for a in result["arms"] if a["arm"] == "cvar")
    assert cvar["seeds"] == [0, 1] and 0 <= cvar["slices"]["tail"]["ndcg@10"]["p_value"] <= 1
    assert result["chosen"]["cvar"] and len(result["grid"]["cvar"]) == 2
    again = sweep(project, "--resume", "--jobs", "2")  # nothing left to train: every run is kept
    assert again.exit_code == 0 and again.output.count("(finished before)") == 6, again.output
    assert "a sweep is already here; pass --resume" in sweep(project).output
    assert sweep(project, "--table").output.startswith("| arm | seeds |")
    page = project / "r.html"
    r = runner.invoke(app, ["report", str(out), "--out", str(page)])
    assert r.exit_code == 0 and "plain-s0" in page.read_text() and "cvar-s0" in page.read_text()


def test_a_failed_arm_is_reported_and_the_rest_carries_on(project, tmp_path):
    (project / "demo" / "broken.yaml").write_text(
        PLAN.replace("seeds: [0, 1]", "seeds: [0]").replace("    grid: {transfer.robust.mix: [0.0, 0.5]}\n", "")
        + '  - name: huge\n    set: ["eval.negatives=100000"]\n'
        "  - name: sampled\n    set: [eval.mode=sampled, eval.negatives=100000]\n"
    )
    import os

    os.chdir(project)
    r = runner.invoke(app, ["sweep", "demo/broken.yaml", "--out", str(tmp_path / "s")])
    assert r.exit_code == 1, r.output
    assert "failed: sampled-s0" in r.output and "log: " in r.output
    assert (tmp_path / "s" / "plain-s0" / "metrics.json").exists() and (
        tmp_path / "s" / "cvar-s0" / "metrics.json"
    ).exists()
    assert "failed: sampled-s0" in (tmp_path / "s" / "table.md").read_text()


def test_an_arm_at_the_baseline_trains_at_its_chosen_setting(project, tmp_path):
    (project / "demo" / "at.yaml").write_text(
        PLAN.replace("seeds: [0, 1]", "seeds: [0]")
        .replace("  - name: plain\n", "  - name: plain\n    grid: {train.lr: [1.0e-9, 5.0e-3]}\n")
        .replace("    grid: {transfer.robust.mix: [0.0, 0.5]}\n", "    at_baseline: true\n")
    )
    import os

    os.chdir(project)
    r = runner.invoke(app, ["sweep", "demo/at.yaml", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "s" / "table.json").read_text())
    [chosen] = result["chosen"]["plain"]
    import yaml

    recipe = yaml.safe_load((tmp_path / "s" / "cvar-s0" / "recipe.yaml").read_text())
    assert (
        recipe["train"]["lr"] == float(chosen.removeprefix("train.lr="))
        and recipe["transfer"]["robust"]["kind"] == "cvar"
    )
    assert next(a for a in result["arms"] if a["arm"] == "cvar")["seeds"] == [0]
    assert "cvar: at plain's choice" in (tmp_path / "s" / "table.md").read_text()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_a_killed_sweep_stops_the_runs_it_started(project, tmp_path):
    """Runs are process groups of their own; SIGTERM to the sweep stops them as Ctrl-C does (none trains on,
    orphaned) and says how to continue."""
    (project / "demo" / "long.yaml").write_text(
        PLAN.replace("train.epochs=1", "train.epochs=200").replace("seeds: [0, 1]", "seeds: [0]")
    )
    out = tmp_path / "s"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "ltrec", "sweep", "demo/long.yaml", "--out", str(out), "--jobs", "1"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 180
    while not list(out.glob("*/metrics.jsonl")) and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.5)
    runs = [pid for pid in processes_naming(str(out)) if pid != sweep.pid]
    assert runs, "no training run started"
    sweep.send_signal(signal.SIGTERM)
    output = sweep.communicate(timeout=120)[0]
    left = [pid for pid in runs if pid in processes_naming(str(out))]
    for pid in left:  # a failing check must not leave them training
        os.kill(pid, signal.SIGKILL)
    assert sweep.returncode == 2 and "--resume" in output, output
    assert not left


@pytest.mark.parametrize(
    "plan, message",
    [
        (
            "recipe: recipe.yaml\nbaseline: a\narms: [{name: a}, {name: b, at_baseline: true}]\n",
            "arms: b: at_baseline needs a baseline with a grid to take the chosen combination from "
            "(baseline a has none)",
        ),
        (
            "recipe: recipe.yaml\nbaseline: x\narms: [{name: plain}]\n",
            "plan.yaml: baseline: 'x' is not an arm (arms: plain)",
        ),
        (
            "recipe: recipe.yaml\nbaseline: a\narms: [{name: a}, {name: a}]\n",
            "plan.yaml: arms: the name a is given twice",
        ),
        (
            "recipe: recipe.yaml\nbaseline: a\narms: [{name: a, sett: [x=1]}]\n",
            "plan.yaml: arms.0.sett: unknown key (did you mean 'set'?)",
        ),
        (
            "recipe: recipe.yaml\nbaseline: a\narms: [{name: a, set: [train.epochz=1]}]\n",
            "plan.yaml: arms.0 (a): train.epochz: unknown key (did you mean 'epochs'?)",
        ),
        (
            "recipe: recipe.yaml\nbaseline: a\nseeds: [-1]\narms: [{name: a}]\n",
            "plan.yaml: seeds.0: Input should be greater than or equal to 0",
        ),
        ("recipe: nope.yaml\nbaseline: a\narms: [{name: a}]\n", "nope.yaml: no such recipe file"),
        (
            "recipe: recipe.yaml\nbaseline: a\narms: [{name: a, grid: {train.lr: []}}]\n",
            "grid: train.lr: give at least one value",
        ),
        ("baseline: a\narms: []\n", "plan.yaml: recipe: required key is missing"),
    ],
)
def test_bad_plans_are_one_line_errors(project, plan, message):
    (project / "demo" / "bad.yaml").write_text(plan)
    bad = str(project / "demo" / "bad.yaml")
    for args in (["sweep", bad, "--out", str(project / "unused")], ["validate", bad]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and message.replace("plan.yaml", "bad.yaml") in r.output, (args[0], r.output)
        assert "Traceback" not in r.output and not (project / "unused").exists()


def test_the_starter_plan_validates(project):
    from ltrec.sweep import load_plan

    plan, base = load_plan(project / "demo" / "sweep.yaml")
    assert plan.baseline == "plain"
    r = runner.invoke(app, ["validate", str(project / "demo" / "sweep.yaml"), str(base)])
    assert r.exit_code == 0 and r.output.count(": ok") == 2, r.output
    r = runner.invoke(app, ["validate", str(project / "demo" / "sweep.yaml"), "--set", "train.lr=1"])
    assert r.exit_code == 2 and "is a sweep plan; --set applies to recipes" in r.output, r.output
    wanted = {"plain", "ensemble", "cvar", "group-dro", "balanced", "user-branch"}
    assert {a.name for a in plan.arms} >= wanted


@pytest.mark.parametrize(
    "plan",
    sorted((Path(__file__).resolve().parents[1] / "bench" / "plans").rglob("*.yaml")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_bench_plan_is_a_valid_sweep(plan):
    from ltrec.sweep import load_plan

    load_plan(plan)  # every arm × grid combination's recipe validates


# -- the sweep folder and its runs' folders -------------------------------------------------------------------


@pytest.fixture
def tiny_plan(tmp_path):
    """A plan over a tiny synthetic log (a few seconds per run), in its own folder."""
    events = write_long_tailed(tmp_path / "events.csv", users=60)
    (tmp_path / "recipe.yaml").write_text(
        f"name: t\ndata: {{source: {events}, max_len: 10}}\n"
        "backbone: {kind: gru4rec, dim: 8}\ntrain: {epochs: 1, threads: 1}\n"
    )
    return tmp_path


@pytest.mark.parametrize(
    "out, message",
    [
        ("events.csv", "events.csv: exists and is not a directory; choose another --out"),
        ("events.csv/s", "events.csv/s: events.csv is a file, not a folder; choose another --out"),
        ("events.csv/a/b", "events.csv/a/b: events.csv is a file, not a folder; choose another --out"),
    ],
)
def test_out_naming_a_file_or_a_path_below_one_is_one_line(tiny_plan, monkeypatch, out, message):
    monkeypatch.chdir(tiny_plan)
    (tiny_plan / "plan.yaml").write_text("recipe: recipe.yaml\nseeds: [0]\nbaseline: a\narms: [{name: a}]\n")
    for flags in ([], ["--resume"], ["--table"]):
        r = runner.invoke(app, ["sweep", "plan.yaml", "--out", out, *flags])
        assert r.exit_code == 2 and r.output.strip() == message, r.output
    assert (tiny_plan / "events.csv").stat().st_size > 0


def test_grid_points_have_bounded_distinct_stable_names():
    from ltrec.sweep.plan import MAX_POINT_NAME, Arm, point_names

    long = "SELECT * FROM source WHERE " + " AND ".join(["1 = 1"] * 60)
    arm = Arm(name="q", grid={"data.query": [long, long + " AND 2 = 2", "a/b", "a_b"], "train.lr": [0.001]})
    names = point_names(arm)
    assert len(set(names)) == 4 and all(0 < len(n.encode()) <= MAX_POINT_NAME and "/" not in n for n in names)
    assert names == point_names(arm)  # the same plan names the same folders (so --resume finds them)
    short = Arm(name="p", grid={"train.lr": [0.002], "train.batch_size": [64]})
    assert point_names(short) == ["train.lr=0.002+train.batch_size=64"]  # short names stay readable


def test_a_grid_of_long_values_sweeps_with_two_jobs(tiny_plan, monkeypatch):
    """Run names stay within what a file system allows, however long a grid value is."""
    monkeypatch.chdir(tiny_plan)
    long = "SELECT * FROM source WHERE " + " AND ".join(["1 = 1"] * 60)  # longer than a file name may be
    (tiny_plan / "plan.yaml").write_text(
        "recipe: recipe.yaml\nseeds: [0]\nbaseline: a\narms:\n  - name: a\n  - name: q\n"
        f"    grid: {{data.query: [{json.dumps(long)}, {json.dumps(long + ' AND 2 = 2')}]}}\n"
    )
    r = runner.invoke(app, ["sweep", "plan.yaml", "--out", "s", "--jobs", "2"])
    assert r.exit_code == 0, r.output
    names = [p.name for p in (tiny_plan / "s" / "grid" / "q").iterdir()]
    assert len(names) == 2 and all(len(n) <= 100 for n in names), names
    assert (tiny_plan / "s" / "q-s0" / "metrics.json").is_file()


def test_a_run_folder_the_file_system_refuses_stops_the_sweep_and_its_runs(tiny_plan, monkeypatch):
    """An OS error while starting a run (here its log cannot be opened) is one line, and the run already
    started with --jobs 2 is stopped, not left training."""
    monkeypatch.chdir(tiny_plan)
    (tiny_plan / "plan.yaml").write_text(
        "recipe: recipe.yaml\nset: [train.epochs=100000, train.patience=100000]\n"
        "seeds: [0]\nbaseline: a\narms: [{name: a}, {name: b}]\n"
    )
    out = tiny_plan / "s"
    (out / "logs" / "b-s0.log").mkdir(parents=True)  # a folder where the log file should go
    (out / "sweep.json").write_text(json.dumps({"plan": str(tiny_plan / "plan.yaml"), "baseline": "a", "runs": []}))
    proc = subprocess.run(
        [sys.executable, "-m", "ltrec", "sweep", "plan.yaml", "--out", "s", "--resume", "--jobs", "2"],
        cwd=tiny_plan,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line == (
        "s/logs/b-s0.log: Is a directory; the sweep stopped its runs (continue it with: ltrec sweep "
        "plan.yaml --out s --resume)"
    ), line
    assert (out / "logs" / "a-s0.log").is_file() and processes_naming(str(out)) == []  # a-s0 started, and stopped


SWEEP_STATES = {
    "empty": b"",
    "not JSON": b"{runs: ",
    "not UTF-8": b"\xff\xfe{}",
    "a list": b"[1, 2]",
    "no baseline": b'{"plan": "p", "runs": []}',
    "runs of text": b'{"plan": "p", "baseline": "a", "runs": "all"}',
    "a run outside the sweep": b'{"plan": "p", "baseline": "a", "runs": [{"folder": "../../etc", "arm": "a", '
    b'"seed": 0, "status": "done"}]}',
    "an absolute run folder": b'{"plan": "p", "baseline": "a", "runs": [{"folder": "/tmp", "arm": "a", '
    b'"seed": 0, "status": "done"}]}',
    "a seed of text": b'{"plan": "p", "baseline": "a", "runs": [{"folder": "a-s0", "arm": "a", "seed": "x", '
    b'"status": "done"}]}',
    "chosen of numbers": b'{"plan": "p", "baseline": "a", "chosen": {"a": [1]}, "runs": []}',
}


@pytest.mark.parametrize("case", sorted(SWEEP_STATES))
def test_a_damaged_sweep_json_is_one_line_for_sweep_and_report(tiny_plan, monkeypatch, case):
    monkeypatch.chdir(tiny_plan)
    (tiny_plan / "plan.yaml").write_text("recipe: recipe.yaml\nseeds: [0]\nbaseline: a\narms: [{name: a}]\n")
    (tiny_plan / "s").mkdir()
    (tiny_plan / "s" / "sweep.json").write_bytes(SWEEP_STATES[case])
    for args in (
        ["sweep", "plan.yaml", "--out", "s", "--resume"],
        ["sweep", "plan.yaml", "--out", "s", "--table"],
        ["report", "s", "--out", "r.html"],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "Traceback" not in r.output, (args, r.output)
        [line] = r.output.strip().splitlines()
        assert line.startswith("s/sweep.json: "), (args, line)
    assert not (tiny_plan / "r.html").exists()
