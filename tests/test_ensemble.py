"""ltrec.ensemble: the model plus fitted members, each standardised per user and weighted per history-length
bucket; the weights fitted on validation by coordinate ascent; `ltrec eval --set` fits one on a finished run,
`ltrec compare` pairs it with the run alone, and export puts it in the graph."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import cli_fails, cli_ok
from typer.testing import CliRunner

from ltrec.cli import app
from ltrec.data import load
from ltrec.ensemble.fit import coordinate_ascent
from ltrec.ensemble.scores import (
    Ensemble,
    bucket_weights,
    combine,
    fit_members,
    item_moments,
    member_scores,
    standardize,
    standardized_scores,
    standardizer,
    start,
)
from ltrec.evaluation.engine import Evaluator
from ltrec.evaluation.ranks import Seen, target_ranks
from ltrec.files.errors import UserError
from ltrec.models import BACKBONES
from ltrec.recipe import Data, Eval, Head, Split, load_recipe
from ltrec.recipe import Ensemble as EnsembleConfig

runner = CliRunner()
MEMBERS = [{"kind": "pop"}, {"kind": "transitions", "window": 3, "neighbours": 10}]


def chain_csv(tmp_path, users=150):
    """Users walk item → item + 1 from a random start: the transitions know the next item."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(users):
        first = int(rng.integers(1, 40))
        rows += [f"u{u},{first + t},{t}" for t in range(int(rng.integers(3, 9)))]
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    return tmp_path / "e.csv"


def test_standardised_rows_have_mean_zero_and_unit_sd_and_a_constant_row_is_zero():
    scores = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 40.0]])
    z = standardize(scores)
    torch.testing.assert_close(z[[0, 2]].mean(dim=1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(z[[0, 2]].square().mean(dim=1), torch.ones(2), atol=1e-4, rtol=0)
    assert z[1].abs().max() == 0  # no information, no contribution
    assert torch.equal(z[0].argsort(), scores[0].argsort())  # a positive affine map: the order is the model's


def test_scores_made_standardised_from_the_item_moments_equal_the_standardised_scores():
    torch.manual_seed(0)
    items = torch.randn(500, 16) + 0.3  # a non-zero mean row, as trained tables have
    state = torch.cat([torch.randn(7, 16) * 3, torch.zeros(1, 16)])  # the last state scores every item 0
    got = standardized_scores(state, items, item_moments(items))
    torch.testing.assert_close(got, standardize(state @ items.T), atol=2e-4, rtol=0)
    assert got[-1].abs().max() == 0


def test_a_member_that_ignores_the_history_is_scored_once_and_broadcasts(tmp_path):
    seqs = load(Data(source=str(chain_csv(tmp_path))), Split(), Head())
    pop, transitions = fit_members(EnsembleConfig(members=MEMBERS), seqs, 20)
    history = torch.from_numpy(seqs.eval_inputs("test", 20)[1])
    (scores, scale, shift), _ = member_scores([pop, transitions], history)
    assert scores.shape == (1, seqs.n_items)
    z = torch.randn(len(history), seqs.n_items)
    weights = torch.tensor([[1.0, 2.0, 0.5]])
    full = [(m(history), *standardizer(m(history))) for m in (pop, transitions)]  # (B, N) each
    want = combine(z, full, history, torch.tensor([], dtype=torch.long), weights)
    got = combine(z, member_scores([pop, transitions], history), history, torch.tensor([], dtype=torch.long), weights)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, z + 2.0 * standardize(pop(history)) + 0.5 * standardize(transitions(history)))


def test_the_weights_follow_the_history_length_bucket():
    weights = torch.tensor([[1.0, 0.0], [1.0, 2.0], [0.5, 4.0]])
    history = torch.tensor([[0, 0, 0, 0, 0, 7], [0, 0, 0, 0, 7, 8], [0, 0, 0, 7, 8, 9], [0, 6, 7, 8, 9, 1]])
    got = bucket_weights(history, torch.tensor([2, 5]), weights)
    assert got.tolist() == [[1.0, 0.0], [1.0, 2.0], [1.0, 2.0], [0.5, 4.0]]  # 1 item | 2-4 | 5+


@pytest.fixture
def chain(tmp_path):
    seqs = load(Data(source=str(chain_csv(tmp_path))), Split(cold_users=0.2), Head())
    cfg = EnsembleConfig(members=MEMBERS, edges=[3, 6])
    return seqs, cfg, fit_members(cfg, seqs, 20)


@pytest.mark.parametrize("kind", ["sasrec", "pop"])  # tied: eval would otherwise rank block by block
def test_ensemble_ranks_are_its_score_matrix_ranked(chain, kind):
    seqs, cfg, members = chain
    torch.manual_seed(0)
    model = BACKBONES[kind](seqs.n_items, 20, dim=8)
    if kind == "pop":
        model.fit(seqs)
    ensemble = start(cfg, members).with_weights(torch.tensor([[1.0, 2.0, 0.5], [0.25, 0.0, 1.0], [1.0, 1.0, 8.0]]))
    fast = Evaluator(model, seqs, Eval(), 20).run("test", ensemble=ensemble)
    users, history, target = seqs.eval_inputs("test", 20)
    with torch.no_grad():
        hist = torch.from_numpy(history)
        w = ensemble.weights[(hist > 0).sum(1).unsqueeze(1).ge(torch.tensor([3, 6])).sum(1)]  # (B, 3)
        scores = w[:, :1] * standardize(model(hist)) + sum(
            w[:, j + 1 : j + 2] * standardize(m(hist)) for j, m in enumerate(members)
        )
    seen = Seen.of(*(torch.from_numpy(a) for a in seqs.seen(users, "test")))
    want = target_ranks(scores, torch.from_numpy(target), seen).numpy()
    assert np.array_equal(fast.per_user["rank"][: len(want)], want)
    assert "ensemble of the model and pop, transitions" in fast.protocol


def test_members_at_weight_zero_rank_as_the_model_alone(chain):
    seqs, cfg, members = chain
    torch.manual_seed(0)
    model = BACKBONES["gru4rec"](seqs.n_items, 20, dim=8)
    evaluator = Evaluator(model, seqs, Eval(), 20)
    alone, ensemble = evaluator.run_many("valid", [None, start(cfg, members)])
    assert np.array_equal(alone.per_user["rank"], ensemble.per_user["rank"])
    assert "ensemble" not in alone.protocol and "ensemble" in ensemble.protocol


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_variants_ranked_together_are_each_ranked_alone(chain, kind):  # the fit shares one forward pass
    seqs, cfg, members = chain
    torch.manual_seed(0)
    model = BACKBONES[kind](seqs.n_items, 20, dim=8)
    evaluator = Evaluator(model, seqs, Eval(adapt={"steps": 1, "lr": 0.1}), 20)
    base = start(cfg, members)
    variants = [None, base.with_weights(torch.tensor([[1.0, 1.0, 0.0]] * 3)), base.with_weights(torch.rand(3, 3))]
    together = evaluator.run_many("valid", variants)
    for variant, result in zip(variants, together):
        alone = evaluator.run("valid", ensemble=variant)
        assert np.array_equal(result.per_user["rank"], alone.per_user["rank"])
        assert list(result.slice_of) == list(alone.slice_of) and "cold-adapted" in alone.slice_of
    assert not np.array_equal(together[0].per_user["rank"], together[1].per_user["rank"])


def test_coordinate_ascent_finds_each_buckets_best_and_keeps_the_current_weight_on_ties():
    """A synthetic metric: bucket 0's users score best at (model 1, member 0.1), bucket 1's at (model 0,
    member 0.3); bucket 2's do not care, so they stay at the model alone. 0.1 and 0.3 have no exact float32."""
    bucket = np.array([0, 0, 1, 1, 1, 2])
    best = {0: (1.0, 0.1), 1: (0.0, 0.3)}

    def evaluate(variants):
        rows = []
        for v in variants:
            w = v.weights.numpy()
            per_bucket = [
                -abs(w[b, 0] - best[b][0]) - abs(w[b, 1] - best[b][1]) if b in best else 0.0 for b in range(3)
            ]
            rows.append(np.array([per_bucket[b] for b in bucket]))
        return np.stack(rows), bucket

    ensemble = Ensemble([torch.nn.Identity()], ["pop"], torch.tensor([2, 5]), torch.tensor([[1.0, 0.0]] * 3))
    fitted, score = coordinate_ascent(ensemble, [0.0, 0.1, 0.3], 3, evaluate)
    assert torch.equal(fitted.weights, torch.tensor([[1.0, 0.1], [0.0, 0.3], [1.0, 0.0]]))
    assert score == 0.0


def test_the_fit_lifts_an_untrained_model_on_validation_and_never_falls_below_it(tmp_path):
    csv = chain_csv(tmp_path)
    seqs = load(Data(source=str(csv)), Split(), Head())
    torch.manual_seed(0)
    model = BACKBONES["gru4rec"](seqs.n_items, 20, dim=8)  # untrained: the members are all it can offer
    evaluator = Evaluator(model, seqs, Eval(), 20)
    cfg = EnsembleConfig(members=MEMBERS, edges=[3], weights=[0.0, 1.0, 10.0])
    members = fit_members(cfg, seqs, 20)

    def evaluate(variants):
        results = evaluator.run_many("valid", variants)
        return np.stack([r.per_user["ndcg@10"] for r in results]), np.searchsorted([3], results[0].lengths, "right")

    fitted, score = coordinate_ascent(start(cfg, members), cfg.weights, cfg.rounds, evaluate)
    plain = evaluator.run("valid").per_user["ndcg@10"]
    got = evaluator.run("valid", ensemble=fitted).per_user["ndcg@10"]
    assert got.mean() == pytest.approx(score) and got.mean() > plain.mean() + 0.3
    assert fitted.weights[1:, 2].min() > 0  # the transitions carry every bucket with users
    bucket = np.searchsorted([3], evaluator.run("valid").lengths, "right")
    for b in np.unique(bucket):
        assert got[bucket == b].mean() >= plain[bucket == b].mean()


def recipe_text(csv, kind="gru4rec", evaluation=""):
    return (
        f"name: b\ndata: {{source: {csv}, max_len: 10}}\n"
        f"backbone: {{kind: {kind}, dim: 8}}\ntrain: {{epochs: 1}}\n" + (f"eval: {evaluation}\n" if evaluation else "")
    )


def test_eval_fits_the_ensemble_and_compare_pairs_it_with_the_run_alone(tiny_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(recipe_text(tiny_csv))
    cli_ok(["train", "r.yaml"])
    shutil.copytree(tmp_path / "runs/b", tmp_path / "runs/alone")
    r = runner.invoke(app, ["eval", "runs/b", "--set", "eval.ensemble={weights: [0.0, 1.0]}", "--json"])
    assert r.exit_code == 0, r.output
    assert "ensemble of the model and pop, transitions" in json.loads(r.stdout)["protocol"]
    saved = json.loads((tmp_path / "runs/b/ensemble.json").read_text())
    assert saved["members"] == ["model", "pop", "transitions"] and saved["edges"] == [2, 3, 5, 8, 13, 21]
    assert len(saved["weights"]) == 7 and {w for row in saved["weights"] for w in row} <= {0.0, 1.0}
    # an ensemble changes scores, not the ranking protocol: "does it help?" is a paired comparison
    r = runner.invoke(app, ["compare", "runs/alone", "runs/b", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["protocol"].endswith("; scores of an ensemble in b")


def test_an_ensemble_fitted_on_a_finished_run_exports_with_set(tiny_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(recipe_text(tiny_csv, "sasrec"))
    cli_ok(["train", "r.yaml"])
    ensemble = "eval.ensemble={members: [{kind: pop}, {kind: ease, l2: 10}], weights: [0.0, 1.0, 4.0]}"
    cli_fails(["export", "runs/b", "--set", ensemble], "no fitted ensemble; fit it with `ltrec eval runs/b --set")
    cli_ok(["eval", "runs/b", "--set", ensemble])
    out = cli_ok(["export", "runs/b", "--set", ensemble])
    assert "parity on" in out and "identical top-10 lists" in out
    meta = json.loads((tmp_path / "runs/b/bundle/bundle.json").read_text())
    assert meta["ensemble"]["members"] == ["model", "pop", "ease"]
    assert meta["ensemble"]["settings"]["eval"]["ensemble"]["members"][1]["l2"] == 10
    assert meta["parity"]["topk_agreement"] >= 0.99 and meta["parity"]["max_score_diff"] <= 1e-4
    cli_fails(["export", "runs/b", "--out", "other", "--set", "train.lr=0.1"], "only eval.* keys can change")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"edges": [3, 3]}, "edges must increase"),
        ({"members": [{"kind": "pop"}, {"kind": "pop"}]}, "each kind at most once"),
        ({"members": [{"kind": "sasrec"}]}, "does not match any of the expected tags"),
        ({"members": []}, "at least 1 item"),
        ({"weights": [0.0, 1.0, 1.0]}, "each candidate once"),
        ({"weights": [0.0, -1.0]}, "greater than or equal to 0"),
        ({"members": [{"kind": "transitions", "window": 0}]}, "greater than or equal to 1"),
        ({"rounds": 0}, "greater than or equal to 1"),
        ({"members": [{"kind": "run", "path": "runs/a"}, {"kind": "run", "path": "runs/a"}]}, "each run at most once"),
        ({"members": [{"kind": "run"}]}, "path"),
    ],
)
def test_bad_ensembles_are_recipe_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        EnsembleConfig(**cfg)


@pytest.mark.parametrize("old, kind", [("pop_blend", "pop"), ("transition_blend", "transitions")])
def test_the_old_blend_keys_name_their_new_home(tmp_path, old, kind):
    (tmp_path / "r.yaml").write_text(recipe_text(tmp_path / "e.csv", evaluation=f"{{{old}: {{}}}}"))
    want = f"r.yaml: eval: {old}: the blends are members of eval.ensemble now; write "
    want += f"ensemble: {{members: [{{kind: {kind}}}]}}"
    with pytest.raises(UserError, match=re.escape(want)):
        load_recipe(tmp_path / "r.yaml")


def test_an_ease_member_above_its_catalogue_bound_is_a_user_error(tiny_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(
        recipe_text(tiny_csv, evaluation="{ensemble: {members: [{kind: ease, max_items: 3}]}}")
    )
    cli_fails(
        ["train", "r.yaml"], "eval.ensemble.members: ease: EASE solves a dense items × items system", "max_items (3)"
    )


def test_another_run_is_a_member_in_eval_and_in_the_exported_graph_and_a_retrained_one_is_refused(
    tiny_csv, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    # the member sees 5 items, the ensemble's run 10: the member is given the newest 5 of each history
    (tmp_path / "g.yaml").write_text(
        recipe_text(tiny_csv).replace("name: b", "name: g").replace("max_len: 10", "max_len: 5")
    )
    cli_ok(["train", "g.yaml"])
    members = "{members: [{kind: run, path: runs/g}, {kind: pop}], weights: [0.0, 1.0, 4.0]}"
    (tmp_path / "r.yaml").write_text(recipe_text(tiny_csv, "sasrec", evaluation=f"{{ensemble: {members}}}"))
    out = cli_ok(["train", "r.yaml"])
    assert "ensemble of the model and run, pop" in out
    saved = json.loads((tmp_path / "runs/b/ensemble.json").read_text())
    assert saved["members"] == ["model", "run", "pop"] and len(saved["checkpoints"]) == 1
    out = cli_ok(["export", "runs/b"])
    assert "identical top-10 lists" in out
    meta = json.loads((tmp_path / "runs/b/bundle/bundle.json").read_text())
    assert meta["ensemble"]["checkpoints"] == saved["checkpoints"]
    assert meta["parity"]["topk_agreement"] >= 0.99 and meta["parity"]["max_score_diff"] <= 1e-4
    # the member retrained: the fitted weights were chosen for another model, so they are refused, not reused
    cli_ok(["train", "g.yaml", "--overwrite", "--set", "seed=1"])
    cli_fails(["export", "runs/b", "--out", "again"], "members: run runs/g: its best.pt changed", "ltrec eval runs/b")
    assert not (tmp_path / "again").exists()
    cli_ok(["eval", "runs/b"])  # refits it
    assert "identical top-10 lists" in cli_ok(["export", "runs/b", "--out", "again"])


def test_a_run_member_that_cannot_serve_is_refused_before_training(tiny_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.yaml").write_text(recipe_text(tiny_csv).replace("name: b", "name: g"))
    cli_ok(["train", "g.yaml", "--set", "head.fraction=0.5"])  # other head settings: another fingerprint
    shutil.copytree(tmp_path / "runs/g", tmp_path / "runs/unfinished")
    (tmp_path / "runs/unfinished/best.pt").unlink()
    for path, message in [
        ("runs/unfinished", "members: run runs/unfinished: has no best.pt: it is not finished"),
        ("runs/g", "members: run runs/g: was trained on other data, another split or other head settings"),
        ("runs/none", "members: run runs/none: no such run directory"),
        ("runs/b", "members: run runs/b: is this run itself"),
    ]:
        ensemble = f"{{ensemble: {{members: [{{kind: run, path: {path}}}]}}}}"
        (tmp_path / "r.yaml").write_text(recipe_text(tiny_csv, evaluation=ensemble))
        out = cli_fails(["train", "r.yaml", "--overwrite"], message)
        assert "epoch 1" not in out
