"""Gradient alignment and adversarial training: the update rules, exactly."""

import copy

import pytest
import torch

from ltrec.data import load
from ltrec.models import BACKBONES, GRU4Rec, SASRec, next_item_loss
from ltrec.recipe import Recipe
from ltrec.transfer import Discriminator, GradAlignEpoch, GradReverse, PlainEpoch, Step, balanced_bce, make_epoch


def recipe_for(path, **transfer) -> Recipe:
    return Recipe.model_validate({"name": "t", "data": {"source": str(path), "max_len": 10},
                                  "backbone": {"kind": "gru4rec", "dim": 8, "dropout": 0.0},
                                  "head": {"count": 4}, "transfer": transfer,
                                  "train": {"batch_size": 16, "lr": 1.0e-2}})


def setup(path, **transfer):
    recipe = recipe_for(path, **transfer)
    seqs = load(recipe.data, recipe.split, recipe.head)
    torch.manual_seed(0)
    model = GRU4Rec(seqs.n_items, 10, dim=8, dropout=0.0)
    inputs, targets, owner = (torch.from_numpy(a) for a in seqs.train_windows(10))
    gen = torch.Generator().manual_seed(0)
    return recipe, seqs, model, make_epoch(recipe, model, seqs, inputs, targets, owner, "cpu", gen), (inputs, targets)


def test_k1_beta1_sgd_is_plain_sgd(tiny_csv):
    """k=1, β=1, inner SGD: every outer iteration is exactly one SGD step on that step's windows."""
    ga = {"k": 1, "beta": 1.0, "inner_optimizer": "sgd", "inner_lr": 0.1, "users_per_step": 4, "sampling": "uniform"}
    recipe, seqs, model, epoch, (inputs, targets) = setup(tiny_csv, grad_align=ga)
    reference = copy.deepcopy(model)
    seen = []
    real_windows = epoch.sampler.windows
    epoch.sampler.windows = lambda chosen: seen.append(real_windows(chosen)) or seen[-1]
    epoch(lambda n, loss: None)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    for idx in seen:  # replay the same batches with a plain SGD loop
        width = int((inputs[idx] > 0).sum(1).max())
        loss = next_item_loss(reference, inputs[idx, -width:], targets[idx, -width:])
        sgd.zero_grad()
        loss.backward()
        sgd.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_outer_update_interpolates(tiny_csv):
    ga = {"k": 3, "beta": 0.3, "inner_optimizer": "sgd", "inner_lr": 0.1, "users_per_step": 4, "sampling": "uniform"}
    recipe, seqs, model, epoch, _ = setup(tiny_csv, grad_align=ga)
    theta0 = [p.detach().clone() for p in epoch.aligned]
    moved = [p + torch.randn_like(p) for p in theta0]
    with torch.no_grad():
        for p, m in zip(epoch.aligned, moved):
            p.copy_(m)
    epoch._outer_step(theta0)
    for p, p0, pk in zip(epoch.aligned, theta0, moved):
        torch.testing.assert_close(p, p0 + 0.3 * (pk - p0))


def test_inner_steps_use_distinct_users(tiny_csv):
    ga = {"k": 4, "users_per_step": 3, "sampling": "uniform"}
    recipe, seqs, model, epoch, (inputs, targets) = setup(tiny_csv, grad_align=ga)
    owner = torch.from_numpy(seqs.train_windows(10)[2])
    groups = []
    real_windows = epoch.sampler.windows
    epoch.sampler.windows = lambda chosen: groups.append(set(owner[real_windows(chosen)].tolist())) or real_windows(chosen)
    epoch(lambda n, loss: None)
    for i in range(0, len(groups) - 3, 4):  # within one outer iteration no user appears in two inner steps
        it = groups[i:i + 4]
        assert sum(len(g) for g in it) == len(set().union(*it))


def test_gradient_reversal_flips_sign():
    x = torch.randn(5, 3, requires_grad=True)
    (GradReverse.apply(x, 0.5) * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * torch.arange(3.0).expand(5, 3))


def test_discriminator_learns_separable_batch():
    torch.manual_seed(0)
    h = torch.cat([torch.randn(20, 4) + 2, torch.randn(60, 4) - 2])
    is_head = torch.arange(80) < 20
    disc = Discriminator(4, 8)
    opt = torch.optim.Adam(disc.parameters(), lr=0.05)
    losses = []
    for _ in range(50):
        loss = balanced_bce(disc(h), is_head)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 < losses[0]
    assert ((disc(h) > 0) == is_head).all()


def test_balanced_bce_weights_classes_equally():
    logits = torch.tensor([2.0, -1.0, -1.0, -1.0])
    is_head = torch.tensor([True, False, False, False])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = 0.5 * bce(logits[:1], torch.ones(1)) + 0.5 * bce(logits[1:], torch.zeros(3))
    torch.testing.assert_close(balanced_bce(logits, is_head), expected)


def test_adversarial_encoder_gradient_is_reversed(tiny_csv):
    """With λ, the encoder receives −λ × the discriminator-loss gradient (and D its plain gradient)."""
    recipe, seqs, model, epoch, (inputs, targets) = setup(tiny_csv, adversarial={"weight": 0.7})
    step = epoch.step
    idx = torch.arange(16)
    h = model.encode_all(inputs[idx])[:, -1]
    d_loss = balanced_bce(step.disc(h), step.owner_head[idx])
    g_adv = torch.autograd.grad(d_loss, model.item_emb.weight, retain_graph=True)[0]
    g_task = torch.autograd.grad(next_item_loss(model, inputs[idx], targets[idx]), model.item_emb.weight)[0]
    step.weight = 0.7
    total = step.loss(idx)
    g_total = torch.autograd.grad(total, model.item_emb.weight)[0]
    torch.testing.assert_close(g_total, g_task - 0.7 * g_adv, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("transfer", [{}, {"adversarial": {}}, {"grad_align": {"k": 3, "users_per_step": 4, "sampling": "uniform"}},
                                      {"grad_align": {"outer": "adam"}, "adversarial": {"warmup_epochs": 1}}])
def test_every_mode_trains_and_checkpoints(tiny_csv, transfer):
    recipe, seqs, model, epoch, _ = setup(tiny_csv, **transfer)
    assert isinstance(epoch, GradAlignEpoch if "grad_align" in transfer else PlainEpoch)
    first = epoch(lambda n, loss: None)
    second = epoch(lambda n, loss: None)
    assert second["loss"] < first["loss"] or "grad_align" in transfer
    assert ("disc_acc" in first) == ("adversarial" in transfer)
    state = epoch.state_dict()
    _, _, _, again, _ = setup(tiny_csv, **transfer)
    again.load_state_dict(state)
    assert again.epoch == 2


def test_sasrec_with_both_components(tiny_csv):
    recipe = recipe_for(tiny_csv, grad_align={"k": 2, "users_per_step": 4, "sampling": "uniform"}, adversarial={})
    seqs = load(recipe.data, recipe.split, recipe.head)
    model = SASRec(seqs.n_items, 10, dim=8, heads=2)
    inputs, targets, owner = (torch.from_numpy(a) for a in seqs.train_windows(10))
    epoch = make_epoch(recipe, model, seqs, inputs, targets, owner, "cpu", torch.Generator().manual_seed(0))
    assert isinstance(epoch.step, Step) and len(epoch.aligned) == len(list(model.parameters())) + 4
    assert torch.isfinite(torch.tensor(epoch(lambda n, loss: None)["loss"]))


@pytest.mark.parametrize("kind", ["caser", "narm", "bert4rec"])
def test_new_backbones_with_both_components(tiny_csv, kind):
    """Model-agnostic in practice: GA + AT run unchanged on the new backbones (BERT4Rec with its cloze loss),
    and the discriminator reads the state that the backbone's training_loss returns."""
    recipe = recipe_for(tiny_csv, grad_align={"k": 2, "users_per_step": 4, "sampling": "uniform"}, adversarial={})
    seqs = load(recipe.data, recipe.split, recipe.head)
    torch.manual_seed(0)
    model = BACKBONES[kind](seqs.n_items, 10, dim=8)
    inputs, targets, owner = (torch.from_numpy(a) for a in seqs.train_windows(10))
    epoch = make_epoch(recipe, model, seqs, inputs, targets, owner, "cpu", torch.Generator().manual_seed(0))
    seen = []
    real = epoch.step.disc.forward
    epoch.step.disc.forward = lambda h: seen.append(h.shape) or real(h)
    stats = epoch(lambda n, loss: None)
    assert torch.isfinite(torch.tensor(stats["loss"])) and 0 <= stats["disc_acc"] <= 1
    assert seen and all(s[1] == 8 for s in seen)



def test_matched_state_reads_head_windows_from_a_tail_windows_item_count(tiny_csv):
    """adversarial.state matched: a tail window's state has seen all its items; a head window's as many of its
    newest items as a random tail window holds, so the counts D sees have one distribution for both."""
    *_, epoch, _ = setup(tiny_csv, adversarial={"state": "matched"})
    step = epoch.step
    idx = torch.arange(len(step.lengths))
    n, head = step.lengths, step.owner_head
    tail_counts = set(n[~head].tolist())
    assert step.longest_tail == max(tail_counts) < int(n[head].max())
    long_enough = head & (n >= max(tail_counts))
    drawn = []
    for _ in range(50):
        seen = step.adv_counts(idx)
        assert torch.equal(seen[~head], n[~head])
        assert (seen[head] >= 1).all() and (seen[head] <= n[head]).all()
        assert set(seen[head].tolist()) <= tail_counts
        drawn.append(seen[long_enough])
    assert torch.cat(drawn).float().mean().item() == pytest.approx(n[~head].float().mean().item(), abs=0.02)
    *_, last, _ = setup(tiny_csv, adversarial={})
    assert last.step.adv_counts(idx) is None  # the default: every window's own newest state


@pytest.mark.parametrize("kind", sorted(set(BACKBONES) - {"pop"}))
def test_matched_state_is_the_user_state_of_the_newest_items(tiny_csv, kind):
    """What D reads is exactly the backbone's user state (encode) of each window's newest `seen` items."""
    recipe = recipe_for(tiny_csv, adversarial={"state": "matched"})
    seqs = load(recipe.data, recipe.split, recipe.head)
    torch.manual_seed(0)
    model = BACKBONES[kind](seqs.n_items, 10, dim=8)
    inputs, targets, owner = (torch.from_numpy(a) for a in seqs.train_windows(10))
    epoch = make_epoch(recipe, model, seqs, inputs, targets, owner, "cpu", torch.Generator().manual_seed(0))
    step = epoch.step
    model.eval()  # no dropout (nor BERT4Rec's random masking of the read state): both sides must agree
    read, counts = [], []
    real_disc, real_counts = step.disc.forward, step.adv_counts
    step.disc.forward = lambda h: read.append(h.detach()) or real_disc(h)
    step.adv_counts = lambda i: counts.append(real_counts(i)) or counts[-1]
    idx = torch.arange(len(inputs))
    step.loss(idx)
    (state,), (seen,) = read, counts
    assert torch.equal(seen[~step.owner_head], step.lengths[~step.owner_head])
    assert (seen[step.owner_head] < step.lengths[step.owner_head]).any()  # head windows are cut
    with torch.no_grad():
        newest = torch.zeros(len(idx), 10, dtype=torch.long)
        for j in idx:
            items = inputs[j][inputs[j] > 0]
            newest[j, 10 - seen[j]:] = items[len(items) - seen[j]:]
        torch.testing.assert_close(state, model.encode(newest), rtol=1e-4, atol=1e-5)
