"""`grad_align.chains`: vmapped Reptile chains equal a per-chain loop, and each piece equals its reference."""

import pytest
import torch

from ltrec.chains import ChainsEpoch
from ltrec.data import load
from ltrec.models import GRU4Rec, SASRec
from ltrec.recipe import Recipe
from ltrec.transfer import Step, make_epoch

from test_transfer import recipe_for


def build(path, kind="gru4rec", vectorized=True, adversarial=None, **ga):
    ga = {k: v for k, v in {"k": 2, "users_per_step": 4, "sampling": "uniform", "chains": 3, **ga}.items()
          if v is not None}
    recipe = recipe_for(path, grad_align=ga, **({"adversarial": adversarial} if adversarial else {}))
    seqs = load(recipe.data, recipe.split, recipe.head)
    torch.manual_seed(0)
    model = (GRU4Rec(seqs.n_items, 10, dim=8, dropout=0.0) if kind == "gru4rec"
             else SASRec(seqs.n_items, 10, dim=8, layers=1, heads=2, dropout=0.0))
    inputs, targets, owner = (torch.from_numpy(a) for a in seqs.train_windows(10))
    gen = torch.Generator().manual_seed(0)
    step = Step(recipe, model, inputs, targets, torch.from_numpy(seqs.head)[owner], "cpu", gen)
    return ChainsEpoch(recipe, step, owner, torch.from_numpy(seqs.head), vectorized=vectorized)


# not sasrec + adam: attention's key bias has an exactly-zero gradient (softmax ignores a shift), so Adam
# turns float noise of either sign into full-size steps and the two orders of summation part ways
@pytest.mark.parametrize("kind, inner, state", [("gru4rec", "sgd", "last"), ("gru4rec", "adam", "last"),
                                               ("sasrec", "sgd", "last"), ("sasrec", "sgd", "matched")])
def test_vmapped_chains_match_a_loop(tiny_csv, kind, inner, state):
    runs = []
    for vectorized in (True, False):
        torch.manual_seed(0)
        epoch = build(tiny_csv, kind, vectorized, adversarial={"weight": 0.2, "state": state},
                      inner_optimizer=inner, inner_lr=0.05)
        stats = epoch(lambda n, loss: None)
        runs.append((epoch, stats))
    (a, sa), (b, sb) = runs
    for p, q in zip(a.step.parameters(), b.step.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    assert sa["loss"] == pytest.approx(sb["loss"], rel=1e-5)
    assert sa["disc_acc"] == pytest.approx(sb["disc_acc"])
    fresh = build(tiny_csv, kind, adversarial={"weight": 0.2})
    assert any(not torch.equal(p, q) for p, q in zip(a.step.parameters(), fresh.step.parameters()))  # it trained


def test_objective_equals_step_loss(tiny_csv):
    """The padded, pure-function loss is Step.loss (next-item CE + balanced BCE) on the same windows."""
    epoch = build(tiny_csv, "sasrec", adversarial={"weight": 0.3})
    step = epoch.step
    step.model.eval()
    groups = [epoch.sampler.users.new_tensor([0, 1, 2]), epoch.sampler.users.new_tensor([3, 4]), epoch.sampler.users.new_tensor([5])]
    idx = [epoch._windows_of(g) for g in groups]
    batch, _ = epoch._batch(idx)
    for c, i in enumerate(idx):
        params = dict(epoch.objective.named_parameters())
        loss, _ = epoch._loss(params, *(t[c] for t in batch))
        torch.testing.assert_close(loss, step.loss(i), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["gru4rec", "sasrec"])
def test_objective_equals_step_loss_with_matched_states(tiny_csv, kind):
    """adversarial.state matched: the vmappable objective reads the same prefix encodings as Step.loss."""
    epoch = build(tiny_csv, kind, adversarial={"weight": 0.3, "state": "matched"})
    step = epoch.step
    step.model.eval()
    assert step.longest_tail > 0
    for users in ([0, 1, 2], [3, 4, 5, 6]):
        i = epoch._windows_of(epoch.sampler.users.new_tensor(users))
        before = step.gen.get_state()
        batch, _ = epoch._batch([i])
        step.gen.set_state(before)  # the same draw of item counts
        loss, (logits, _) = epoch._loss(dict(epoch.objective.named_parameters()), *(t[0] for t in batch))
        seen = []
        real = step.disc.forward
        step.disc.forward = lambda h: seen.append(real(h)) or seen[-1]
        torch.testing.assert_close(loss, step.loss(i), rtol=1e-5, atol=1e-6)
        step.disc.forward = real
        torch.testing.assert_close(logits[:len(i)], seen[0], rtol=1e-5, atol=1e-7)  # D read the same states


def test_inner_adam_equals_torch_adam(tiny_csv):
    epoch = build(tiny_csv, inner_optimizer="adam", inner_lr=0.01)
    p = torch.randn(3, 5)  # three chains of one parameter
    ref = [torch.nn.Parameter(p[c].clone()) for c in range(3)]
    opts = [torch.optim.Adam([r], lr=0.01) for r in ref]
    epoch.moments = {"m": [torch.zeros(3, 5)], "v": [torch.zeros(3, 5)], "t": torch.zeros(3)}
    params = {"x": p}
    for _ in range(4):
        g = torch.randn(3, 5)
        epoch._inner_update(params, {"x": g}, torch.zeros(3), torch.ones(3, dtype=torch.bool))
        for c in range(3):
            ref[c].grad = g[c].clone()
            opts[c].step()
    torch.testing.assert_close(params["x"], torch.stack([r.detach() for r in ref]), rtol=1e-5, atol=1e-6)


def test_outer_step_moves_toward_the_chains_mean(tiny_csv):
    """With β = 1 and one iteration covering every user, the result is the mean of the chains' θ_k."""
    epoch = build(tiny_csv, beta=0.4, inner_optimizer="sgd", inner_lr=0.1)
    theta0 = [p.detach().clone() for p in epoch.aligned]
    captured = {}
    real = epoch._inner_update

    def spy(params, grads, loss, active):
        real(params, grads, loss, active)
        captured["params"] = {n: p.clone() for n, p in params.items()}
    epoch._inner_update = spy
    us = epoch.sampler
    us.users = us.users[: 3 * 2 * 4]  # exactly one iteration: 3 chains × k 2 × 4 users
    us.weights = us.weights[: len(us.users)]
    epoch.all_users = len(us.users)
    epoch(lambda n, loss: None)
    for (name, p), p0 in zip(epoch.objective.named_parameters(), theta0):
        expected = p0 + 0.4 * (captured["params"][name].mean(0) - p0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_chains_draw_distinct_users_per_step(tiny_csv):
    epoch = build(tiny_csv)
    owners = []
    real = epoch._batch
    us = epoch.sampler
    owner = epoch.owner
    epoch._batch = lambda idx: owners.append([sorted(set(owner[i].tolist())) for i in idx]) or real(idx)
    us.users, us.weights, epoch.all_users = us.users[:24], us.weights[:24], 24
    epoch(lambda n, loss: None)
    flat = [u for step in owners for chain in step for u in chain]
    assert len(flat) == len(set(flat)) == 24


def test_make_epoch_and_recipe_rules(tiny_csv):
    recipe = recipe_for(tiny_csv, grad_align={"chains": 2, "users_per_step": 4, "sampling": "uniform"})
    seqs = load(recipe.data, recipe.split, recipe.head)
    inputs, targets, owner = (torch.from_numpy(a) for a in seqs.train_windows(10))
    model = GRU4Rec(seqs.n_items, 10, dim=8)
    assert isinstance(make_epoch(recipe, model, seqs, inputs, targets, owner, "cpu", torch.Generator()), ChainsEpoch)
    raw = recipe.model_dump()
    raw["train"]["loss"] = "bce"
    with pytest.raises(ValueError, match="chains train with train.loss ce only"):
        Recipe.model_validate(raw)


def test_chains_with_windows_sampling_see_every_window_once_in_user_disjoint_batches(tiny_csv):
    epoch = build(tiny_csv, sampling="windows", users_per_step=None)
    iterations, real = [], epoch._plan

    def recording(parts):
        n, plan = real(parts)
        return n, (iterations.append(list(groups)) or iterations[-1] for groups in plan)

    epoch._plan = recording
    epoch(lambda n, loss: None)
    assert all(len(groups) == epoch.chains * epoch.ga.k for groups in iterations)
    seen = torch.cat([b for groups in iterations for b in groups])
    assert sorted(seen.tolist()) == list(range(len(epoch.owner)))  # plain training's data: every window once
    for groups in iterations:  # no user in two batches of one outer iteration
        users = [set(epoch.owner[b].tolist()) for b in groups]
        assert sum(len(u) for u in users) == len(set().union(*users))


def test_chains_with_permuted_sampling_see_every_user_once_per_epoch(tiny_csv):
    epoch = build(tiny_csv, sampling="permuted", users_per_step=2)
    steps = []
    real = epoch._batch
    epoch._batch = lambda idx: steps.append([sorted(set(epoch.owner[i].tolist())) for i in idx]) or real(idx)
    epoch(lambda n, loss: None)
    flat = [u for step in steps for chain in step for u in chain]
    assert sorted(flat) == sorted(set(epoch.owner.tolist()))  # each user in exactly one chain's step
    assert all(len(chain) <= 2 for step in steps for chain in step)
