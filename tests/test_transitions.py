"""ltrec.blend.transitions: scores + w·log(1 + the transitions of the newest items) per history-length bucket."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ltrec.blend.popularity import FittedPopBlend, prior
from ltrec.blend.transitions import FittedTransitionBlend, fit
from ltrec.blend.transitions import prior as transition_prior
from ltrec.cli import app
from ltrec.data import load
from ltrec.evaluation.engine import Evaluator
from ltrec.evaluation.ranks import target_ranks
from ltrec.models import BACKBONES
from ltrec.models.neighbours import Table
from ltrec.models.neighbours import transition_table as build
from ltrec.recipe import Data, Eval, Head, Split, TransitionBlend

runner = CliRunner()


def two_users(direction: str, neighbours: int = 10) -> Table:
    # user 0 trains on 1 2 3; user 1 on 2 3 only (its 4 and 5 are held out for validation and test)
    items, offsets, train = np.array([1, 2, 3, 2, 3, 4, 5]), np.array([0, 3, 7]), np.array([3, 2])
    return build(items, offsets, train, 5, window=2, neighbours=neighbours, direction=direction)


def as_dense(table: Table) -> np.ndarray:
    dense = np.zeros((table.ids.shape[0],) * 2)
    np.add.at(
        dense, (np.arange(len(dense))[:, None].repeat(table.ids.shape[1], 1), table.ids.numpy()), table.strength.numpy()
    )
    dense[:, 0] = 0  # empty slots point at the padding item with strength 0
    return dense


def test_transitions_count_training_events_only_weighted_by_distance():
    forward = as_dense(two_users("forward"))
    want = np.zeros((6, 6))
    want[1, 2], want[2, 3], want[1, 3] = 1.0, 2.0, 0.5  # 1→2, 2→3 twice, 1→3 two apart
    np.testing.assert_allclose(forward, want)
    np.testing.assert_allclose(as_dense(two_users("both")), want + want.T)


def test_each_item_keeps_its_strongest_neighbours():
    table = two_users("forward", neighbours=1)
    assert table.ids.shape == (6, 1)
    assert table.ids[1].tolist() == [2] and table.strength[1].tolist() == [1.0]  # 1→2 (1.0) beats 1→3 (0.5)
    assert table.ids[0].tolist() == [0] and table.strength[0].tolist() == [0.0]  # padding leads nowhere


def test_the_prior_sums_the_newest_items_transitions_halving_with_age():
    torch.manual_seed(0)
    n, k = 9, 4
    table = Table(torch.randint(1, n + 1, (n + 1, k)), torch.rand(n + 1, k))
    table.ids[0], table.strength[0] = 0, 0.0
    dense = torch.from_numpy(as_dense(table)).float()
    history = torch.tensor([[0, 0, 0, 0, 7], [0, 0, 3, 5, 7], [1, 2, 3, 4, 5]])
    want = torch.zeros(3, n + 1)
    for b, row in enumerate(history):
        for age, item in enumerate(row.flip(0)[:3]):
            want[b] += 0.5**age * dense[item]
    torch.testing.assert_close(transition_prior(table, history, last=3), torch.log1p(want))
    # a history cut to its own length (as predict batches it) has the same prior
    torch.testing.assert_close(transition_prior(table, history[:1, -1:], last=3), torch.log1p(want[:1]))


def chain_csv(tmp_path):
    """Users walk item → item + 1 from a random start: the transitions know the next item."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(150):
        start = int(rng.integers(1, 40))
        rows += [f"u{u},{start + t},{t}" for t in range(int(rng.integers(3, 9)))]
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    return tmp_path / "e.csv"


@pytest.mark.parametrize("kind", ["sasrec", "pop"])  # tied: eval would otherwise rank by dot products; pop's
def test_blended_ranks_are_the_blended_score_matrix_ranked(tmp_path, kind):  # scores are one row for everyone
    seqs = load(Data(source=str(chain_csv(tmp_path))), Split(), Head())
    torch.manual_seed(0)
    model = BACKBONES[kind](seqs.n_items, 20, dim=8)
    if kind == "pop":
        model.fit(seqs)
    table = build(seqs.items, seqs.offsets, seqs.train_lengths, seqs.n_items, 3, 10, "both")
    blend = FittedTransitionBlend(torch.tensor([3, 6]), torch.tensor([2.0, 0.5, 0.0]), table, 2, "both")
    fast = Evaluator(model, seqs, Eval(), 20).run("test", transitions=blend)
    users, history, target = seqs.eval_inputs("test", 20)
    with torch.no_grad():
        hist = torch.from_numpy(history)
        scores = (
            model(hist)
            + blend.weight(hist)[:, None]
            * torch.log1p(sum(0.5**j * torch.from_numpy(as_dense(table)).float()[hist[:, -1 - j]] for j in range(2)))[
                :, 1:
            ]
        )
    from ltrec.evaluation.ranks import Seen

    seen = Seen.of(*(torch.from_numpy(a) for a in seqs.seen(users, "test")))
    want = target_ranks(scores, torch.from_numpy(target), seen).numpy()
    assert np.array_equal(fast.per_user["rank"][: len(want)], want)


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_blends_ranked_together_are_each_ranked_alone(tmp_path, kind):  # the fit shares one forward pass
    seqs = load(Data(source=str(chain_csv(tmp_path))), Split(cold_users=0.2), Head())
    torch.manual_seed(0)
    model = BACKBONES[kind](seqs.n_items, 20, dim=8)
    evaluator = Evaluator(model, seqs, Eval(adapt={"steps": 1, "lr": 0.1}), 20)
    table = build(seqs.items, seqs.offsets, seqs.train_lengths, seqs.n_items, 3, 10, "forward")
    edges = torch.tensor([3, 6])
    pop = FittedPopBlend(edges, torch.tensor([1.0, 0.3, 0.0]), prior(seqs.item_counts()))
    trans = FittedTransitionBlend(edges, torch.tensor([2.0, 0.5, 0.0]), table, 2, "forward")
    for pairs in ([(None, None), (pop, None)], [(None, None), (pop, None), (None, trans), (pop, trans)]):
        together = evaluator.run_many("valid", pairs)
        for (blend, transitions), result in zip(pairs, together):
            alone = evaluator.run("valid", blend=blend, transitions=transitions)
            assert np.array_equal(result.per_user["rank"], alone.per_user["rank"])
            assert list(result.slice_of) == list(alone.slice_of) and "cold-adapted" in alone.slice_of
        assert not np.array_equal(together[0].per_user["rank"], together[1].per_user["rank"])


def test_fit_picks_the_direction_and_weights_on_validation(tmp_path):
    seqs = load(Data(source=str(chain_csv(tmp_path))), Split(), Head())
    torch.manual_seed(0)
    model = BACKBONES["gru4rec"](seqs.n_items, 20, dim=8)  # untrained: the transitions are all it can offer
    evaluator = Evaluator(model, seqs, Eval(), 20)
    blend = fit(evaluator, TransitionBlend(edges=[3], weights=[0.0, 10.0]), seqs, "ndcg@10")
    # the next item follows the last one: counting pairs backwards too only adds the item before it
    assert blend.direction == "forward" and blend.weights.tolist() == [10.0, 10.0]
    plain = evaluator.run("valid").per_user["ndcg@10"].mean()
    assert evaluator.run("valid", transitions=blend).per_user["ndcg@10"].mean() > plain + 0.3


def test_a_damaged_fitted_blend_is_named_with_the_way_out(tiny_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(
        f"name: b\ndata: {{source: {tiny_csv}, max_len: 10}}\n"
        "backbone: {kind: gru4rec, dim: 8}\ntrain: {epochs: 1}\n"
        "eval: {transition_blend: {weights: [0.0, 1.0]}}\n"
    )
    assert runner.invoke(app, ["train", "r.yaml"]).exit_code == 0
    (tmp_path / "runs/b/transition_blend.json").write_text('{"direction": "sideways", "edges": [], "weights": [1]}')
    r = runner.invoke(app, ["export", "runs/b"])
    assert (
        r.exit_code == 2
        and "transition_blend.json: written by an older ltrec, which did not record the settings" in r.output
        and "refit it: `ltrec eval runs/b`" in r.output
        and "Traceback" not in r.output
    )
    assert not (tmp_path / "runs/b/bundle").exists()


def test_a_blend_fitted_on_a_finished_run_exports_with_set(tiny_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(
        f"name: b\ndata: {{source: {tiny_csv}, max_len: 10}}\n"
        "backbone: {kind: sasrec, dim: 8}\ntrain: {epochs: 1}\n"
    )
    assert runner.invoke(app, ["train", "r.yaml"]).exit_code == 0
    blend = "eval.transition_blend={weights: [1.0]}"
    r = runner.invoke(app, ["export", "runs/b", "--set", blend])
    assert r.exit_code == 2 and "no fitted transition blend" in r.output, r.output  # fit it first
    assert runner.invoke(app, ["eval", "runs/b", "--set", blend]).exit_code == 0
    r = runner.invoke(app, ["export", "runs/b", "--set", blend])
    assert r.exit_code == 0 and "parity on" in r.output, r.output
    meta = json.loads((tmp_path / "runs/b/bundle/bundle.json").read_text())
    weights = meta["transition_blend"]["weights"]  # 1.0 wherever a bucket has users, 0.0 where none
    assert 1.0 in weights and set(weights) <= {0.0, 1.0}
    assert meta["transition_blend"]["settings"]["eval"]["transition_blend"]["last"] == 5
    r = runner.invoke(app, ["export", "runs/b", "--out", "other", "--set", "train.lr=0.1"])
    assert r.exit_code == 2 and "only eval.* keys can change after training" in r.output
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"edges": [3, 3]}, "edges must increase"),
        ({"directions": ["forward", "forward"]}, "each candidate once"),
        ({"directions": ["backward"]}, "forward"),
        ({"window": 0}, "greater"),
    ],
)
def test_bad_blends_are_recipe_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        TransitionBlend(**cfg)
