"""The Python API (ltrec.api, docs/api.md): the whole path from a DataFrame to a bundle's top-K through the API
alone, equal to the CLI's on the same recipe and seed; `import ltrec` without torch; the notebook example."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_ok
from typer.testing import CliRunner

import ltrec
from ltrec.cli import app

pd = pytest.importorskip("pandas")
ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k" / "interactions.csv"
RECIPE = {
    "name": "api",
    "data": {"max_len": 10},
    "head": {"count": 4},
    "backbone": {"kind": "gru4rec", "dim": 8, "dropout": 0.0},
    "train": {"epochs": 2, "batch_size": 16, "lr": 1.0e-2, "threads": 1},
    "eval": {"ensemble": {"members": [{"kind": "pop"}, {"kind": "transitions"}], "weights": [0.0, 1.0]}},
}


def test_dataframe_to_tail_metrics_to_top_k_equals_the_cli(tiny_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame = pd.read_csv(tiny_csv)
    run = ltrec.train(RECIPE, data=frame, out="api-run", quiet=True)
    snapshot = Path(run.recipe.data.source)
    assert snapshot.suffix == ".parquet" and snapshot.parent == (tmp_path / "runs" / "data").resolve()

    (tmp_path / "r.yaml").write_text(json.dumps({**RECIPE, "data": {"source": str(tiny_csv), "max_len": 10}}))
    cli_ok(["train", "r.yaml", "--out", "cli-run"])
    assert run.metrics["test"] == json.loads((tmp_path / "cli-run" / "metrics.json").read_text())["test"]

    evaluation = run.evaluate(slices=["all", "tail"])
    r = CliRunner().invoke(app, ["eval", "cli-run", "--slice", "all", "--slice", "tail", "--json"])
    assert r.exit_code == 0, r.output
    cli = json.loads(r.stdout)  # the ensemble's progress goes to standard error
    assert evaluation.slices == cli["slices"] and evaluation.protocol == cli["protocol"]
    assert "ensemble of the model and pop, transitions" in evaluation.protocol
    table = evaluation.to_pandas()
    assert list(table.index) == ["all", "tail"] and table.loc["tail", "ndcg@10"] == cli["slices"]["tail"]["ndcg@10"]

    bundle = run.export(out="bundle")
    assert bundle.meta["ensemble"]["members"] == ["model", "pop", "transitions"]
    histories = frame.groupby("user_id")["item_id"].apply(lambda s: [str(i) for i in s]).to_dict()
    recs = bundle.recommend(histories, k=5)
    cli_ok(["export", "cli-run", "--out", "cli-bundle"])
    cli_ok(["predict", "cli-bundle", "--input", tiny_csv, "--output", "p.csv", "--k", "5"])
    want = pd.read_csv("p.csv", dtype={"item_id": str})
    got = recs.to_pandas()
    assert got[["user_id", "rank", "item_id", "source"]].equals(want[["user_id", "rank", "item_id", "source"]])
    assert (got["score"] - want["score"]).abs().max() < 1e-3

    comparison = ltrec.compare([run.path, "cli-run"], slices=["all", "tail"])
    frame_rows = comparison.to_pandas()
    assert list(frame_rows["slice"].unique()) == ["all", "tail"]
    assert (frame_rows["cli-run Δ"] == 0).all() and (frame_rows["api-run"] == frame_rows["cli-run"]).all()


def test_an_arrow_table_trains_as_its_dataframe_does(tiny_csv, tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    monkeypatch.chdir(tmp_path)
    frame = pd.read_csv(tiny_csv)
    recipe = {**RECIPE, "eval": {}, "train": {**RECIPE["train"], "epochs": 1}}
    from_frame = ltrec.train(recipe, data=frame, out="frame", quiet=True)
    from_arrow = ltrec.train(recipe, data=pa.Table.from_pandas(frame, preserve_index=False), out="arrow", quiet=True)
    assert from_arrow.recipe.data.source == from_frame.recipe.data.source  # the same events, the same snapshot
    assert from_arrow.metrics["test"] == from_frame.metrics["test"]


def test_a_bad_frame_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ltrec.UserError, match="data: a list is not a table DuckDB can read"):
        ltrec.load_recipe(RECIPE, data=[1, 2, 3])
    frame = pd.DataFrame({"user": ["a"], "item_id": ["x"], "timestamp": [1]})
    with pytest.raises(ltrec.UserError, match="data.columns.user"):
        ltrec.train(RECIPE, data=frame, quiet=True)
    with pytest.raises(ltrec.UserError, match="backbone.dimm"):
        ltrec.load_recipe(RECIPE, ["backbone.dimm=3"])
    with pytest.raises(ltrec.UserError, match="only eval.. keys can change after training"):
        ltrec.Run(tmp_path).evaluate(overrides=["train.lr=0.1"])


def test_import_ltrec_and_open_a_bundle_without_torch(tiny_csv, tmp_path):
    """A stand-in torch that fails on import: the recipe and bundle calls never need it."""
    bundle = tmp_path / "b"
    cli_ok(["train", _recipe_file(tmp_path, tiny_csv), "--out", tmp_path / "run"])
    cli_ok(["export", tmp_path / "run", "--out", bundle])
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    code = (
        "import sys, ltrec\n"
        f"ltrec.load_recipe({str(_recipe_file(tmp_path, tiny_csv))!r})\n"
        f"print(ltrec.Bundle.open({str(bundle)!r}).recommend([['i1', 'i2']], k=3).items[0])\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(fake)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    items, loaded = r.stdout.strip().splitlines()
    assert loaded == "False" and len(eval(items)) == 3


def _recipe_file(folder: Path, csv: Path) -> Path:
    path = folder / "plain.yaml"
    path.write_text(json.dumps({**RECIPE, "eval": {}, "data": {"source": str(csv), "max_len": 10}}))
    return path


@pytest.mark.skipif(not ML100K.exists(), reason="needs ../shared/data/movielens-100k")
def test_the_notebook_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LTREC_EXAMPLE_EPOCHS", "1")
    monkeypatch.setenv("LTREC_EXAMPLE_DATA", str(ML100K))
    notebook = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "notebook.py"))
    assert set(notebook["evaluation"].slices) == {"all", "head", "tail"}
    assert notebook["recommendations"].source == ["model", "popularity"]


def test_to_pandas_without_pandas_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now raises ImportError
    evaluation = ltrec.Evaluation(Path("run"), "test", "protocol", [10], {"all": {"users": 1, "ndcg@10": 0.5}})
    with pytest.raises(ltrec.UserError, match=r"pandas is not installed; pip install 'ltrec\[pandas\]'"):
        evaluation.to_pandas()
