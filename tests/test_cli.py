"""The CLI end to end on a tiny synthetic log: init → validate → train → eval, errors and resume."""

import json

import pytest
from conftest import TINY
from conftest import cli_ok as ok
from typer.testing import CliRunner

import ltrec.training.loop
from ltrec.cli import app

runner = CliRunner()


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
    out = ok(
        [
            "train",
            recipe,
            *TINY,
            "--set",
            "train.epochs=1",
            "--set",
            "transfer.grad_align={k: 2}",
            "--set",
            "transfer.adversarial={state: matched}",
            "--out",
            "runs/gaat",
        ]
    )
    assert "disc_acc" in out
    assert "users_per_step: 64" in (tmp_path / "runs" / "gaat" / "recipe.yaml").read_text()
    assert "tail" in ok(["eval", "runs/gaat", "--slice", "tail"])
    ok(["export", "runs/gaat"])
    assert (tmp_path / "runs" / "gaat" / "bundle" / "model.onnx").is_file()


def test_overlapping_windows_train_more_steps_and_the_run_reloads(recipe, tmp_path, monkeypatch):
    """data.stride reaches the trainer (more, overlapping windows: more steps per epoch) and the run's saved
    recipe evaluates as trained."""
    steps = {}
    real = ltrec.training.loop.make_runner

    def counting(recipe_, model, seqs, windows, *rest, **kw):
        steps[recipe_.data.stride] = len(windows[0])
        return real(recipe_, model, seqs, windows, *rest, **kw)

    monkeypatch.setattr(ltrec.training.loop, "make_runner", counting)
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
    r = runner.invoke(
        app,
        [
            "train",
            str(recipe),
            *TINY,
            "--set",
            "head.count=10000",
            "--set",
            "transfer.adversarial={weight: 0.1}",
            "--set",
            "train.monitor.slice=all",
        ],
    )
    assert r.exit_code == 2 and "transfer.adversarial: no head user has training windows" in r.output
    assert not (tmp_path / "runs" / "my-sasrec").exists() or not (tmp_path / "runs/my-sasrec/last.pt").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "proj/recipe.yaml", "--set", "backbone.dimm=3"], "backbone.dimm: unknown key"),
        (["train", "proj/recipe.yaml", "--set", "data.columns.user=customer"], "no column 'customer'"),
        (["train", "proj/recipe.yaml", "--set", "data.source=missing.csv"], "missing.csv: no such file"),
        (["eval", "proj"], "not a run directory"),
        (["eval", "runs/nope"], "no such run directory"),
        (["export", "proj"], "not a run directory"),
    ],
)
def test_user_errors_answer_before_torch_is_imported(recipe, tmp_path, args, message):
    """A stand-in `torch` that fails on import: the error the user made must come first, without it."""
    import subprocess
    import sys

    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(fake)}
    r = subprocess.run([sys.executable, "-m", "ltrec", *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and "torch was imported" not in r.stderr, r.stderr


def _mixed_ids(n_users: int = 120) -> list[tuple[str, str, int]]:
    """Ids that look numeric for the first rows and then are not: `00123`, `u-17`, `B000ABC`, `NA`."""
    rng = __import__("numpy").random.default_rng(0)
    rows = []
    for u in range(n_users):
        user = f"{u:05d}" if u < 100 else f"u-{u}"
        for t in range(int(rng.integers(3, 12))):
            item = str(int(rng.integers(1, 40))) if u < 100 else ["B000ABC", "NA", "00123", "0123"][t % 4]
            rows.append((user, item, 1000 + t))
    return rows


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_newcomer_with_their_own_columns_needs_no_column_flags(tmp_path, monkeypatch, fmt):
    """init reads the header (customer, product, ts), train/export/predict never ask for a column, ids keep
    their text (leading zeros included), and predict writes the user column under its own name."""
    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "events.csv"
    csv.write_text("customer,product,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in _mixed_ids()))
    data = csv
    if fmt == "parquet":
        import duckdb

        data = tmp_path / "events.parquet"
        duckdb.execute(f"COPY (SELECT * FROM read_csv('{csv}', all_varchar=true)) TO '{data}' (FORMAT parquet)")
    out = ok(["init", "mine", "--data", data])
    assert "columns: {user: customer, item: product, time: ts}" in (tmp_path / "mine/recipe.yaml").read_text(), out
    ok(["train", "mine/recipe.yaml", *TINY, "--set", "train.epochs=1"])
    ok(["export", "runs/my-sasrec"])
    out = ok(["predict", "runs/my-sasrec/bundle", "--input", data, "--output", "p.csv"])
    assert "seen items excluded" in out
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "customer,rank,item_id,score,source"
    users = {line.split(",")[0] for line in lines[1:]}
    assert "00007" in users and "u-101" in users  # text ids, zeros kept


def test_init_names_every_column_it_cannot_tell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.csv").write_text("who,what,uid,userid\n1,2,3,4\n")
    r = runner.invoke(app, ["init", "mine", "--data", "e.csv"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 3, r.output
    assert "cannot tell the user column (several fit: uid, userid); pass --user-col NAME" in lines[0]
    assert (
        "cannot tell the item column (none of the usual names)" in lines[1]
        and "(columns: who, what, uid, userid)" in lines[1]
    )
    assert "cannot tell the time column" in lines[2]
    out = ok(["init", "mine", "--data", "e.csv", "--user-col", "uid", "--item-col", "what", "--time-col", "who"])
    assert "columns: {user: uid, item: what, time: who}" in (tmp_path / "mine/recipe.yaml").read_text(), out


def test_init_reads_the_header_of_ids_that_stop_looking_numeric(tmp_path, monkeypatch):
    """DuckDB types a CSV column from a sample of rows: user ids that look numeric for the first 60,000 rows and
    then do not must not stop init, which needs the header only (nor validate, which reads ids as text)."""
    monkeypatch.chdir(tmp_path)
    rows = [f"{n % 997 if n < 60_000 else f'u-{n}'},{n % 50},{1000 + n}" for n in range(60_100)]
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    out = ok(["init", "mine", "--data", "events.csv"])
    assert "columns: {user: user_id, item: item_id, time: timestamp}" in (tmp_path / "mine/recipe.yaml").read_text(), (
        out
    )
    assert "mine/recipe.yaml: ok" in ok(["validate", "mine/recipe.yaml"])
