"""The CLI end to end on a tiny synthetic log: init → validate → train → eval, errors and resume."""

import json

import pytest
from typer.testing import CliRunner

import ltrec.train
from ltrec.cli import app

runner = CliRunner()
TINY = ["--set", "backbone.dim=16", "--set", "train.epochs=3", "--set", "data.max_len=20",
        "--set", "train.batch_size=64"]


def ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def recipe(tmp_path, tiny_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = ok(["init", "proj", "--data", tiny_csv])
    assert "wrote proj/recipe.yaml" in out
    return tmp_path / "proj" / "recipe.yaml"


def test_init_train_eval(recipe, tmp_path):
    assert "ok" in ok(["validate", recipe])
    out = ok(["train", recipe, *TINY])
    assert "epoch 1:" in out and "slice" in out and "tail" in out and "full ranking over all items" in out
    run = tmp_path / "runs" / "my-sasrec"
    for name in ("recipe.yaml", "best.pt", "last.pt", "metrics.jsonl", "metrics.json", "users_test.csv"):
        assert (run / name).exists(), name
    summary = json.loads((run / "metrics.json").read_text())
    out = ok(["eval", run, "--slice", "tail", "--json"])
    tail = json.loads(out)["slices"]["tail"]
    assert tail == pytest.approx(summary["test"]["tail"])  # eval reproduces train's test table
    assert list(json.loads(out)["slices"]) == ["tail"]
    header = (run / "users_test.csv").read_text().splitlines()[0]
    assert header.startswith("user_id,slice,train_events,hr@5,ndcg@5")


def test_transfer_run_evaluates_and_exports_from_its_saved_recipe(recipe, tmp_path):
    """A run with both components (GA's default windows sampling, matched adversary states) reloads its
    resolved recipe.yaml for eval and export: the saved file holds users_per_step, which windows ignores."""
    out = ok(["train", recipe, *TINY, "--set", "train.epochs=1", "--set", "transfer.grad_align={k: 2}",
              "--set", "transfer.adversarial={state: matched}", "--out", "runs/gaat"])
    assert "disc_acc" in out
    assert "users_per_step: 64" in (tmp_path / "runs" / "gaat" / "recipe.yaml").read_text()
    assert "tail" in ok(["eval", "runs/gaat", "--slice", "tail"])
    ok(["export", "runs/gaat", "--onnx"])
    assert (tmp_path / "runs" / "gaat" / "bundle" / "model.onnx").is_file()


def test_overlapping_windows_train_more_steps_and_the_run_reloads(recipe, tmp_path, monkeypatch):
    """data.stride reaches the trainer (more, overlapping windows: more steps per epoch) and the run's saved
    recipe evaluates as trained."""
    steps = {}
    real = ltrec.train.make_runner

    def counting(recipe_, model, seqs, windows, *rest, **kw):
        steps[recipe_.data.stride] = len(windows[0])
        return real(recipe_, model, seqs, windows, *rest, **kw)

    monkeypatch.setattr(ltrec.train, "make_runner", counting)
    ok(["train", recipe, *TINY, "--set", "train.epochs=1", "--out", "runs/plain"])
    ok(["train", recipe, *TINY, "--set", "train.epochs=1", "--set", "data.stride=5", "--out", "runs/stride"])
    assert steps[5] > steps[None] > 0
    assert "stride: 5" in (tmp_path / "runs" / "stride" / "recipe.yaml").read_text()
    assert "tail" in ok(["eval", "runs/stride", "--slice", "tail"])


def test_user_errors_exit_2(recipe, tmp_path):
    r = runner.invoke(app, ["validate", str(recipe), "--set", "backbone.dimm=3"])
    assert r.exit_code == 2 and "recipe.yaml: backbone.dimm: unknown key (did you mean 'dim'?)" in r.output
    r = runner.invoke(app, ["init", "proj", "--data", "x.csv"])
    assert r.exit_code == 2 and "already exists; pass --force" in r.output
    ok(["train", recipe, *TINY, "--set", "train.epochs=1"])
    r = runner.invoke(app, ["train", str(recipe)])
    assert r.exit_code == 2 and "already exists; pass --overwrite" in r.output
    r = runner.invoke(app, ["eval", "runs/my-sasrec", "--slice", "middle"])
    assert r.exit_code == 2 and "--slice middle: expected one of all, head, tail, cold" in r.output
    r = runner.invoke(app, ["eval", "runs/nope"])
    assert r.exit_code == 2 and "runs/nope: no such run directory" in r.output
    r = runner.invoke(app, ["train", str(recipe), "--set", "data.columns.time=when", "--overwrite"])
    assert r.exit_code == 2 and "data.columns.time:" in r.output and "no column 'when'" in r.output


def test_eval_ks_may_change_without_touching_the_monitored_metric(recipe, tmp_path):
    ok(["train", recipe, *TINY, "--set", "train.epochs=1"])
    out = ok(["eval", "runs/my-sasrec", "--set", "eval.ks=[5]"])  # the run monitored ndcg@10 while training
    assert "hr@5" in out and "hr@10" not in out
    out = ok(["eval", "runs/my-sasrec", "--slice", "cold"])
    assert "no cold users in this run" in out and "split.cold_users" in out


def test_adversarial_training_without_head_users_is_refused(recipe, tmp_path):
    r = runner.invoke(app, ["train", str(recipe), *TINY, "--set", "head.count=10000",
                            "--set", "transfer.adversarial={weight: 0.1}", "--set", "train.monitor.slice=all"])
    assert r.exit_code == 2 and "transfer.adversarial: no head user has training windows" in r.output
    assert not (tmp_path / "runs" / "my-sasrec").exists() or not (tmp_path / "runs/my-sasrec/last.pt").exists()
