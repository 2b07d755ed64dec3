"""ltrec.training.transfer.chains: vmapped Reptile chains equal a per-chain loop, and each piece equals its
reference."""

import pytest
import torch
from conftest import recipe_for, runner_for

from ltrec.recipe import Recipe
from ltrec.training.sampling import drawn_plan
from ltrec.training.transfer.chains import Chains


def build(path, kind="gru4rec", vectorized=True, adversarial=None, **ga):
    ga = {
        k: v
        for k, v in {"k": 2, "users_per_step": 4, "sampling": "uniform", "chains": 3, **ga}.items()
        if v is not None
    }
    torch.manual_seed(0)
    _, seqs, model, runner = runner_for(
        path, kind, grad_align=ga, **({"adversarial": adversarial} if adversarial else {})
    )
    if not vectorized:  # the same chains, one after the other
        torch.manual_seed(0)
        *_, runner = runner_for(path, kind, grad_align=ga, **({"adversarial": adversarial} if adversarial else {}))
        runner.update = Chains(runner.objective, runner.update.cfg, recipe_for(path).train.lr, vectorized=False)
    return runner


# not sasrec + adam: attention's key bias has an exactly-zero gradient (softmax ignores a shift), so Adam
# turns float noise of either sign into full-size steps and the two orders of summation part ways
@pytest.mark.parametrize(
    "kind, inner, state",
    [
        ("gru4rec", "sgd", "last"),
        ("gru4rec", "adam", "last"),
        ("sasrec", "sgd", "last"),
        ("sasrec", "sgd", "matched"),
        ("narm", "sgd", "last"),
    ],
)  # narm: a table shared by two modules
def test_vmapped_chains_match_a_loop(tiny_csv, kind, inner, state):
    runs = []
    for vectorized in (True, False):
        runner = build(
            tiny_csv,
            kind,
            vectorized,
            adversarial={"weight": 0.2, "state": state},
            inner_optimizer=inner,
            inner_lr=0.05,
        )
        stats = runner(lambda n, loss: None)
        runs.append((runner, stats))
    (a, sa), (b, sb) = runs
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    assert sa["loss"] == pytest.approx(sb["loss"], rel=1e-5)
    assert isinstance(a.objective.model.item_emb.weight, torch.nn.Parameter)  # the swapped weights went back
    assert sa["disc_acc"] == pytest.approx(sb["disc_acc"])
    fresh = build(tiny_csv, kind, adversarial={"weight": 0.2})
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), fresh.parameters()))  # it trained


@pytest.mark.parametrize("kind, state", [("sasrec", "last"), ("gru4rec", "matched"), ("sasrec", "matched")])
def test_padded_objective_equals_the_objective(tiny_csv, kind, state):
    """The padded, pure-function loss is Objective.loss (next-item CE + balanced BCE) on the same windows, and
    with state: matched the discriminator reads the same prefix encodings."""
    runner = build(tiny_csv, kind, adversarial={"weight": 0.3, "state": state})
    obj, chains = runner.objective, runner.update
    obj.start_epoch(1)
    obj.model.eval()
    for users in ([0, 1, 2], [3, 4, 5, 6]):
        i = runner.sampler.draws(torch.tensor(users)).reshape(-1)
        before = obj.gen.get_state()
        batch, _ = chains._batch([i])
        obj.gen.set_state(before)  # the same draw of item counts
        loss, (logits, _) = chains._loss(dict(chains.padded.named_parameters()), *(t[0] for t in batch))
        read = []
        real = obj.adversary.disc.forward
        obj.adversary.disc.forward = lambda h: read.append(real(h)) or read[-1]
        torch.testing.assert_close(loss, obj.loss(i), rtol=1e-5, atol=1e-6)
        obj.adversary.disc.forward = real
        torch.testing.assert_close(logits[: len(i)], read[0], rtol=1e-5, atol=1e-7)  # D read the same states


def test_a_chain_without_windows_keeps_its_weights_and_optimiser_state(tiny_csv):
    runner = build(tiny_csv, inner_optimizer="adam", inner_lr=0.01)
    chains = runner.update
    grads = {n: torch.ones(3, *p.shape) for n, p in chains.live.items()}
    before = [{n: w.detach().clone() for n, w in ws.items()} for ws in chains.weights]
    chains._inner_update(grads, torch.zeros(3), torch.tensor([True, False, True]))
    assert all(torch.equal(chains.weights[1][n], before[1][n]) for n in before[1])
    assert not chains.opts[1].state and chains.opts[0].state  # the idle chain's Adam took no step
    assert any(not torch.equal(chains.weights[0][n], before[0][n]) for n in before[0])


def test_outer_step_moves_toward_the_chains_mean(tiny_csv):
    """With one iteration covering every user, the result is θ₀ + β(mean of the chains' θ_k − θ₀)."""
    runner = build(tiny_csv, beta=0.4, inner_optimizer="sgd", inner_lr=0.1)
    chains = runner.update
    theta0 = [p.detach().clone() for p in runner.parameters()]
    us = runner.sampler
    us.users = us.users[: 3 * 2 * 4]  # exactly one iteration: 3 chains × k 2 × 4 users
    us.weights = us.weights[: len(us.users)]
    runner.plan = lambda: drawn_plan(us, 6, 4, 1, fixed=True)
    runner(lambda n, loss: None)
    ends = {n: torch.stack([w[n] for w in chains.weights]).mean(0) for n in chains.live}
    for (name, p), p0 in zip(chains.live.items(), theta0):
        torch.testing.assert_close(p.detach(), p0 + 0.4 * (ends[name] - p0), rtol=1e-5, atol=1e-6)


def test_chains_draw_distinct_users_per_step(tiny_csv):
    runner = build(tiny_csv)
    chains, us = runner.update, runner.sampler
    owners = []
    real = chains._batch
    win_owner = torch.repeat_interleave(us.users, us.counts)
    chains._batch = lambda idx: owners.append([sorted(set(win_owner[i].tolist())) for i in idx]) or real(idx)
    us.users, us.weights, us.counts, us.starts = us.users[:24], us.weights[:24], us.counts[:24], us.starts[:24]
    runner.plan = lambda: drawn_plan(us, 6, 4, 1, fixed=True)
    runner(lambda n, loss: None)
    flat = [u for step in owners for chain in step for u in chain]
    assert len(flat) == len(set(flat)) == 24


def test_chains_need_full_softmax(tiny_csv):
    recipe = recipe_for(tiny_csv, grad_align={"chains": 2, "users_per_step": 4, "sampling": "uniform"})
    raw = recipe.model_dump()
    raw["train"]["loss"] = "bce"
    with pytest.raises(ValueError, match="chains train with train.loss ce only"):
        Recipe.model_validate(raw)


def test_chains_with_windows_sampling_see_every_window_once_in_user_disjoint_batches(tiny_csv):
    runner = build(tiny_csv, sampling="windows", users_per_step=None)
    _, seqs, _, _ = runner_for(tiny_csv)
    owner = torch.from_numpy(seqs.train_windows(10)[2])
    iterations, real = [], runner.plan

    def recording():
        n, plan = real()
        return n, (iterations.append(list(groups)) or iterations[-1] for groups in plan)

    runner.plan = recording
    runner(lambda n, loss: None)
    assert all(len(groups) == 3 * 2 for groups in iterations)
    seen = torch.cat([b for groups in iterations for b in groups])
    assert sorted(seen.tolist()) == list(range(len(owner)))  # plain training's data: every window once
    for groups in iterations:  # no user in two batches of one outer iteration
        users = [set(owner[b].tolist()) for b in groups]
        assert sum(len(u) for u in users) == len(set().union(*users))


def test_chains_with_permuted_sampling_see_every_user_once_per_epoch(tiny_csv):
    runner = build(tiny_csv, sampling="permuted", users_per_step=2)
    _, seqs, _, _ = runner_for(tiny_csv)
    owner = torch.from_numpy(seqs.train_windows(10)[2])
    steps = []
    real = runner.update._batch
    runner.update._batch = lambda idx: steps.append([sorted(set(owner[i].tolist())) for i in idx]) or real(idx)
    runner(lambda n, loss: None)
    flat = [u for step in steps for chain in step for u in chain]
    assert sorted(flat) == sorted(set(owner.tolist()))  # each user in exactly one chain's step
    assert all(len(chain) <= 2 for step in steps for chain in step)
