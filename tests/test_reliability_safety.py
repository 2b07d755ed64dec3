"""Safe loading: user files never run code (YAML tags, pickled checkpoints), paths are bound as SQL parameters,
and a recipe's SQL cannot read, write or fetch anything outside the loaded table. The trust model these
tests hold the code to is in docs/reliability.md."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import duckdb
import pytest
import torch
import yaml
from typer.testing import CliRunner

import ltrec.recipe.load
from ltrec.cli import app
from ltrec.data import connect, load
from ltrec.files.errors import UserError
from ltrec.recipe import Data, Head, Split
from ltrec.runtime.checkpoint import load_torch

runner = CliRunner()
SOURCES = sorted((Path(__file__).resolve().parents[1] / "ltrec").rglob("*.py"))
EVENTS = "user_id,item_id,timestamp\n" + "".join(f"u{u},{i},{i}\n" for u in range(3) for i in range(1, 5))


def calls(name: str):
    """(file, ast.Call) for every call whose dotted name ends with `name` in the package's sources."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(name):
                yield path.name, node


def keywords(node: ast.Call) -> dict[str, str]:
    return {k.arg: ast.unparse(k.value) for k in node.keywords}


def test_yaml_is_only_ever_loaded_safely():
    for _, node in calls("yaml.load"):
        assert keywords(node).get("Loader") == "_Loader"
    assert issubclass(ltrec.recipe.load._Loader, yaml.SafeLoader)
    text = "".join(p.read_text() for p in SOURCES)
    assert not re.search(r"unsafe_load|full_load|FullLoader|UnsafeLoader|Loader=yaml\.Loader", text)


def test_checkpoints_and_arrays_never_unpickle():
    found = list(calls("torch.load"))
    assert found and all(keywords(node).get("weights_only") == "True" for _, node in found)
    assert all(keywords(node).get("allow_pickle") == "False" for _, node in calls("np.load"))
    assert all(keywords(node).get("allow_pickle") == "False" for _, node in calls("np.save"))


def test_no_eval_exec_pickle_or_shell():
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        names = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert not names & {"eval", "exec", "compile", "__import__", "os.system", "os.popen"}, path.name
        imported = {
            a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names
        } | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"pickle", "dill", "marshal", "shelve", "cloudpickle"}, path.name
        assert "shell=True" not in path.read_text(), path.name


class Evil:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_object_in_a_checkpoint_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "model": Evil(marker)}, tmp_path / "last.pt")
    with pytest.raises(UserError, match="last.pt: not a readable ltrec checkpoint"):
        load_torch(tmp_path / "last.pt")
    assert not marker.exists()


def test_an_evil_best_pt_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.csv").write_text(EVENTS)
    (tmp_path / "r.yaml").write_text("name: t\ndata: {source: events.csv}\nbackbone: {kind: pop}\n")
    assert runner.invoke(app, ["train", "r.yaml"]).exit_code == 0
    marker = tmp_path / "pwned"
    torch.save({"model": Evil(marker)}, tmp_path / "runs/t/best.pt")
    for args in (["eval", "runs/t"], ["export", "runs/t", "--out", "b", "--k", "2"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "best.pt: not a readable ltrec checkpoint" in r.output, r.output
    assert not marker.exists() and not (tmp_path / "b").exists()


def test_tampered_checkpoints_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.csv").write_text(EVENTS)
    (tmp_path / "r.yaml").write_text(
        "name: t\ndata: {source: events.csv}\nbackbone: {kind: gru4rec, dim: 4}\ntrain: {epochs: 1}\n"
    )
    assert runner.invoke(app, ["train", "r.yaml"]).exit_code == 0
    run = tmp_path / "runs/t"
    good = (run / "best.pt").read_bytes()
    torch.save({"model": {"item_emb.weight": torch.zeros(3, 3)}, "epoch": 1}, run / "best.pt")  # another model
    r = runner.invoke(app, ["export", "runs/t", "--out", "b", "--k", "2"])
    assert r.exit_code == 2 and "best.pt: does not hold this run's model (RuntimeError: " in r.output, r.output
    (run / "best.pt").write_bytes(good[: len(good) // 2])  # truncated
    r = runner.invoke(app, ["export", "runs/t", "--out", "b", "--k", "2"])
    assert r.exit_code == 2 and "best.pt: not a readable ltrec checkpoint" in r.output, r.output
    last = torch.load(run / "last.pt", weights_only=True)
    torch.save({**last, "model": {"item_emb.weight": torch.zeros(3, 3)}}, run / "last.pt")
    r = runner.invoke(app, ["train", "r.yaml", "--resume", "--set", "train.epochs=2"])
    assert r.exit_code == 2 and "last.pt: does not match this run (RuntimeError: " in r.output, r.output
    (run / "data.json").write_text("[1, 2")
    r = runner.invoke(app, ["export", "runs/t", "--out", "b", "--k", "2"])
    assert r.exit_code == 2 and "data.json: not valid JSON" in r.output, r.output


def test_yaml_tags_that_run_code_are_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, tag in enumerate(
        [
            "!!python/object/apply:os.system ['touch pwned']",
            "!!python/object/new:pathlib.Path.touch [pwned]",
            "!!python/object/apply:subprocess.call [[touch, pwned]]",
        ]
    ):
        (tmp_path / "r.yaml").write_text(
            f"name: t\ndata: {{source: events.csv}}\nbackbone: {{kind: pop}}\nseed: {tag}\n"
        )
        r = runner.invoke(app, ["validate", "r.yaml"])
        assert r.exit_code == 2 and "invalid YAML: could not determine a constructor" in r.output, (i, r.output)
        r = runner.invoke(app, ["validate", "r.yaml", "--set", f"seed={tag}"])
        assert r.exit_code == 2
    assert not (tmp_path / "pwned").exists()


ESCAPES = [  # a recipe's data.query trying to reach outside the loaded table
    "SELECT * FROM read_csv('other.csv')",
    "SELECT * FROM 'other.csv'",
    "SELECT content AS user_id, 1 AS item_id, 1 AS timestamp FROM read_text('other.csv')",
    "SELECT * FROM glob('*')",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "COPY source TO 'written.csv'",
    "SELECT 1; COPY source TO 'written.csv'",
    "EXPORT DATABASE 'exported'",
    "ATTACH 'written.db' AS w",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "SET temp_directory = 'spill'",
]


@pytest.mark.parametrize("query", ESCAPES)
def test_recipe_sql_cannot_leave_the_table(tmp_path, monkeypatch, query):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.csv").write_text(EVENTS)
    (tmp_path / "other.csv").write_text("secret\n")
    with pytest.raises(UserError, match=r"^data\.query: the query failed: (Permission|Invalid Input) Error"):
        load(Data(source="events.csv", query=query), Split(), Head())
    assert sorted(os.listdir(tmp_path)) == ["events.csv", "other.csv"]


def test_the_connection_is_locked_after_loading(tmp_path):
    (tmp_path / "e.csv").write_text(EVENTS)
    con = connect([str(tmp_path / "e.csv")], "csv", "e.csv")
    settings = dict(
        con.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', "
            "'lock_configuration', 'autoinstall_known_extensions', "
            "'autoload_known_extensions')"
        ).fetchall()
    )
    assert settings == {
        "enable_external_access": "false",
        "lock_configuration": "true",
        "autoinstall_known_extensions": "false",
        "autoload_known_extensions": "false",
    }
    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")


def test_a_path_is_a_parameter_not_sql(tmp_path, monkeypatch):
    """A file name full of SQL is just a file name."""
    monkeypatch.chdir(tmp_path)
    name = "e'); COPY (SELECT 1) TO 'written.csv'; --.csv"
    (tmp_path / name).write_text(EVENTS)
    s = load(Data(source=name), Split(), Head())
    assert list(s.users) == ["u0", "u1", "u2"] and not (tmp_path / "written.csv").exists()


def test_column_names_are_checked_before_any_sql(tmp_path):
    for bad in ("user_id\" FROM source; COPY source TO 'w.csv' --", "user_id)--", "1user"):
        with pytest.raises(ValueError, match="is not a plain column name"):
            Data(source="e.csv", columns={"user": bad})
