"""ltrec.training.transfer.robust: CVaR, group DRO and the balanced loss over the batch's users, exactly, and through
training."""

import json

import numpy as np
import pytest
import torch
from conftest import runner_for
from typer.testing import CliRunner

from ltrec.cli import app
from ltrec.recipe import Balanced, GroupDRO
from ltrec.training.transfer.robust import BalancedLoss, GroupDROLoss, cvar, length_groups

runner = CliRunner()


def test_cvar_with_alpha_1_is_the_plain_mean_loss():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(50, generator=g) * 5
    users = torch.randint(0, 7, (50,), generator=g)
    torch.testing.assert_close(cvar(losses, users, 1.0), losses.mean())


def test_cvar_is_the_mean_of_the_worst_users_by_weight():
    # users a (mean 4, 1 target), b (mean 2, 2 targets), c (mean 1, 1 target); weights 1/4, 1/2, 1/4
    losses = torch.tensor([4.0, 1.0, 3.0, 1.0])
    users = torch.tensor([0, 1, 1, 2])
    torch.testing.assert_close(cvar(losses, users, 0.25), torch.tensor(4.0))  # a alone
    torch.testing.assert_close(cvar(losses, users, 0.5), torch.tensor(3.0))  # a, and half of b's weight
    torch.testing.assert_close(cvar(losses, users, 0.75), torch.tensor((4 * 0.25 + 2 * 0.5) / 0.75))
    x = losses.clone().requires_grad_()
    cvar(x, users, 0.25).backward()
    assert x.grad.tolist() == [1.0, 0.0, 0.0, 0.0]  # only the worst user's targets are trained on


def test_balanced_weights_fall_with_a_user_s_training_targets():
    lengths = np.array([2, 3, 5, 0])  # 1, 2 and 4 training targets; a user without any weighs as one target
    users = torch.tensor([2, 0, 1, 3, 0])
    assert BalancedLoss(Balanced(kind="balanced", power=0), lengths).weights(users).tolist() == [1.0] * 5
    assert BalancedLoss(Balanced(kind="balanced"), lengths).weights(users).tolist() == [0.25, 1.0, 0.5, 1.0, 1.0]
    assert BalancedLoss(Balanced(kind="balanced", power=0.5), lengths).weights(users).tolist() == [
        0.5,
        1.0,
        pytest.approx(2**-0.5),
        1.0,
        1.0,
    ]


def test_the_balanced_objective_is_the_batch_s_targets_weighted_by_their_users(tiny_csv):
    """Through the objective's fused mean: Σ_t w_u(t)·ℓ_t / Σ_t w_u(t), w_u = 1 / (training targets of u)."""
    _, seqs, _, runner_ = runner_for(tiny_csv, "gru4rec", robust={"kind": "balanced", "power": 1.0})
    obj = runner_.objective
    idx = torch.arange(min(16, len(obj.inputs)))
    width = int(obj.lengths[idx].max())
    inputs, targets = obj.inputs[idx, -width:], obj.targets[idx, -width:]
    with torch.no_grad():
        got = obj._objective(idx, inputs, width)[0]
        (each, rows), _ = obj.model.training_loss(inputs, targets, per_target=True)
    w = 1 / torch.from_numpy(seqs.train_lengths - 1).float()[obj.owner[idx][rows]]
    assert len(set(w.tolist())) > 1  # users of different lengths: the weighting matters
    torch.testing.assert_close(got, (w * each).sum() / w.sum())
    assert not torch.allclose(got, each.mean())


def test_group_dro_moves_weight_to_the_worse_group():
    loss = GroupDROLoss(GroupDRO(kind="group_dro", step=0.5), torch.tensor([0, 0, 1, 1]))
    users = torch.tensor([0, 1, 2, 3])
    losses = torch.tensor([1.0, 1.0, 3.0, 3.0])  # group 1 is served worse
    for _ in range(5):
        value = loss(losses, users)
    q = loss.q.tolist()
    assert q[1] > 0.9 > 0.1 > q[0] and sum(q) == pytest.approx(1.0)
    assert float(value) == pytest.approx(q[0] * 1.0 + q[1] * 3.0)
    assert set(loss.stats()) == {"dro_q0", "dro_q1"}


def test_length_groups_are_quantiles_or_head_tail():
    lengths = np.array([1, 1, 2, 3, 5, 8, 13, 21])
    head = lengths >= 8
    assert length_groups(lengths, head, GroupDRO(kind="group_dro", groups="head_tail")).tolist() == head.tolist()
    groups = length_groups(lengths, head, GroupDRO(kind="group_dro", n_groups=4))
    assert groups.tolist() == sorted(groups.tolist()) and len(set(groups.tolist())) == 4


@pytest.mark.parametrize(
    "robust",
    [
        {"kind": "cvar", "alpha": 0.3, "mix": 0.2},
        {"kind": "group_dro", "step": 0.1},
        {"kind": "balanced", "power": 0.5},
    ],
)
@pytest.mark.parametrize("kind", ["gru4rec", "sasrec", "caser", "narm", "bert4rec"])
def test_every_backbone_trains_with_a_robust_objective(tiny_csv, kind, robust):
    *_, runner_ = runner_for(tiny_csv, kind, robust=robust)
    stats = runner_(lambda n, loss: None)
    assert np.isfinite(stats["loss"]) and (("dro_q0" in stats) == (robust["kind"] == "group_dro"))


def test_robust_objectives_with_both_paper_components(tiny_csv):
    *_, runner_ = runner_for(
        tiny_csv, "sasrec", robust={"kind": "group_dro"}, grad_align={"k": 2}, adversarial={"weight": 0.1}
    )
    stats = runner_(lambda n, loss: None)
    assert np.isfinite(stats["loss"]) and "disc_acc" in stats and "dro_q1" in stats
    state = runner_.state_dict()
    assert 2 <= len(state["objective"]["robust"]["q"]) <= 4  # quantiles of tied lengths can merge


def test_group_dro_weights_survive_resume(tmp_path, tiny_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: g\ndata: {{source: {tiny_csv}, max_len: 10}}\nbackbone: {{kind: gru4rec, dim: 8}}\n"
        "transfer: {robust: {kind: group_dro, step: 0.2}}\n"
        "train: {epochs: 4, batch_size: 16, patience: 10}\n"
    )
    assert runner.invoke(app, ["train", str(recipe), "--out", "full"]).exit_code == 0
    assert runner.invoke(app, ["train", str(recipe), "--out", "cut", "--set", "train.epochs=2"]).exit_code == 0
    r = runner.invoke(app, ["train", str(recipe), "--out", "cut", "--resume"])
    assert r.exit_code == 0 and "resuming cut after epoch 2" in r.output, r.output
    full, cut = (
        [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("full", "cut")
    )
    assert [e["dro_q0"] for e in full] == [e["dro_q0"] for e in cut]  # q carried across the resume
    assert len({round(e["dro_q0"], 6) for e in full}) > 1  # and it moved
    assert (
        json.loads((tmp_path / "cut/metrics.json").read_text())["test"]
        == json.loads((tmp_path / "full/metrics.json").read_text())["test"]
    )


ML100K = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared/data/movielens-100k/interactions.csv"


@pytest.mark.parametrize(
    "kind, robust",
    [("sasrec", "cvar"), ("gru4rec", "group_dro"), ("caser", "cvar"), ("narm", "group_dro"), ("bert4rec", "cvar")],
)
def test_the_tail_components_train_on_the_init_example_for_every_backbone(tmp_path, monkeypatch, kind, robust):
    """`ltrec init`'s recipe (MovieLens-100K; a synthetic log where the shared data is absent) with a robust
    objective, the user branch, the contrastive term (not bert4rec's) and the popularity blend together, through
    the CLI, for every backbone."""
    from conftest import write_long_tailed

    monkeypatch.chdir(tmp_path)
    data = ML100K if ML100K.exists() else write_long_tailed(tmp_path / "events.csv", users=300)
    assert runner.invoke(app, ["init", "demo", "--data", str(data)]).exit_code == 0
    r = runner.invoke(
        app,
        [
            "train",
            "demo/recipe.yaml",
            "--set",
            f"backbone.kind={kind}",
            "--set",
            "backbone.dim=8",
            "--set",
            "data.max_len=20",
            "--set",
            "train.epochs=1",
            "--set",
            f"transfer.robust={{kind: {robust}}}",
            "--set",
            "transfer.user_branch={}",
            "--set",
            "eval.ensemble={members: [{kind: pop}], weights: [0.0, 0.3], rounds: 1}",
            "--set",
            "transfer.contrastive=" + ("null" if kind == "bert4rec" else "{}"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "branch_loss" in r.output and ("dro_q0" in r.output) == (robust == "group_dro")
    assert ("cl_loss" in r.output) == (kind != "bert4rec")
    metrics = json.loads((tmp_path / "runs/my-sasrec/metrics.json").read_text())
    assert "ensemble of the model and pop" in metrics["protocol"]


@pytest.mark.parametrize(
    "value, message",
    [
        ("{kind: balanced, power: 3}", "transfer.robust.power"),
        ("{kind: balance}", "expected one of cvar, group_dro, balanced"),
        ("{kind: balanced, alpha: 0.5}", "transfer.robust.alpha"),
    ],
)
def test_a_bad_robust_section_is_a_clear_user_error(tmp_path, monkeypatch, value, message):
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["init", "demo"]).exit_code == 0
    r = runner.invoke(app, ["validate", "demo/recipe.yaml", "--set", f"transfer.robust={value}"])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
