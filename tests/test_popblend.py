"""ltrec.blend.popularity: scores + w·log(1 + count) per history-length bucket, w chosen on validation (and what
every blend shares: `ltrec eval --set` fits one on a finished run, `ltrec compare` pairs it)."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ltrec.blend.popularity import FittedPopBlend, fit, prior
from ltrec.cli import app
from ltrec.data import load
from ltrec.evaluation.engine import Evaluator
from ltrec.evaluation.ranks import target_ranks
from ltrec.models import BACKBONES
from ltrec.recipe import Data, Eval, Head, PopBlend, Split

runner = CliRunner()


def test_the_weight_follows_the_history_length_bucket():
    blend = FittedPopBlend(torch.tensor([2, 5]), torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3))
    history = torch.tensor([[0, 0, 0, 0, 0, 7], [0, 0, 0, 0, 7, 8], [0, 0, 0, 7, 8, 9], [0, 6, 7, 8, 9, 1]])
    assert blend.weight(history).tolist() == [1.0, 2.0, 2.0, 3.0]  # 1 item | 2-4 | 5+


def test_blended_ranks_are_the_blended_score_matrix_ranked(tiny_csv):
    seqs = load(Data(source=str(tiny_csv)), Split(), Head())
    torch.manual_seed(0)
    model = BACKBONES["sasrec"](seqs.n_items, 20, dim=8)
    blend = FittedPopBlend(torch.tensor([3, 6]), torch.tensor([2.0, 0.5, 0.0]), prior(seqs.item_counts()))
    fast = Evaluator(model, seqs, Eval(mask_seen=False), 20).run("test", blend=blend)
    users, history, target = seqs.eval_inputs("test", 20)
    with torch.no_grad():
        hist = torch.from_numpy(history)
        scores = model(hist) + blend.weight(hist)[:, None] * blend.prior[None, :]
    want = target_ranks(scores, torch.from_numpy(target)).numpy()
    assert np.array_equal(fast.per_user["rank"][: len(want)], want)


def test_fit_picks_each_buckets_best_weight_on_validation(tmp_path):
    # every user ends on the catalogue's most popular items: popularity is what an untrained model lacks
    rng = np.random.default_rng(0)
    rows = [
        f"u{u},{i},{t}"
        for u in range(120)
        for t, i in enumerate([*rng.integers(3, 60, int(rng.integers(1, 8))), 1, 2, 1, 2])
    ]
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    seqs = load(Data(source=str(tmp_path / "e.csv")), Split(), Head())
    torch.manual_seed(0)
    model = BACKBONES["gru4rec"](seqs.n_items, 20, dim=8)  # untrained: popularity is all it can offer
    evaluator = Evaluator(model, seqs, Eval(mask_seen=False), 20)
    cfg = PopBlend(edges=[3], weights=[0.0, 10.0])
    blend = fit(evaluator, cfg, seqs.item_counts(), "ndcg@10")
    # no validation history is shorter than 3 items (that bucket keeps the model alone, w 0); in the other
    # bucket an untrained model is beaten by popularity
    assert blend.weights.tolist() == [0.0, 10.0]
    plain = evaluator.run("valid").per_user["ndcg@10"].mean()
    assert evaluator.run("valid", blend=blend).per_user["ndcg@10"].mean() > plain


@pytest.mark.parametrize(
    "key, words, prior",
    [
        ("pop_blend", "blended with popularity", "popularity"),
        ("transition_blend", "the newest items' transitions", "transitions"),
    ],
)
def test_eval_fits_the_blend_and_compare_pairs_it_with_the_unblended_run(
    tiny_csv, tmp_path, monkeypatch, key, words, prior
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(
        f"name: b\ndata: {{source: {tiny_csv}, max_len: 10}}\n"
        "backbone: {kind: gru4rec, dim: 8}\ntrain: {epochs: 1}\n"
    )
    assert runner.invoke(app, ["train", "r.yaml"]).exit_code == 0
    shutil.copytree(tmp_path / "runs/b", tmp_path / "runs/unblended")
    r = runner.invoke(app, ["eval", "runs/b", "--set", f"eval.{key}={{weights: [0.0, 1.0]}}", "--json"])
    assert r.exit_code == 0, r.output
    assert words in json.loads(r.output)["protocol"]
    saved = json.loads((tmp_path / f"runs/b/{key}.json").read_text())
    assert saved["edges"] == [2, 3, 5, 8, 13, 21] and set(saved["weights"]) <= {0.0, 1.0}
    # a blend changes scores, not the ranking protocol: the question "does it help?" is a paired comparison
    r = runner.invoke(app, ["compare", "runs/unblended", "runs/b", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["protocol"].endswith(f"scores blended with {prior} in b")


@pytest.mark.parametrize("edges, message", [([3, 3], "edges must increase"), ([], "at least 1 item")])
def test_bad_blends_are_recipe_errors(edges, message):
    with pytest.raises(ValueError, match=message):
        PopBlend(edges=edges)
