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
from typer.testing import CliRunner

from ltrec.cli import app
from test_export import ok, train_run, write_events

runner = CliRunner()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runfiles")
    events = write_events(folder / "events.csv", users=60)
    run = train_run(folder, events, "gru4rec", epochs=2, extra="", name="run")
    sampled = folder / "sampled.yaml"
    sampled.write_text(f"name: s\ndata: {{source: {events}, max_len: 20}}\nbackbone: {{kind: gru4rec, dim: 8}}\n"
                       "train: {epochs: 1}\neval: {mode: sampled, negatives: 20}\n")
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


JUNK = {"empty": b"", "not-text": b"\xff\xfe\x00garbage", "a-list": b"[1, 2, 3]", "a-number": b"42",
        "null": b"null"}
DAMAGE = [
    *((f".ltrec-run.json {k}", ".ltrec-run.json", v) for k, v in JUNK.items()),
    (".ltrec-run.json other format", ".ltrec-run.json", b'{"format": 99}'),
    *((f"data.json {k}", "data.json", v) for k, v in JUNK.items()),
    ("data.json wrong types", "data.json", b'{"fingerprint": 7, "head_threshold": "many"}'),
    *((f"metrics.json {k}", "metrics.json", v) for k, v in JUNK.items()),
    ("metrics.json wrong types", "metrics.json", b'{"best_epoch": "x", "epochs": 1, "seconds_per_epoch": 1, '
                                                 b'"valid": {}, "test": {}, "protocol": "p"}'),
    ("metrics.json tables of text", "metrics.json", b'{"best_epoch": 1, "epochs": 1, "seconds_per_epoch": 1, '
                                                    b'"valid": {"all": "x"}, "test": [], "protocol": "p"}'),
    ("metrics.jsonl torn", "metrics.jsonl", b'{"epoch": 1, "seconds": 1.0, "loss": 2.0, "valid": {"al'),
    ("metrics.jsonl a list per line", "metrics.jsonl", b"[1]\n[2]\n"),
    ("metrics.jsonl epochs out of order", "metrics.jsonl",
     b'{"epoch": 2, "seconds": 1, "loss": 1, "valid": {"all": {}, "head": {}, "tail": {}}}\n'),
    ("metrics.jsonl no slices", "metrics.jsonl", b'{"epoch": 1, "seconds": 1, "loss": 1, "valid": {}}\n'),
    ("users_test.csv empty", "users_test.csv", b""),
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
]
VERBS = {
    "eval": lambda run: ["eval", run],
    "export": lambda run: ["export", run, "--out", run.parent / f"{run.name}-bundle"],
    "compare": lambda run: ["compare", run, run],
    "report": lambda run: ["report", run, "--out", run.parent / f"{run.name}.html"],
}
# what each verb reads (a verb that does not read a file has nothing to fail on)
READS = {"eval": {".ltrec-run.json", "recipe.yaml", "data.json", "best.pt"},
         "export": {".ltrec-run.json", "recipe.yaml", "data.json", "best.pt", "metrics.json"},
         "compare": {".ltrec-run.json", "users_test.csv", "users_test.json"},
         "report": {".ltrec-run.json", "users_test.csv", "users_test.json", "recipe.yaml", "data.json",
                    "metrics.json", "metrics.jsonl"}}


CASES = [(verb, *c) for verb in sorted(VERBS) for c in DAMAGE if c[1] in READS[verb]]


@pytest.mark.parametrize("verb, case, name, data", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_damaged_run_file_is_one_line_naming_it(base, tmp_path, verb, case, name, data):
    run = tmp_path / "run"
    shutil.copytree(base["run"], run)
    if data is None:  # truncated: the first half of the real file
        data = (run / name).read_bytes()[: (run / name).stat().st_size // 2]
    (run / name).write_bytes(data)
    r = runner.invoke(app, [str(a) for a in VERBS[verb](run)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output
    lines = [line for line in r.output.strip().splitlines() if not line.startswith("data: ")]
    assert len(lines) == 1 and name.split(".")[0] in lines[0] or "recipe.yaml" in lines[0], r.output


@pytest.mark.parametrize("case, array", [
    ("wrong shape", np.ones((3, 3), np.int64)), ("floats", None), ("items out of range", None), ("not npy", b"x"),
])
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
    assert r.exit_code == 2 and r.output.strip().endswith(
        "which ltrec never unpickles)"), r.output
    assert "(it holds a Python object (pathlib." in r.output


def test_the_catalogue_is_broad():
    assert len(DAMAGE) >= 40 and len(VERBS) == 4
    assert json.dumps(sorted(READS)) == json.dumps(sorted(VERBS))
