"""Every file ltrec reads back from a run folder, damaged in every way we could think of, for every verb that
reads it: a one-line error naming the file (exit 2), never a traceback."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import ok, train_run, write_events
from typer.testing import CliRunner

from ltrec.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runfiles")
    events = write_events(folder / "events.csv", users=60)
    run = train_run(folder, events, "gru4rec", epochs=2, extra="", name="run")
    sampled = folder / "sampled.yaml"
    sampled.write_text(
        f"name: s\ndata: {{source: {events}, max_len: 20}}\nbackbone: {{kind: gru4rec, dim: 8}}\n"
        "train: {epochs: 1}\neval: {mode: sampled, negatives: 20}\n"
    )
    ok(["train", sampled, "--out", folder / "sampled"])
    return {"run": run, "sampled": folder / "sampled"}


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def with_epoch(real: bytes, epoch) -> bytes:
    ckpt = torch.load(io.BytesIO(real), weights_only=True)
    return torch_bytes({**ckpt, "epoch": epoch})


JUNK = {"empty": b"", "not-text": b"\xff\xfe\x00garbage", "a-list": b"[1, 2, 3]", "a-number": b"42", "null": b"null"}
DAMAGE = [
    *((f".ltrec-run.json {k}", ".ltrec-run.json", v) for k, v in JUNK.items()),
    (".ltrec-run.json other format", ".ltrec-run.json", b'{"format": 99}'),
    *((f"data.json {k}", "data.json", v) for k, v in JUNK.items()),
    ("data.json wrong types", "data.json", b'{"fingerprint": 7, "head_threshold": "many"}'),
    *((f"metrics.json {k}", "metrics.json", v) for k, v in JUNK.items()),
    (
        "metrics.json wrong types",
        "metrics.json",
        b'{"best_epoch": "x", "epochs": 1, "seconds_per_epoch": 1, "valid": {}, "test": {}, "protocol": "p"}',
    ),
    (
        "metrics.json tables of text",
        "metrics.json",
        b'{"best_epoch": 1, "epochs": 1, "seconds_per_epoch": 1, "valid": {"all": "x"}, "test": [], "protocol": "p"}',
    ),
    # a torn *last* line is what a writer killed mid-line leaves, and is left out (see below); elsewhere: damage
    (
        "metrics.jsonl torn mid-file",
        "metrics.jsonl",
        b'{"epoch": 1, "seconds": 1.0, "loss": 2.0, "valid": {"al\n'
        b'{"epoch": 2, "seconds": 1, "loss": 1, "valid": {"all": {}, '
        b'"head": {}, "tail": {}}}\n',
    ),
    ("metrics.jsonl a list per line", "metrics.jsonl", b"[1]\n[2]\n"),
    (
        "metrics.jsonl epochs out of order",
        "metrics.jsonl",
        b'{"epoch": 2, "seconds": 1, "loss": 1, "valid": {"all": {}, "head": {}, "tail": {}}}\n',
    ),
    ("metrics.jsonl no slices", "metrics.jsonl", b'{"epoch": 1, "seconds": 1, "loss": 1, "valid": {}}\n'),
    ("users_test.csv empty", "users_test.csv", b""),
    ("users_test.csv header only", "users_test.csv", b"user_id,slice,train_events,ndcg@10,hr@10\n"),
    ("users_test.csv other header", "users_test.csv", b"a,b,c\n1,2,3\n"),
    ("users_test.csv short row", "users_test.csv", b"user_id,slice,train_events,ndcg@10\nu1,tail\n"),
    ("users_test.csv unknown slice", "users_test.csv", b"user_id,slice,train_events,ndcg@10\nu1,middle,3,0.5\n"),
    ("users_test.csv text metric", "users_test.csv", b"user_id,slice,train_events,ndcg@10\nu1,tail,3,high\n"),
    ("users_test.csv not utf-8", "users_test.csv", b"user_id,slice,train_events,ndcg@10\n\xff,tail,3,1\n"),
    *((f"users_test.json {k}", "users_test.json", v) for k, v in JUNK.items()),
    ("recipe.yaml empty", "recipe.yaml", b""),
    ("recipe.yaml a list", "recipe.yaml", b"- 1\n- 2\n"),
    ("recipe.yaml bad key", "recipe.yaml", b"name: x\nbogus: 1\n"),
    ("best.pt empty", "best.pt", b""),
    ("best.pt truncated", "best.pt", None),
    ("best.pt a list", "best.pt", torch_bytes([1, 2])),
    ("best.pt model of text", "best.pt", torch_bytes({"model": {"item_emb.weight": "x"}})),
    ("best.pt other shapes", "best.pt", torch_bytes({"model": {"item_emb.weight": torch.zeros(3, 3)}})),
    ("best.pt epoch of text", "best.pt", lambda real: with_epoch(real, "3")),  # the run's weights, a bad epoch
    ("best.pt negative epoch", "best.pt", lambda real: with_epoch(real, -1)),
]
VERBS = {
    "eval": lambda run: ["eval", run],
    "export": lambda run: ["export", run, "--out", run.parent / f"{run.name}-bundle"],
    "compare": lambda run: ["compare", run, run],
    "report": lambda run: ["report", run, "--out", run.parent / f"{run.name}.html"],
}
# what each verb reads (a verb that does not read a file has nothing to fail on)
READS = {
    "eval": {".ltrec-run.json", "recipe.yaml", "data.json", "best.pt"},
    "export": {".ltrec-run.json", "recipe.yaml", "data.json", "best.pt", "metrics.json"},
    "compare": {".ltrec-run.json", "users_test.csv", "users_test.json"},
    "report": {
        ".ltrec-run.json",
        "users_test.csv",
        "users_test.json",
        "recipe.yaml",
        "data.json",
        "metrics.json",
        "metrics.jsonl",
    },
}


CASES = [(verb, *c) for verb in sorted(VERBS) for c in DAMAGE if c[1] in READS[verb]]


@pytest.mark.parametrize("verb, case, name, data", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_damaged_run_file_is_one_line_naming_it(base, tmp_path, verb, case, name, data):
    run = tmp_path / "run"
    shutil.copytree(base["run"], run)
    if data is None:  # truncated: the first half of the real file
        data = (run / name).read_bytes()[: (run / name).stat().st_size // 2]
    elif callable(data):  # the real file, changed
        data = data((run / name).read_bytes())
    (run / name).write_bytes(data)
    r = runner.invoke(app, [str(a) for a in VERBS[verb](run)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output
    lines = [line for line in r.output.strip().splitlines() if not line.startswith("data: ")]
    assert len(lines) == 1 and name.split(".")[0] in lines[0] or "recipe.yaml" in lines[0], r.output


@pytest.mark.parametrize(
    "case, array",
    [
        ("wrong shape", np.ones((3, 3), np.int64)),
        ("floats", None),
        ("items out of range", None),
        ("not npy", b"x"),
    ],
)
def test_stored_negatives_are_validated(base, tmp_path, case, array):
    run = tmp_path / "sampled"
    shutil.copytree(base["sampled"], run)
    path = next(run.glob("negatives_test_*.npy"))
    good = np.load(path, allow_pickle=False)
    if case == "floats":
        array = good.astype(np.float64)
    if case == "items out of range":
        array = good.copy()
        array[0, 0] = 10**6
    path.write_bytes(array if isinstance(array, bytes) else npy_bytes(array))
    r = runner.invoke(app, ["eval", str(run)])
    assert r.exit_code == 2 and path.name in r.output and "Traceback" not in r.output, r.output
    assert "delete it to draw them again" in r.output


def test_a_checkpoint_with_python_objects_says_why_in_a_whole_sentence(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base["run"], run)
    (run / "best.pt").write_bytes(torch_bytes({"model": {}, "path": Path("/etc/passwd")}))
    r = runner.invoke(app, ["eval", str(run)])
    assert r.exit_code == 2 and r.output.strip().endswith("which ltrec never unpickles)"), r.output
    assert "(it holds a Python object (pathlib." in r.output


def test_the_catalogue_is_broad():
    assert len(DAMAGE) >= 40 and len(VERBS) == 4
    assert json.dumps(sorted(READS)) == json.dumps(sorted(VERBS))


@pytest.mark.parametrize(
    "field, value",
    [
        ("epoch", "2"),
        ("epoch", -1),
        ("epoch", True),
        ("epoch", 2.0),
        ("epoch", None),
        ("best_epoch", 9),
        ("best_epoch", -1),
        ("bad", "none"),
        ("best", "high"),
        ("best", float("nan")),
        ("stopped", "no"),
        ("epoch", 10**9),  # a whole number, but metrics.jsonl holds 2 epochs: the files are not of one run
    ],
)
def test_a_damaged_training_state_is_refused_on_resume(base, tmp_path, field, value):
    """last.pt's state says where training continues: a damaged field is one line naming the file, never a
    resume at a wrong epoch."""
    run = tmp_path / "run"
    shutil.copytree(base["run"], run)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["state"][field] = value
    (run / "last.pt").write_bytes(torch_bytes(ckpt))
    r = runner.invoke(app, ["train", str(run / "recipe.yaml"), "--out", str(run), "--resume"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    [line] = [line for line in r.output.strip().splitlines() if not line.startswith("data: ")]
    assert line.startswith(f"{run}/last.pt: ") and "retrain the run, or restore the file" in line, line


def test_a_state_with_fields_missing_is_refused_on_resume(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base["run"], run)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["state"] = {"epoch": 1}
    (run / "last.pt").write_bytes(torch_bytes(ckpt))
    r = runner.invoke(app, ["train", str(run / "recipe.yaml"), "--out", str(run), "--resume"])
    assert r.exit_code == 2 and f"{run}/last.pt: state: expected the fields epoch, best, best_epoch" in r.output


TORN = b'{"epoch": 3, "seconds": 0.2, "loss": 4.1, "valid": {"all": {"ndcg@10": 0.'


def test_a_torn_last_line_of_metrics_jsonl_is_left_out_with_a_note(base, tmp_path):
    """What a writer killed mid-line leaves: report shows the whole epochs and says what it left out; resume
    continues from the checkpoint and writes the file whole again. A torn line elsewhere stays an error."""
    run = tmp_path / "run"
    shutil.copytree(base["run"], run)
    whole = (run / "metrics.jsonl").read_bytes()
    (run / "metrics.jsonl").write_bytes(whole + TORN)
    note = f"note: {run}/metrics.jsonl: line 3 is incomplete (a write was cut short); it is left out"
    r = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 0 and note in r.output, r.output
    r = runner.invoke(
        app, ["train", str(run / "recipe.yaml"), "--out", str(run), "--resume", "--set", "train.epochs=3"]
    )
    assert r.exit_code == 0 and note in r.output and "resuming" in r.output, r.output
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    (run / "metrics.jsonl").write_bytes(TORN + b"\n" + whole)
    r = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 2 and f"{run}/metrics.jsonl: line 1: not valid JSON" in r.output, r.output


def test_a_run_whose_users_are_all_cold_gets_a_report_saying_why_a_part_is_missing(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base["run"], run)
    header, *rows = (run / "users_test.csv").read_text().splitlines()
    cold = [",".join([r.split(",")[0], "cold", *r.split(",")[2:]]) for r in rows[:5]]
    (run / "users_test.csv").write_text("\n".join([header, *cold]) + "\n")
    r = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "r.html").read_text()
    assert "no head or tail user in users_test.csv of run (cold users only)" in page and "<td>cold</td>" in page
