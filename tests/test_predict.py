"""`ltrec predict`: agrees with `ltrec eval`, unknown items, fallback, long histories, bad inputs, no torch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_export import MAX_LEN, ok, train_run, write_events
from typer.testing import CliRunner

import ltrec.deploy.predict as predict_module
from ltrec.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny SASRec run and its bundle (K = 10); eval.mask_seen is the recipe default (true)."""
    folder = tmp_path_factory.mktemp("predict")
    events = write_events(folder / "events.csv")
    run = train_run(folder, events, "sasrec")
    ok(["export", run, "--out", folder / "bundle", "--k", 10])
    return {
        "run": run,
        "bundle": folder / "bundle",
        "events": events,
        "meta": json.loads((folder / "bundle" / "bundle.json").read_text()),
    }


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def predict(setup, events: Path, out: Path, *extra, code: int = 0):
    r = runner.invoke(
        app, ["predict", str(setup["bundle"]), "--input", str(events), "--output", str(out), *map(str, extra)]
    )
    assert r.exit_code == code, r.output
    return r.output


def write_csv(path: Path, rows: list[tuple]) -> Path:
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return path


def by_user(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["user_id"], []).append(r)
    return out


def test_predict_agrees_with_eval(setup, tmp_path):
    """Exactly eval's test inputs (each history minus its last event) → the same NDCG@10 as `ltrec eval`."""
    lines = setup["events"].read_text().splitlines()
    users = [line.split(",")[0] for line in lines[1:]]
    last = {u: j for j, u in enumerate(users)}  # every user has ≥ 3 events, so all are evaluated
    inputs = [line for j, line in enumerate(lines[1:]) if last[users[j]] != j]
    (tmp_path / "hist.csv").write_text("\n".join([lines[0], *inputs]) + "\n")
    targets = {u: lines[1 + j].split(",")[1] for u, j in last.items()}

    # eval masks the history (mask_seen: true), so predict excludes it; every history fits in max_len
    out = predict(setup, tmp_path / "hist.csv", tmp_path / "pred.csv", "--exclude-seen")
    assert "200 users, 2,000 rows written" in out
    rows = read_rows(tmp_path / "pred.csv")
    assert list(rows[0]) == ["user_id", "rank", "item_id", "score", "source"]
    ndcg = {u: 0.0 for u in targets}
    for r in rows:
        if r["item_id"] == targets[r["user_id"]]:
            ndcg[r["user_id"]] = 1.0 / np.log2(int(r["rank"]) + 1)
    result = json.loads(ok(["eval", setup["run"], "--json", "--ks", "10"]))
    assert result["slices"]["all"]["ndcg@10"] > 0.01
    assert abs(np.mean(list(ndcg.values())) - result["slices"]["all"]["ndcg@10"]) < 1e-6


def test_many_chunks_and_batches_keep_user_order(setup, tmp_path, monkeypatch):
    """Chunks of 37 users in batches of 7 (batches sorted by history length inside each chunk): the rows of one
    batch, in user order."""
    predict(setup, setup["events"], tmp_path / "one.csv")
    monkeypatch.setattr(predict_module, "CHUNK", 37)
    predict(setup, setup["events"], tmp_path / "many.csv", "--batch-size", 7)
    one, many = read_rows(tmp_path / "one.csv"), read_rows(tmp_path / "many.csv")
    assert len(one) == 2000 and [r["user_id"] for r in one] == sorted(r["user_id"] for r in one)
    key = ("user_id", "rank", "item_id", "source")
    assert [[r[c] for c in key] for r in many] == [[r[c] for c in key] for r in one]
    np.testing.assert_allclose([float(r["score"]) for r in many], [float(r["score"]) for r in one], rtol=1e-5)


def test_unknown_items_and_fallback(setup, tmp_path):
    events = write_csv(
        tmp_path / "e.csv",
        [("a", "i3", 1), ("a", "nope1", 2), ("a", "i4", 3), ("a", "nope2", 4), ("b", "nope1", 1), ("b", "nope3", 2)],
    )
    out = predict(setup, events, tmp_path / "p.csv", "--k", 5)
    assert "skipped 4 events whose item the model does not know (3 distinct items)" in out
    assert "2 users, 10 rows written" in out and "4 events with unknown items skipped; 1 user with no known item" in out
    got = by_user(read_rows(tmp_path / "p.csv"))
    pop = np.asarray(setup["meta"]["popularity"])
    popular = [setup["meta"]["vocab"][i] for i in np.argsort(-pop, kind="stable")[:5]]
    assert [r["item_id"] for r in got["b"]] == popular and all(r["source"] == "popularity" for r in got["b"])
    share = np.sort(pop)[::-1][:5] / pop.sum()  # the fallback's score: the item's share of training events
    np.testing.assert_allclose([float(r["score"]) for r in got["b"]], share, rtol=1e-5)
    assert [r["rank"] for r in got["b"]] == ["1", "2", "3", "4", "5"]
    # skipped means the same as absent
    predict(setup, write_csv(tmp_path / "k.csv", [("a", "i3", 1), ("a", "i4", 3)]), tmp_path / "q.csv", "--k", 5)
    assert read_rows(tmp_path / "q.csv") == got["a"] and got["a"][0]["source"] == "model"


def test_long_history_and_exclude_seen(setup, tmp_path):
    rng = np.random.default_rng(1)
    items = [f"i{j}" for j in rng.integers(1, 61, 10_000)]  # i61..i100 never seen by this user
    long_ = write_csv(tmp_path / "long.csv", [("z", it, t) for t, it in enumerate(items)])
    short = write_csv(tmp_path / "short.csv", [("z", it, t) for t, it in enumerate(items) if t >= 10_000 - MAX_LEN])
    predict(setup, long_, tmp_path / "a.csv", "--include-seen")
    predict(setup, short, tmp_path / "b.csv", "--include-seen")
    assert read_rows(tmp_path / "a.csv") == read_rows(tmp_path / "b.csv")  # only the last max_len events count
    # excluding seen items (the default, as eval masked them) drops every item of the whole history, not only
    # of the max_len window
    assert "seen items excluded" in predict(setup, long_, tmp_path / "c.csv")
    got = [r["item_id"] for r in read_rows(tmp_path / "c.csv")]
    assert len(got) == 10 and not set(got) & set(items)


def test_bad_inputs_exit_2(setup, tmp_path):
    events = setup["events"]
    out = predict(setup, events, tmp_path / "p.csv", "--item-col", "song", code=2)
    assert "--item-col: " in out and "no column 'song'" in out and "user_id, item_id, timestamp" in out
    assert "--k 11: this bundle computes the top 10" in predict(setup, events, tmp_path / "p.csv", "--k", 11, code=2)
    header = write_csv(tmp_path / "header.csv", [])
    assert "no events" in predict(setup, header, tmp_path / "p.csv", code=2)
    (tmp_path / "empty.csv").write_text("")
    assert "empty.csv: the file is empty" in predict(setup, tmp_path / "empty.csv", tmp_path / "p.csv", code=2)
    assert "--input: " in predict(setup, tmp_path / "nope.csv", tmp_path / "p.csv", code=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.csv", "header.csv"]  # no output, no temp file


def test_quoting_and_empty_fields(setup, tmp_path):
    events = tmp_path / "e.csv"
    events.write_text('user_id,item_id,timestamp\n"a,b",i3,1\n"q""x",i4,2\n,i5,3\nc,i9,\n')
    out = predict(setup, events, tmp_path / "p.csv", "--k", 2)
    assert "2 users, 4 rows written" in out and "2 rows with an empty user, item or time ignored" in out
    assert [r["user_id"] for r in read_rows(tmp_path / "p.csv")] == ["a,b", "a,b", 'q"x', 'q"x']


def bad_bundle(setup, tmp_path, edit) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("model.onnx", "bundle.json"):
        (bundle / name).write_bytes((setup["bundle"] / name).read_bytes())
    edit(bundle)
    return bundle


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda b: _edit_meta(b, max_len=MAX_LEN + 1),
            f"bundle.json says max_len {MAX_LEN + 1} but model.onnx has {MAX_LEN}",
        ),
        (lambda b: _edit_meta(b, k=20), "bundle.json says k 20 but model.onnx has 10"),
        (lambda b: _edit_meta(b, vocab="drop", popularity="drop"), "vocab (98), popularity (98), n_items (99)"),
        (lambda b: _edit_meta(b, n_items=98, vocab="drop", popularity="drop"), "bundle.json says n_items 98"),
        (lambda b: (b / "bundle.json").write_text("{"), "bundle.json: not valid JSON"),
        (lambda b: (b / "bundle.json").unlink(), "no bundle.json; pass a bundle folder"),
        (lambda b: (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:5000]), "not a loadable ONNX model"),
        (lambda b: (b / "model.onnx").write_text("hello"), "not a loadable ONNX model"),
    ],
)
def test_bad_bundle_exit_2(setup, tmp_path, edit, message):
    bundle = bad_bundle(setup, tmp_path, edit)
    r = runner.invoke(app, ["predict", str(bundle), "--input", str(setup["events"]), "--output", str(tmp_path / "p")])
    assert r.exit_code == 2 and message in r.output, r.output


def _edit_meta(bundle: Path, **changes) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    for key, value in changes.items():
        meta[key] = meta[key][:-1] if value == "drop" else value
    (bundle / "bundle.json").write_text(json.dumps(meta))


def test_predict_never_imports_torch(setup, tmp_path):
    code = (
        "import sys\nfrom pathlib import Path\nfrom ltrec.deploy.predict import run_predict\n"
        f"print(run_predict(Path({str(setup['bundle'])!r}), Path({str(setup['events'])!r}), "
        f"Path({str(tmp_path / 'p.csv')!r})))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False" and "200 users" in out


def test_parquet_output_and_json_input_match_csv(setup, tmp_path):
    """Parquet is written when the output ends in .parquet (typed columns, same rows as the CSV), and JSON
    events are read as CSV events are; ids with commas and quotes survive both."""
    import duckdb

    events = tmp_path / "e.csv"
    events.write_text('user_id,item_id,timestamp\n"a,b",i3,1\n"q""x",i4,2\nu2,i5,3\nu2,i6,4\n')
    predict(setup, events, tmp_path / "p.csv", "--k", 3)
    predict(setup, events, tmp_path / "p.parquet", "--k", 3)
    want = [
        (r["user_id"], int(r["rank"]), r["item_id"], float(r["score"]), r["source"])
        for r in read_rows(tmp_path / "p.csv")
    ]
    con = duckdb.connect()
    got = con.execute("SELECT * FROM read_parquet(?)", [str(tmp_path / "p.parquet")]).fetchall()
    assert got == want and {u for u, *_ in got} == {"a,b", 'q"x', "u2"}
    types = [
        t
        for _, t, *_ in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(tmp_path / "p.parquet")]).fetchall()
    ]
    assert types == ["VARCHAR", "INTEGER", "VARCHAR", "DOUBLE", "VARCHAR"]
    rows = [
        {"user_id": u, "item_id": i, "timestamp": t}
        for u, i, t in [("a,b", "i3", 1), ('q"x', "i4", 2), ("u2", "i5", 3), ("u2", "i6", 4)]
    ]
    (tmp_path / "e.json").write_text(json.dumps(rows))
    predict(setup, tmp_path / "e.json", tmp_path / "j.csv", "--k", 3)
    assert (tmp_path / "j.csv").read_text() == (tmp_path / "p.csv").read_text()


def test_parquet_output_failure_leaves_nothing(setup, tmp_path):
    out = predict(setup, tmp_path / "missing.csv", tmp_path / "p.parquet", code=2)
    assert "missing.csv" in out and not list(tmp_path.iterdir())
