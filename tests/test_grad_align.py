"""ltrec.training.transfer.grad_align: plain Adam steps and gradient alignment's inner and outer updates, exactly."""

import copy

import pytest
import torch
from conftest import next_item_loss, record, runner_for

from ltrec.models import BACKBONES
from ltrec.training.transfer.grad_align import AdamSteps, Reptile


def test_k1_beta1_sgd_is_plain_sgd(tiny_csv):
    """k=1, β=1, inner SGD: every outer iteration is exactly one SGD step on that step's windows."""
    ga = {"k": 1, "beta": 1.0, "inner_optimizer": "sgd", "inner_lr": 0.1, "users_per_step": 4, "sampling": "uniform"}
    _, seqs, model, runner = runner_for(tiny_csv, grad_align=ga)
    inputs, targets, _ = (torch.from_numpy(a) for a in seqs.train_windows(10))
    reference = copy.deepcopy(model)
    seen = record(runner)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    for idx in seen:  # replay the same batches with a plain SGD loop
        width = int((inputs[idx] > 0).sum(1).max())
        loss = next_item_loss(reference, inputs[idx, -width:], targets[idx, -width:])
        sgd.zero_grad()
        loss.backward()
        sgd.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("outer", ["interpolate", "adam"])
def test_outer_step_interpolates_or_feeds_adam_the_pseudo_gradient(tiny_csv, outer):
    ga = {"k": 3, "beta": 0.3, "inner_optimizer": "sgd", "inner_lr": 0.1, "outer": outer}
    _, _, model, runner = runner_for(tiny_csv, grad_align=ga)
    params = runner.parameters()
    theta0 = [p.detach().clone() for p in params]
    moved = [p + torch.randn_like(p) for p in theta0]
    with torch.no_grad():
        for p, m in zip(params, moved):
            p.copy_(m)
    reference = [torch.nn.Parameter(p0.clone()) for p0 in theta0]
    adam = torch.optim.Adam(reference, lr=runner.update.outer.adam.param_groups[0]["lr"]) if outer == "adam" else None
    runner.update.outer(theta0, 1.0)
    if adam is not None:
        for r, p0, pk in zip(reference, theta0, moved):
            r.grad = p0 - pk
        adam.step()
    for p, p0, pk, r in zip(params, theta0, moved, reference):
        torch.testing.assert_close(p, p0 + 0.3 * (pk - p0) if adam is None else r.detach())


def test_outer_step_with_weight_0_restores_theta0(tiny_csv):
    _, _, _, runner = runner_for(tiny_csv, grad_align={"k": 2})
    params = runner.parameters()
    theta0 = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    runner.update.outer(theta0, 0.0)  # no rank took a step: nothing moves
    assert all(torch.equal(p, p0) for p, p0 in zip(params, theta0))


def test_unaligned_embeddings_keep_their_inner_result(tiny_csv):
    _, _, model, runner = runner_for(tiny_csv, grad_align={"k": 2, "beta": 0.5, "align_embeddings": False})
    params = runner.parameters()
    theta0 = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    runner.update.outer(theta0, 1.0)
    emb = model.item_emb.weight
    torch.testing.assert_close(emb, theta0[0] + 1.0)  # θ_k, untouched by the outer step
    torch.testing.assert_close(params[1], theta0[1] + 0.5)


def test_inner_steps_use_distinct_users(tiny_csv):
    ga = {"k": 4, "users_per_step": 3, "sampling": "uniform"}
    _, seqs, _, runner = runner_for(tiny_csv, grad_align=ga)
    owner = torch.from_numpy(seqs.train_windows(10)[2])
    groups = [set(owner[idx].tolist()) for idx in record(runner)]
    for i in range(0, len(groups) - 3, 4):  # within one outer iteration no user appears in two inner steps
        it = groups[i : i + 4]
        assert sum(len(g) for g in it) == len(set().union(*it))


@pytest.mark.parametrize(
    "transfer",
    [
        {},
        {"adversarial": {}},
        {"grad_align": {"k": 3, "users_per_step": 4, "sampling": "uniform"}},
        {"grad_align": {"outer": "adam"}, "adversarial": {"warmup_epochs": 1}},
    ],
)
def test_every_mode_trains_and_its_state_reloads(tiny_csv, transfer):
    _, _, _, runner = runner_for(tiny_csv, **transfer)
    assert isinstance(runner.update, Reptile if "grad_align" in transfer else AdamSteps)
    first = runner(lambda n, loss: None)
    second = runner(lambda n, loss: None)
    assert second["loss"] < first["loss"] or "grad_align" in transfer
    assert ("disc_acc" in first) == ("adversarial" in transfer)
    state = runner.state_dict()
    *_, again = runner_for(tiny_csv, **transfer)
    again.load_state_dict(state)
    assert again.epoch == 2


@pytest.mark.parametrize("kind", ["sasrec", "caser", "narm", "bert4rec"])
def test_every_backbone_with_both_components(tiny_csv, kind):
    """Model-agnostic in practice: GA + AT run unchanged on every backbone (BERT4Rec with its cloze loss),
    and the discriminator reads the state that the backbone's training_loss returns."""
    *_, runner = runner_for(
        tiny_csv, kind, grad_align={"k": 2, "users_per_step": 4, "sampling": "uniform"}, adversarial={}
    )
    seen = []
    disc = runner.objective.adversary.disc
    real = disc.forward
    disc.forward = lambda h: seen.append(h.shape) or real(h)
    stats = runner(lambda n, loss: None)
    assert torch.isfinite(torch.tensor(stats["loss"])) and 0 <= stats["disc_acc"] <= 1
    assert seen and all(s[1] == 8 for s in seen)
    assert len(runner.update.outer.aligned) == len(runner.parameters())  # the discriminator is aligned too
    assert len(runner.parameters()) == len(list(BACKBONES[kind](10, 10, dim=8).parameters())) + 4
