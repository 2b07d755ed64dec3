"""Crash safety: `kill -9` at random points never leaves a corrupt or half-written file, and --resume (or
--overwrite, when no checkpoint was written yet) then ends with the metrics of an uninterrupted run.
A full disk and a run directory that cannot be written are clear errors that keep the last good checkpoint.

The number of crash points tried is printed (pytest -s) and listed in docs/reliability.md.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_long_tailed
from typer.testing import CliRunner

import ltrec.files.runs
import ltrec.files.safe
from ltrec.cli import app
from ltrec.files.lock import LOCK
from ltrec.recipe import load_recipe
from ltrec.runtime.checkpoint import load_torch

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4


def whole(run: Path) -> list[str]:
    """Parse every file of a run directory as what it claims to be; returns the temp files left beside them
    (a killed atomic_write's, never read by anything)."""
    temps = []
    for path in sorted(run.iterdir()):
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            temps.append(path.name)
        elif path.name == LOCK:  # the killed trainer's lock file: the kernel released the lock itself
            pass
        elif path.suffix == ".pt":
            assert "model" in load_torch(path), path
        elif path.name == "recipe.yaml":
            load_recipe(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            epochs = [json.loads(line)["epoch"] for line in path.read_text().splitlines()]  # no torn line
            assert epochs == list(range(1, len(epochs) + 1)), epochs
        elif path.suffix == ".csv":
            rows = list(csv.reader(path.open()))
            assert rows and all(len(r) == len(rows[0]) for r in rows), path
        elif path.suffix == ".npy":
            np.load(path, allow_pickle=False)
        else:
            raise AssertionError(f"unexpected file {path}")
    return temps


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crash")
    events = write_long_tailed(folder / "events.csv")
    (folder / "recipe.yaml").write_text(
        f"name: crash\ndata: {{source: {events}, max_len: 20}}\nbackbone: {{kind: gru4rec, dim: 16}}\n"
        f"train: {{epochs: {EPOCHS}, batch_size: 32, patience: 100, threads: 1}}\n"
    )
    return folder


def start(project: Path, out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ltrec", "train", str(project / "recipe.yaml"), "--out", str(out), *flags],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def epochs_done(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def writing(run: Path) -> bool:
    return any(run.glob(".*.tmp"))  # atomic_write's temp file: a checkpoint or metrics file half written


# When to kill, after the process got going (loaded the data, or resumed): (condition, random extra delay, s)
PLANS = {
    "mid-write": (lambda run, before: writing(run), 0.0),
    "mid-epoch": (lambda run, before: epochs_done(run) > before, 0.05),  # an epoch takes ~0.1 s
    "in-finish": (lambda run, before: epochs_done(run) == EPOCHS, 0.3),
    "at-start": (lambda run, before: True, 0.05),
}


def kill_and_resume(project: Path, run: Path, plans: list[str], seed: int) -> list[str]:
    """Kill `ltrec train` once per plan, check every file, resume (or restart) each time; then let it finish."""
    rng, where = random.Random(seed), []
    for plan in plans + [None]:
        resume = (run / "last.pt").exists()
        before, t0 = epochs_done(run), time.time()
        proc = start(project, run, "--resume" if resume else "--overwrite")
        if plan is None:
            assert proc.wait(timeout=300) == 0, proc.stderr.read()
            break
        condition, jitter = PLANS[plan]

        def due() -> bool:
            data = run / "data.json"  # written once the data is loaded, just before the first epoch
            going = data.exists() and data.stat().st_mtime >= t0 or resume and epochs_done(run) > before
            return going and condition(run, before)

        while proc.poll() is None and not due():
            time.sleep(0.002)
        time.sleep(rng.uniform(0, jitter))
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        temps = whole(run)  # every file whole after the kill
        where.append(
            f"{plan}: {'finished before the kill' if finished else 'killed'} with {epochs_done(run)} "
            f"epochs done{' (temp files: ' + ', '.join(temps) + ')' if temps else ''}"
        )
    assert whole(run) == []  # resuming cleaned the temp files of the killed runs
    return where


def same_results(a: Path, b: Path) -> None:
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert ma["test"] == mb["test"] and ma["valid"] == mb["valid"] and ma["epochs"] == mb["epochs"] == EPOCHS
    la, lb = (
        [{k: v for k, v in rec.items() if k != "seconds"} for rec in ltrec.files.runs.read_epochs(r / "metrics.jsonl")]
        for r in (a, b)
    )
    assert la == lb


@pytest.fixture(scope="module")
def reference(project):
    """The uninterrupted run, in this process (same code, one thread: the same numbers as a subprocess)."""
    import torch

    threads = torch.get_num_threads()
    r = runner.invoke(app, ["train", str(project / "recipe.yaml"), "--out", str(project / "reference")])
    torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    return project / "reference"


def run_kill_test(project: Path, reference: Path, name: str, plans: list[str], seed: int) -> None:
    where = kill_and_resume(project, project / name, plans, seed)
    same_results(reference, project / name)
    print(f"\n{len(plans)} kill -9 points of ltrec train: " + "; ".join(where))


def test_kill_9_during_training_then_resume(project, reference):
    run_kill_test(project, reference, "fast", ["mid-write", "mid-epoch"], seed=0)


@pytest.mark.slow
def test_kill_9_many_times(project, reference):
    run_kill_test(
        project,
        reference,
        "many",
        ["at-start", "mid-write", "mid-epoch", "mid-write", "in-finish"] * 2 + ["mid-epoch", "mid-write"],
        seed=1,
    )


WRITER = """
import sys
from pathlib import Path
from ltrec.files.safe import atomic_write
from ltrec.files.runs import append_epoch
folder = Path(sys.argv[1])
log = folder / "log.jsonl"
i = len(log.read_text().splitlines()) if log.exists() else 0
while True:
    i += 1
    atomic_write(folder / "blob.bin", bytes([i % 256]) * 3_000_000)
    append_epoch(log, {"i": i, "pad": "x" * 2000})
"""


def test_kill_9_during_atomic_writes(tmp_path):
    """The primitive every run file goes through, killed 12 times mid-stream: the file is always one whole
    version, the log always whole lines in order."""
    rng, kills, path = random.Random(2), 12, tmp_path / "log.jsonl"
    log: list[int] = []
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT)
        deadline = time.time() + 60  # a loaded machine may take seconds to start Python: wait for a write
        while time.time() < deadline and len(path.read_bytes().splitlines() if path.exists() else []) <= len(log):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))  # then kill it at a random point of its stream of writes
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (tmp_path / "blob.bin").exists():
            blob = np.fromfile(tmp_path / "blob.bin", np.uint8)
            assert len(blob) == 3_000_000 and (blob == blob[0]).all()
        log = [json.loads(line)["i"] for line in path.read_text().splitlines()]
        assert log == list(range(1, len(log) + 1))
    assert len(log) > kills  # it did write between kills
    ltrec.files.safe.remove_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "log.jsonl"]


# --- a full disk, a folder that cannot be written ------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_long_tailed(tmp_path / "events.csv", users=60)
    (tmp_path / "r.yaml").write_text(
        "name: t\ndata: {source: events.csv, max_len: 10}\n"
        "backbone: {kind: gru4rec, dim: 8}\ntrain: {epochs: 3, patience: 10}\n"
    )
    return tmp_path


def test_disk_full_keeps_the_last_good_checkpoint(tiny, monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is written")
    real_fsync, written = os.fsync, []

    def fsync(fd):  # the disk fills up when epoch 2's last.pt is written
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".last.pt." in name:
            written.append(name)
            if len(written) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    r = runner.invoke(app, ["train", "r.yaml"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.strip().endswith("runs/t/last.pt: cannot write (No space left on device)")
    run = tiny / "runs" / "t"
    assert whole(run) == [] and load_torch(run / "last.pt")["state"]["epoch"] == 1  # no temp file; epoch 1 intact
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: resume
    r = runner.invoke(app, ["train", "r.yaml", "--resume"])
    assert r.exit_code == 0 and "resuming runs/t after epoch 1" in r.output, r.output
    assert [rec["epoch"] for rec in ltrec.files.runs.read_epochs(run / "metrics.jsonl")] == [1, 2, 3]


def test_permission_denied_is_a_clear_error(tiny, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(ltrec.files.safe.tempfile, "mkstemp", denied)
    r = runner.invoke(app, ["train", "r.yaml"])
    assert r.exit_code == 2 and r.output.strip() == "runs/t/.ltrec-run.json: cannot write here (Permission denied)"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder(tiny):
    (tiny / "runs").mkdir()
    (tiny / "runs").chmod(0o555)
    try:
        r = runner.invoke(app, ["train", "r.yaml"])
    finally:
        (tiny / "runs").chmod(0o755)
    assert r.exit_code == 2 and "runs/t: cannot prepare the run directory (Permission denied)" in r.output


def test_out_is_a_file_or_under_one(tiny):
    for out, message in [
        ("events.csv", "events.csv: exists and is not a directory; choose another --out"),
        ("events.csv/run", "events.csv/run: cannot prepare the run directory (Not a directory)"),
    ]:
        r = runner.invoke(app, ["train", "r.yaml", "--out", out, "--overwrite"])
        assert r.exit_code == 2 and r.output.strip() == message, r.output
    assert (tiny / "events.csv").stat().st_size > 0


def test_overwrite_only_ever_deletes_a_run(tiny):
    """--overwrite removes the folder: a folder that is not a run (no recipe.yaml) is refused, untouched."""
    mine = tiny / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    r = runner.invoke(app, ["train", "r.yaml", "--out", "mine", "--overwrite"])
    assert (
        r.exit_code == 2
        and "mine: not an ltrec run (no .ltrec-run.json), so --overwrite will not delete it" in r.output
    )
    assert (mine / "thesis.tex").read_text() == "years of work"


@pytest.mark.slow
def test_kill_9_during_export(tmp_path, monkeypatch):
    """Re-exporting over a bundle, killed at random moments: the bundle is always the old one or the new one,
    whole (predict loads it), never a mix."""
    from ltrec.deploy.bundle import load_bundle

    monkeypatch.chdir(tmp_path)
    write_long_tailed(tmp_path / "events.csv", users=60)
    (tmp_path / "r.yaml").write_text(
        "name: t\ndata: {source: events.csv}\nbackbone: {kind: gru4rec, dim: 8}\ntrain: {epochs: 1}\n"
    )
    assert runner.invoke(app, ["train", "r.yaml"]).exit_code == 0

    def export(k: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "ltrec", "export", "runs/t", "--out", "b", "--k", str(k)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    t0 = time.perf_counter()
    assert export(3).wait() == 0
    seconds, rng, ks = time.perf_counter() - t0, random.Random(3), []
    for kill in range(6):
        proc = export(4 + kill)
        time.sleep(rng.uniform(0.3, 1.5) * seconds)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ks.append(load_bundle(tmp_path / "b").meta.k)  # whole: both files, and they match
        # either the last bundle that was complete or this export's: never anything else
        assert ks[-1] in {3, *range(4, 5 + kill)}
    print(f"\n6 kill -9 points of ltrec export: the bundle had K = {ks}")
