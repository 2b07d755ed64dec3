"""ltrec.training.transfer.adversarial: gradient reversal, the class-balanced discriminator loss, matched states."""

import pytest
import torch
from conftest import next_item_loss, runner_for

from ltrec.models import BACKBONES
from ltrec.training.transfer.adversarial import Discriminator, GradReverse, balanced_bce


def test_gradient_reversal_flips_sign():
    x = torch.randn(5, 3, requires_grad=True)
    (GradReverse.apply(x, 0.5) * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * torch.arange(3.0).expand(5, 3))


def test_gradient_reversal_under_vmap_is_the_same():
    from torch.func import grad, vmap

    x = torch.randn(4, 3)
    g = vmap(grad(lambda v: (GradReverse.apply(v, 0.5) * torch.arange(3.0)).sum()))(x)
    torch.testing.assert_close(g, -0.5 * torch.arange(3.0).expand(4, 3))


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


def test_balanced_bce_weights_classes_equally_and_padding_not_at_all():
    logits = torch.tensor([2.0, -1.0, -1.0, -1.0])
    is_head = torch.tensor([True, False, False, False])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = 0.5 * bce(logits[:1], torch.ones(1)) + 0.5 * bce(logits[1:], torch.zeros(3))
    torch.testing.assert_close(balanced_bce(logits, is_head), expected)
    padded = torch.cat([logits, torch.tensor([5.0, -5.0])])  # two padding rows, weight 0
    rows = torch.tensor([1.0, 1, 1, 1, 0, 0])
    torch.testing.assert_close(balanced_bce(padded, torch.cat([is_head, torch.tensor([False, True])]), rows), expected)


def test_adversarial_encoder_gradient_is_reversed(tiny_csv):
    """With λ, the encoder receives −λ × the discriminator-loss gradient (and D its plain gradient)."""
    _, seqs, model, runner = runner_for(tiny_csv, adversarial={"weight": 0.7})
    inputs, targets, _ = (torch.from_numpy(a) for a in seqs.train_windows(10))
    objective = runner.objective
    objective.start_epoch(1)
    idx = torch.arange(16)
    h = model.encode_all(inputs[idx])[:, -1]
    d_loss = balanced_bce(objective.adversary.disc(h), objective.owner_head[idx])
    g_adv = torch.autograd.grad(d_loss, model.item_emb.weight, retain_graph=True)[0]
    g_task = torch.autograd.grad(next_item_loss(model, inputs[idx], targets[idx]), model.item_emb.weight)[0]
    total = objective.loss(idx)
    g_total = torch.autograd.grad(total, model.item_emb.weight)[0]
    torch.testing.assert_close(g_total, g_task - 0.7 * g_adv, rtol=1e-4, atol=1e-6)


def test_warmup_epochs_train_without_reversal(tiny_csv):
    *_, runner = runner_for(tiny_csv, adversarial={"weight": 0.7, "warmup_epochs": 2})
    for epoch, weight in ((1, 0.0), (2, 0.0), (3, 0.7)):
        runner.objective.start_epoch(epoch)
        assert runner.objective.adversary.weight == weight


def test_matched_state_reads_head_windows_from_a_tail_windows_item_count(tiny_csv):
    """adversarial.state matched: a tail window's state has seen all its items; a head window's as many of its
    newest items as a random tail window holds, so the counts D sees have one distribution for both."""
    *_, runner = runner_for(tiny_csv, adversarial={"state": "matched"})
    obj, adv = runner.objective, runner.objective.adversary
    n, head = obj.lengths, obj.owner_head
    tail_counts = set(n[~head].tolist())
    assert adv.longest_tail == max(tail_counts) < int(n[head].max())
    long_enough = head & (n >= max(tail_counts))
    drawn = []
    for _ in range(50):
        seen = adv.counts(n, head, "cpu")
        assert torch.equal(seen[~head], n[~head])
        assert (seen[head] >= 1).all() and (seen[head] <= n[head]).all()
        assert set(seen[head].tolist()) <= tail_counts
        drawn.append(seen[long_enough])
    assert torch.cat(drawn).float().mean().item() == pytest.approx(n[~head].float().mean().item(), abs=0.02)
    *_, last = runner_for(tiny_csv, adversarial={})
    assert last.objective.adversary.counts(n, head, "cpu") is None  # the default: every window's newest state


@pytest.mark.parametrize("kind", sorted(k for k, c in BACKBONES.items() if c.trainable))
def test_matched_state_is_the_user_state_of_the_newest_items(tiny_csv, kind):
    """What D reads is exactly the backbone's user state (encode) of each window's newest `seen` items."""
    _, seqs, model, runner = runner_for(tiny_csv, kind, adversarial={"state": "matched"})
    inputs = torch.from_numpy(seqs.train_windows(10)[0])
    obj, adv = runner.objective, runner.objective.adversary
    obj.start_epoch(1)
    model.eval()  # no dropout (nor BERT4Rec's random masking of the read state): both sides must agree
    read, counts = [], []
    real_disc, real_counts = adv.disc.forward, adv.counts
    adv.disc.forward = lambda h: read.append(h.detach()) or real_disc(h)
    adv.counts = lambda *a: counts.append(real_counts(*a)) or counts[-1]
    idx = torch.arange(len(inputs))
    obj.loss(idx)
    (state,), (seen,) = read, counts
    assert torch.equal(seen[~obj.owner_head], obj.lengths[~obj.owner_head])
    assert (seen[obj.owner_head] < obj.lengths[obj.owner_head]).any()  # head windows are cut
    with torch.no_grad():
        newest = torch.zeros(len(idx), 10, dtype=torch.long)
        for j in idx:
            items = inputs[j][inputs[j] > 0]
            newest[j, 10 - seen[j] :] = items[len(items) - seen[j] :]
        torch.testing.assert_close(state, model.encode(newest), rtol=1e-4, atol=1e-5)
