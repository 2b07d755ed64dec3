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
from typer.testing import CliRunner

from conftest import write_long_tailed
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
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(("-s0", "-s1"))) == \
        ["cvar-s0", "cvar-s1", "plain-s0", "plain-s1"]
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
    (project / "demo" / "broken.yaml").write_text(PLAN.replace("seeds: [0, 1]", "seeds: [0]").replace(
        '    grid: {transfer.robust.mix: [0.0, 0.5]}\n', "") + '  - name: huge\n    set: ["eval.negatives=100000"]\n'
        '  - name: sampled\n    set: [eval.mode=sampled, eval.negatives=100000]\n')
    import os

    os.chdir(project)
    r = runner.invoke(app, ["sweep", "demo/broken.yaml", "--out", str(tmp_path / "s")])
    assert r.exit_code == 1, r.output
    assert "failed: sampled-s0" in r.output and "log: " in r.output
    assert (tmp_path / "s" / "plain-s0" / "metrics.json").exists() and (tmp_path / "s" / "cvar-s0" / "metrics.json").exists()
    assert "failed: sampled-s0" in (tmp_path / "s" / "table.md").read_text()


def test_an_arm_at_the_baseline_trains_at_its_chosen_setting(project, tmp_path):
    (project / "demo" / "at.yaml").write_text(PLAN.replace("seeds: [0, 1]", "seeds: [0]").replace(
        "  - name: plain\n", "  - name: plain\n    grid: {train.lr: [1.0e-9, 5.0e-3]}\n").replace(
        "    grid: {transfer.robust.mix: [0.0, 0.5]}\n", "    at_baseline: true\n"))
    import os

    os.chdir(project)
    r = runner.invoke(app, ["sweep", "demo/at.yaml", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "s" / "table.json").read_text())
    [chosen] = result["chosen"]["plain"]
    import yaml

    recipe = yaml.safe_load((tmp_path / "s" / "cvar-s0" / "recipe.yaml").read_text())
    assert recipe["train"]["lr"] == float(chosen.removeprefix("train.lr=")) and recipe["transfer"]["robust"]["kind"] == "cvar"
    assert next(a for a in result["arms"] if a["arm"] == "cvar")["seeds"] == [0]
    assert "cvar: at plain's choice" in (tmp_path / "s" / "table.md").read_text()


def _processes_naming(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text in (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(pid))
        except OSError:  # ended meanwhile
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_a_killed_sweep_stops_the_runs_it_started(project, tmp_path):
    """Runs are process groups of their own; SIGTERM to the sweep stops them as Ctrl-C does (none trains on,
    orphaned) and says how to continue."""
    (project / "demo" / "long.yaml").write_text(PLAN.replace("train.epochs=1", "train.epochs=200").replace(
        "seeds: [0, 1]", "seeds: [0]"))
    out = tmp_path / "s"
    sweep = subprocess.Popen([sys.executable, "-m", "ltrec", "sweep", "demo/long.yaml", "--out", str(out), "--jobs", "1"],
                             cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while not list(out.glob("*/metrics.jsonl")) and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.5)
    runs = [pid for pid in _processes_naming(str(out)) if pid != sweep.pid]
    assert runs, "no training run started"
    sweep.send_signal(signal.SIGTERM)
    output = sweep.communicate(timeout=120)[0]
    left = [pid for pid in runs if pid in _processes_naming(str(out))]
    for pid in left:  # a failing check must not leave them training
        os.kill(pid, signal.SIGKILL)
    assert sweep.returncode == 2 and "--resume" in output, output
    assert not left


@pytest.mark.parametrize("plan, message", [
    ("recipe: recipe.yaml\nbaseline: a\narms: [{name: a}, {name: b, at_baseline: true}]\n",
     "arms: b: at_baseline needs a baseline with a grid to take the chosen combination from (baseline a has none)"),
    ("recipe: recipe.yaml\nbaseline: x\narms: [{name: plain}]\n", "plan.yaml: baseline: 'x' is not an arm (arms: plain)"),
    ("recipe: recipe.yaml\nbaseline: a\narms: [{name: a}, {name: a}]\n", "plan.yaml: arms: the name a is given twice"),
    ("recipe: recipe.yaml\nbaseline: a\narms: [{name: a, sett: [x=1]}]\n", "plan.yaml: arms.0.sett: unknown key (did you mean 'set'?)"),
    ("recipe: recipe.yaml\nbaseline: a\narms: [{name: a, set: [train.epochz=1]}]\n",
     "plan.yaml: arms.0 (a): train.epochz: unknown key (did you mean 'epochs'?)"),
    ("recipe: recipe.yaml\nbaseline: a\nseeds: [-1]\narms: [{name: a}]\n", "plan.yaml: seeds.0: Input should be greater than or equal to 0"),
    ("recipe: nope.yaml\nbaseline: a\narms: [{name: a}]\n", "nope.yaml: no such recipe file"),
    ("recipe: recipe.yaml\nbaseline: a\narms: [{name: a, grid: {train.lr: []}}]\n", "grid: train.lr: give at least one value"),
    ("baseline: a\narms: []\n", "plan.yaml: recipe: required key is missing"),
])
def test_bad_plans_are_one_line_errors(project, plan, message):
    (project / "demo" / "bad.yaml").write_text(plan)
    r = runner.invoke(app, ["sweep", str(project / "demo" / "bad.yaml"), "--out", str(project / "unused")])
    assert r.exit_code == 2 and message.replace("plan.yaml", "bad.yaml") in r.output, r.output
    assert "Traceback" not in r.output and not (project / "unused").exists()


def test_the_starter_plan_validates(project):
    from ltrec.sweep import load_plan

    plan, base = load_plan(project / "demo" / "sweep.yaml")
    assert plan.baseline == "plain"
    wanted = {"plain", "pop-blend", "transition-blend", "cvar", "group-dro", "balanced", "user-branch"}
    assert {a.name for a in plan.arms} >= wanted


@pytest.mark.parametrize("plan", sorted((Path(__file__).resolve().parents[1] / "bench" / "plans").rglob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_bench_plan_is_a_valid_sweep(plan):
    from ltrec.sweep import load_plan

    load_plan(plan)  # every arm × grid combination's recipe validates
