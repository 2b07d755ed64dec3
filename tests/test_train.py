"""ltrec.training.loop and ltrec.runtime.checkpoint through the CLI: resume (after a crash, after early stopping,
after a real
kill), what --overwrite may delete, the run folder's files."""

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import TINY
from conftest import cli_fails as fails
from conftest import cli_ok as ok
from typer.testing import CliRunner

import ltrec.evaluation.engine
from ltrec.cli import app
from ltrec.files.runs import MARKER

runner = CliRunner()


@pytest.fixture
def recipe(tmp_path, tiny_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok(["init", "proj", "--data", tiny_csv])
    return tmp_path / "proj" / "recipe.yaml"


# bert4rec: its masks come from the saved generator; lr_decay: the rate of epoch 3 comes from the epoch alone
@pytest.mark.parametrize("kind,decay", [("sasrec", "none"), ("bert4rec", "none"), ("gru4rec", "linear")])
def test_resume_after_crash_matches_uninterrupted(recipe, tmp_path, monkeypatch, kind, decay):
    args = [
        "train",
        recipe,
        *TINY,
        "--set",
        "train.epochs=4",
        "--set",
        "train.patience=10",
        "--set",
        f"backbone.kind={kind}",
        "--set",
        f"train.lr_decay={decay}",
    ]
    ok(args + ["--out", "runs/full"])
    full = json.loads((tmp_path / "runs/full/metrics.json").read_text())

    real_run, calls = ltrec.evaluation.engine.Evaluator.run, []

    def crash_in_epoch_3(self, *a, **k):  # validation of epoch 3 never finishes: as if killed mid-epoch
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(self, *a, **k)

    monkeypatch.setattr(ltrec.evaluation.engine.Evaluator, "run", crash_in_epoch_3)
    runner.invoke(app, [str(a) for a in args + ["--out", "runs/cut"]])
    assert not (tmp_path / "runs/cut/metrics.json").exists()
    monkeypatch.setattr(ltrec.evaluation.engine.Evaluator, "run", real_run)
    fails(
        args + ["--out", "runs/cut", "--resume", "--set", "train.lr=0.5"],
        "--resume continues the same experiment, but the recipe differs in train",
    )
    out = ok(args + ["--out", "runs/cut", "--resume"])
    assert "resuming" in out and "after epoch 2" in out
    cut = json.loads((tmp_path / "runs/cut/metrics.json").read_text())
    assert cut["test"] == full["test"] and cut["epochs"] == full["epochs"] == 4


def test_lr_decay_linear_lowers_the_rate_each_epoch(recipe, tmp_path, monkeypatch):
    from ltrec.training.transfer.grad_align import AdamSteps

    real_call, rates = AdamSteps.__call__, []

    def record(self, group, on_batch):
        rates.append(self.opt.param_groups[0]["lr"])
        return real_call(self, group, on_batch)

    monkeypatch.setattr(AdamSteps, "__call__", record)
    sets = ["train.epochs=3", "train.patience=10", "train.lr=0.006", "train.lr_decay=linear"]
    ok(["train", recipe, *TINY, *[a for s in sets for a in ("--set", s)], "--out", "runs/decay"])
    assert sorted(set(rates), reverse=True) == pytest.approx([0.006, 0.004, 0.002])
    assert rates[0] == pytest.approx(0.006) and rates[-1] == pytest.approx(0.002)
    fails(
        ["train", recipe, "--set", "train.lr_decay=linear", "--set", "transfer.grad_align={k: 2}"],
        "train.lr_decay: applies to plain training",
    )


EARLY = [
    "--set",
    "train.epochs=40",
    "--set",
    "train.patience=1",
    "--set",
    "train.lr=0.05",
    "--set",
    "backbone.kind=gru4rec",
    "--set",
    "backbone.dim=8",
    "--set",
    "data.max_len=10",
]


def test_resume_of_an_early_stopped_run_says_it_is_finished(recipe, tmp_path):
    out = ok(["train", recipe, *EARLY, "--out", "runs/a"])
    assert "early stop" in out
    before = json.loads((tmp_path / "runs/a/metrics.json").read_text())
    epochs = before["epochs"]
    assert epochs < 40
    out = ok(["train", recipe, *EARLY, "--out", "runs/a", "--resume"])
    assert "training is finished (early stopping after epoch" in out and "epoch " + str(epochs + 1) + ":" not in out
    after = json.loads((tmp_path / "runs/a/metrics.json").read_text())
    assert after == before  # no epoch trained, the same test table


def test_killed_right_after_early_stop_resumes_to_the_uninterrupted_result(recipe, tmp_path):
    """A real `kill -9` as soon as the `early stop` line is printed (before the test table): --resume must
    evaluate the early-stopped run, not train on."""
    ok(["train", recipe, *EARLY, "--out", "runs/full"])
    full = json.loads((tmp_path / "runs/full/metrics.json").read_text())
    args = [sys.executable, "-m", "ltrec", "train", str(recipe), *EARLY, "--out", "runs/cut"]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )
    for line in proc.stdout:
        if line.startswith("early stop"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ok(["train", recipe, *EARLY, "--out", "runs/cut", "--resume"])
    cut = json.loads((tmp_path / "runs/cut/metrics.json").read_text())
    assert cut["test"] == full["test"] and cut["epochs"] == full["epochs"] and cut["best_epoch"] == full["best_epoch"]


def test_overwrite_never_deletes_a_folder_holding_the_recipe_or_data(recipe, tmp_path, tiny_csv):
    (tmp_path / "proj" / "notes.txt").write_text("mine")
    events = tmp_path / "proj" / "events.csv"
    events.write_bytes(tiny_csv.read_bytes())
    fails(
        ["train", recipe, *TINY, "--out", "proj", "--overwrite"],
        "proj: holds the working directory" if False else "proj: holds the",
    )
    assert (tmp_path / "proj" / "notes.txt").read_text() == "mine" and events.exists() and recipe.exists()
    fails(["train", recipe, *TINY, "--out", ".", "--overwrite"], "holds the working directory")
    fails(["train", recipe, *TINY, "--out", str(tmp_path.parent), "--overwrite"], "holds the working directory")
    assert (tmp_path / "proj" / "notes.txt").exists()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_text("meow")
    fails(["train", recipe, *TINY, "--out", other, "--overwrite"], f"not an ltrec run (no {MARKER})")
    assert (other / "cat.jpg").exists()
    (other / "recipe.yaml").write_text("name: x\n")  # a recipe file does not make a folder a run
    fails(["train", recipe, *TINY, "--out", other, "--overwrite"], "not an ltrec run")
    assert (other / "cat.jpg").exists()


def test_overwrite_replaces_a_run_and_a_run_holding_the_data_is_kept(recipe, tmp_path, tiny_csv):
    ok(["train", recipe, *TINY, "--set", "train.epochs=1", "--out", "runs/r"])
    (tmp_path / "runs/r/extra.txt").write_text("x")
    ok(["train", recipe, *TINY, "--set", "train.epochs=1", "--out", "runs/r", "--overwrite"])
    assert not (tmp_path / "runs/r/extra.txt").exists() and (tmp_path / "runs/r" / MARKER).is_file()
    inside = tmp_path / "runs/r/events.csv"  # the data moved into the run: --overwrite would delete it
    inside.write_bytes(tiny_csv.read_bytes())
    fails(
        ["train", recipe, *TINY, "--set", f"data.source={inside}", "--out", "runs/r", "--overwrite"],
        "runs/r: holds the data",
    )
    assert inside.exists()


def test_a_run_without_the_marker_is_refused_with_retrain(recipe, tmp_path):
    ok(["train", recipe, *TINY, "--set", "train.epochs=1", "--out", "runs/old"])
    (tmp_path / "runs/old" / MARKER).unlink()
    for verb in (
        ["eval", "runs/old"],
        ["export", "runs/old"],
        ["report", "runs/old"],
        ["compare", "runs/old", "runs/old"],
        ["train", recipe, "--out", "runs/old", "--resume"],
    ):
        fails(verb, "written by an older ltrec", "retrain it")


def test_pop_baseline(recipe):
    out = ok(["train", recipe, "--set", "backbone={kind: pop}"])
    assert "tail" in out and "epoch 1" not in out


def test_run_files_follow_the_umask(recipe, tmp_path):
    old = os.umask(0o022)
    try:
        ok(["train", recipe, "--set", "backbone={kind: pop}"])
    finally:
        os.umask(old)
    assert (tmp_path / "runs/my-sasrec/metrics.json").stat().st_mode & 0o777 == 0o644
