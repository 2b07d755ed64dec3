"""ltrec.evaluation.adapt and the cold slice: cold users ranked zero-shot and after adaptation, exactly as a per-user
loop would."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch
from conftest import next_item_loss
from test_export import ok, write_events
from typer.testing import CliRunner

from ltrec.cli import app
from ltrec.data import COLD, EVAL
from ltrec.evaluation.adapt import adapted_scores
from ltrec.models import BACKBONES, SASRec
from ltrec.runtime.build import load_run

runner = CliRunner()


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cold")
    events = write_events(folder / "events.csv", users=300)
    recipe = folder / "cold.yaml"
    recipe.write_text(
        f"name: cold\nseed: 4\ndata: {{source: {events}, max_len: 50}}\n"
        "split: {cold_users: 0.25, seed: 9}\nbackbone: {kind: sasrec, dim: 16}\n"
        "train: {epochs: 3, batch_size: 64}\n"
    )
    ok(["train", recipe, "--out", folder / "run"])
    return folder / "run"


def test_cold_slice_counts_match_the_recipe(cold_run):
    _, seqs = load_run(cold_run)
    n_cold = int((seqs.role == COLD).sum())
    assert n_cold == round(0.25 * (n_cold + int((seqs.role == EVAL).sum())))
    out = json.loads(ok(["eval", cold_run, "--json"]))["slices"]
    assert out["cold"]["users"] == n_cold
    assert out["all"]["users"] == int((seqs.role == EVAL).sum())  # `all` = users who trained
    assert "cold-adapted" not in out  # adaptation is off unless asked for
    summary = json.loads((cold_run / "metrics.json").read_text())
    assert summary["test"]["cold"]["users"] == n_cold  # the train summary reports the cold slice too


def test_adapted_slice_sits_beside_zero_shot(cold_run):
    args = ["eval", cold_run, "--json", "--set", "eval.adapt.steps=3", "--set", "eval.adapt.lr=0.5"]
    out = json.loads(ok(args))["slices"]
    assert out["cold-adapted"]["users"] == out["cold"]["users"] > 0
    assert out["cold-adapted"]["rank"] != out["cold"]["rank"]  # the steps changed the rankings
    with open(cold_run / "users_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cold = sorted(r["user_id"] for r in rows if r["slice"] == "cold")
    assert cold == sorted(r["user_id"] for r in rows if r["slice"] == "cold-adapted")
    assert out["all"] == json.loads(ok(["eval", cold_run, "--json"]))["slices"]["all"]  # warm users untouched
    # a vanishing learning rate is zero-shot again: the adapted rows are the same users, ranked the same way
    tiny = json.loads(ok(["eval", cold_run, "--json", "--set", "eval.adapt.lr=1.0e-12"]))["slices"]
    assert tiny["cold-adapted"] == pytest.approx(tiny["cold"])


def test_eval_may_only_override_eval_keys(cold_run):
    r = runner.invoke(app, ["eval", str(cold_run), "--set", "data.max_len=5"])
    assert r.exit_code == 2 and "--set data.max_len: only eval.* keys can change after training" in r.output
    r = runner.invoke(app, ["eval", str(cold_run), "--set", "eval.adapt.steps=0"])
    assert r.exit_code == 2 and "eval.adapt.steps" in r.output


def test_predict_serves_cold_users_as_eval_ranks_them(cold_run, tmp_path):
    """Cold users never trained; their test histories through the ONNX bundle give eval's cold NDCG@10."""
    _, seqs = load_run(cold_run)
    cold = np.flatnonzero(seqs.role == COLD)
    rows, targets = ["user_id,item_id,timestamp"], {}
    for u in cold:
        items = seqs.items[seqs.offsets[u] : seqs.offsets[u + 1]]
        rows += [f"{seqs.users[u]},{seqs.vocab[i - 1]},{t}" for t, i in enumerate(items[:-1])]
        targets[str(seqs.users[u])] = str(seqs.vocab[items[-1] - 1])
    (tmp_path / "cold.csv").write_text("\n".join(rows) + "\n")
    ok(["export", cold_run, "--out", tmp_path / "bundle", "--k", 10])
    ok(
        [
            "predict",
            tmp_path / "bundle",
            "--input",
            tmp_path / "cold.csv",
            "--output",
            tmp_path / "p.csv",
            "--exclude-seen",
        ]
    )
    ndcg = dict.fromkeys(targets, 0.0)
    with open(tmp_path / "p.csv", newline="") as f:
        for r in csv.DictReader(f):
            assert r["source"] == "model"  # a known history, never the popularity fallback
            if r["item_id"] == targets[r["user_id"]]:
                ndcg[r["user_id"]] = 1.0 / np.log2(int(r["rank"]) + 1)
    expected = json.loads(ok(["eval", cold_run, "--json", "--ks", "10", "--slice", "cold"]))["slices"]["cold"]
    assert expected["ndcg@10"] > 0
    assert np.mean(list(ndcg.values())) == pytest.approx(expected["ndcg@10"], abs=1e-6)


def _model(kind: str = "sasrec"):
    torch.manual_seed(0)
    if kind == "sasrec":
        return SASRec(n_items=30, max_len=10, dim=8, layers=1, heads=2, dropout=0.2)
    return BACKBONES[kind](30, 10, dim=8, dropout=0.2)


def _one_by_one(model, history, steps, lr, params):
    """The reference: a deep copy per user, plain SGD on that user's history, then score."""
    out = []
    for row in history:
        m = copy.deepcopy(model).eval()
        train = [p for n, p in m.named_parameters() if params == "all" or not n.startswith("item_emb")]
        opt = torch.optim.SGD(train, lr=lr)
        seq = torch.as_tensor(row[row > 0]).unsqueeze(0)
        losses = []
        for _ in range(steps if seq.shape[1] >= 2 else 0):
            loss = next_item_loss(m, seq[:, :-1], seq[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if seq.shape[1] >= 2:
            assert next_item_loss(m, seq[:, :-1], seq[:, 1:]).item() < losses[0]  # the user's loss fell
        with torch.no_grad():
            out.append(m(torch.as_tensor(row).unsqueeze(0)))
    return torch.cat(out)


@pytest.mark.parametrize(
    "params, kind",
    [("encoder", "sasrec"), ("all", "sasrec"), ("encoder", "gru4rec"), ("all", "narm"), ("encoder", "caser")],
)
def test_vmapped_adaptation_equals_a_copy_per_user(params, kind):  # recurrent backbones: looped, not vmapped
    model = _model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = np.array(
        [[0, 0, 3, 4, 5, 6, 7, 8], [0, 0, 0, 0, 0, 9, 8, 7], [0, 0, 0, 0, 0, 0, 0, 4], [1, 2, 3, 4, 5, 6, 7, 8]]
    )
    got = adapted_scores(model, history, steps=4, lr=0.5, params=params, chunk=3)  # two chunks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not changed
    torch.testing.assert_close(got, _one_by_one(model, history, 4, 0.5, params), rtol=1e-4, atol=1e-5)
    model.eval()
    with torch.no_grad():
        zero_shot = model(torch.as_tensor(history))
    torch.testing.assert_close(got[2], zero_shot[2], rtol=1e-5, atol=1e-6)  # one item: nothing to learn
    assert not torch.allclose(got[0], zero_shot[0])
