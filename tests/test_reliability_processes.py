"""Processes and run folders: a run dies with its sweep however the sweep dies (`kill -9` included), one run
folder is trained by one process at a time (a second trainer or sweep is refused with the holder's pid), and
a lock left by a killed process never blocks. Real `kill -9` of real `ltrec` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import alive, processes_naming, write_long_tailed
from typer.testing import CliRunner

from ltrec.cli import app
from ltrec.files.lock import LOCK, holder, locked
from ltrec.files.runs import read_epochs
from ltrec.runtime.checkpoint import load_torch

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find processes")

runner = CliRunner()
LONG = "train: {epochs: 100000, patience: 100000, batch_size: 32, threads: 1}"  # trains until it is stopped
PLAN = "recipe: long.yaml\nseeds: [0]\nbaseline: a\narms:\n  - name: a\n  - name: b\n    set: [train.lr=0.002]\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processes")
    events = write_long_tailed(folder / "events.csv", users=60)
    base = f"name: t\ndata: {{source: {events}, max_len: 10}}\nbackbone: {{kind: gru4rec, dim: 8}}\n"
    (folder / "long.yaml").write_text(base + LONG + "\n")
    (folder / "short.yaml").write_text(base + "train: {epochs: 1, threads: 1}\n")
    (folder / "plan.yaml").write_text(PLAN)
    return folder


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ended_within(pids: list[int], seconds: float) -> list[int]:
    """The pids still running after `seconds` (killed then, so a failing test leaves nothing training)."""
    deadline = time.time() + seconds
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    left = [p for p in pids if alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def train(project: Path, recipe: str, out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ltrec", "train", str(recipe), "--out", str(out), *flags],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def sweep(project: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """A sweep run to its end; one that should have been refused but trains is killed (its runs with it)."""
    return subprocess.run(
        [sys.executable, "-m", "ltrec", "sweep", "plan.yaml", "--out", str(out), *flags],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )


def checkpointed(run: Path) -> bool:
    return (run / "last.pt").is_file() and (run / "metrics.jsonl").is_file()


def test_a_sweep_killed_with_sigkill_takes_its_runs_with_it(project):
    """kill -9 gives the sweep no chance to stop its runs: each run ends by itself once its parent is gone.
    While the sweep runs, a second sweep on its folder is refused; once it is killed, nothing blocks."""
    out = project / "killed"
    first = subprocess.Popen(
        [sys.executable, "-m", "ltrec", "sweep", "plan.yaml", "--out", str(out), "--jobs", "2"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: checkpointed(out / "a-s0") and checkpointed(out / "b-s0") or first.poll() is not None,
            120,
            "both runs to train",
        )
        runs = [pid for pid in processes_naming(str(out)) if pid != first.pid]
        assert first.poll() is None and len(runs) == 2, (runs, first.poll())
        again = sweep(project, out, "--resume")
        assert again.returncode == 2 and again.stderr.strip() == (
            f"{out}: another ltrec sweep (pid {first.pid}) is using this sweep folder; wait for it or stop it"
        ), again.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert ended_within(runs, 5) == []
    for folder in (out, out / "a-s0", out / "b-s0"):
        assert holder(folder) is None  # the killed processes' lock files are left, and block nobody
    assert int((out / LOCK).read_text()) == first.pid
    epochs = read_epochs(out / "a-s0" / "metrics.jsonl")  # one trainer wrote it: whole, numbered in order
    assert epochs and [r["epoch"] for r in epochs] == list(range(1, len(epochs) + 1))


def test_a_sweep_will_not_start_a_run_another_process_trains(project):
    """After a killed sweep, someone resumes one of its runs by hand: `sweep --resume` names that trainer and
    starts nothing, and the trainer goes on."""
    out = project / "shared"
    first = subprocess.Popen(
        [sys.executable, "-m", "ltrec", "sweep", "plan.yaml", "--out", str(out)],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: checkpointed(out / "a-s0") or first.poll() is not None, 120, "the first run to train")
        runs = [pid for pid in processes_naming(str(out)) if pid != first.pid]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert ended_within(runs, 5) == []
    run = out / "a-s0"
    by_hand = train(project, run / "recipe.yaml", run, "--resume")
    refusal = f"{run}: another ltrec train (pid {by_hand.pid}) is using this run folder; wait for it or stop it"
    try:
        wait_for(lambda: str(holder(run)) == refusal or by_hand.poll() is not None, 60, "the trainer to start")
        r = sweep(project, out, "--resume")
        assert r.returncode == 2 and r.stderr.strip() == refusal, r.stderr
        assert by_hand.poll() is None and not (out / "b-s0").exists()
    finally:
        by_hand.kill()
        by_hand.wait()


def test_a_second_trainer_is_refused_and_a_killed_trainers_lock_blocks_nobody(project):
    out = project / "busy"
    first = train(project, "long.yaml", out)
    try:
        wait_for(lambda: checkpointed(out) or first.poll() is not None, 60, "the first trainer's checkpoint")
        for flags in ([], ["--overwrite"], ["--resume"]):
            r = runner.invoke(app, ["train", str(project / "long.yaml"), "--out", str(out), *flags])
            assert r.exit_code == 2 and r.output.strip() == (
                f"{out}: another ltrec train (pid {first.pid}) is using this run folder; wait for it or stop it"
            ), (flags, r.output)
        assert first.poll() is None  # untouched by the refused ones
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / LOCK).exists() and holder(out) is None
    done = load_torch(out / "last.pt")["state"]["epoch"]
    r = runner.invoke(
        app, ["train", str(project / "long.yaml"), "--out", str(out), "--resume", "--set", f"train.epochs={done + 1}"]
    )
    assert r.exit_code == 0 and f"resuming {out} after epoch {done}" in r.output, r.output
    assert [e["epoch"] for e in read_epochs(out / "metrics.jsonl")] == list(range(1, done + 2))
    assert not (out / LOCK).exists()  # a trainer that ends removes its lock file
    with locked(out):  # eval rewrites the run's users_*.csv and blends: not under a live trainer
        r = runner.invoke(app, ["eval", str(out)])
        assert r.exit_code == 2 and "is using this run folder; wait for it or stop it" in r.output, r.output
    r = runner.invoke(app, ["eval", str(out)])
    assert r.exit_code == 0 and not (out / LOCK).exists(), r.output


def test_the_lock_file_is_not_a_stray_file(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = str(project / "short.yaml")
    stale = f"{2**22 + 17}\n"  # a killed trainer's lock file: its pid, no lock held
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / LOCK).write_text(stale)
    r = runner.invoke(app, ["train", recipe, "--out", str(fresh)])  # a folder holding only that is empty
    assert r.exit_code == 0, r.output
    (fresh / LOCK).write_text(stale)
    r = runner.invoke(app, ["train", recipe, "--out", str(fresh), "--overwrite"])
    assert r.exit_code == 0 and not (fresh / LOCK).exists(), r.output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    r = runner.invoke(app, ["train", recipe, "--out", str(mine), "--overwrite"])
    assert r.exit_code == 2 and "not an ltrec run" in r.output, r.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]  # refused, and no lock file left in it


@pytest.mark.parametrize("use_prctl", [True, False], ids=["parent-death-signal", "watchdog"])
def test_a_bound_process_ends_when_its_parent_is_killed(use_prctl):
    """Both ways a run follows its sweep: the kernel's parent-death signal (Linux), and the watchdog thread
    used where that does not exist."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import os, subprocess, sys, time
code = ("from ltrec.runtime.lifeline import bind; bind(use_prctl={use_prctl}); print('bound', flush=True); "
        "import time; time.sleep(120)")
child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={{**os.environ, "LTREC_PARENT_PID": str(os.getpid())}})
print(child.pid, child.stdout.readline().strip(), flush=True)
time.sleep(120)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    pid, state = parent.stdout.readline().split()
    assert state == "bound" and alive(int(pid))
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert ended_within([int(pid)], 5) == []


def test_a_run_whose_sweep_ended_before_it_was_bound_does_not_start(project, tmp_path):
    """The parent may die while the run's Python starts, before the parent-death signal is asked for: the run
    sees that its parent is not the one named, and ends without touching the run folder."""
    env = {**os.environ, "LTREC_PARENT_PID": str(os.getppid())}  # alive, but not the parent of what starts
    r = subprocess.run(
        [sys.executable, "-m", "ltrec", "train", "long.yaml", "--out", str(tmp_path / "r")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and f"(pid {os.getppid()}) has ended; stopping" in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()
