"""ltrec.training.transfer.user_branch: the head→tail map changes only short histories' states, trains on head
windows, and is part of what eval and the exported graph compute."""

import numpy as np
import pytest
import torch
from conftest import runner_for

from ltrec.models import BACKBONES
from ltrec.models.branched import Branched


def test_the_branch_changes_only_histories_shorter_than_the_cutoff():
    torch.manual_seed(0)
    backbone = BACKBONES["gru4rec"](30, 10, dim=8)
    model = Branched(backbone, cutoff=4).eval()
    history = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0, 0, 0, 3, 4],  # 2 items: short
            [0, 0, 0, 0, 0, 0, 5, 6, 7, 8],  # 4 items: not short
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        ]
    )
    torch.testing.assert_close(model.encode(history), backbone.encode(history))  # W = 0: the identity
    with torch.no_grad():
        model.map.weight.normal_()
    got, plain = model.encode(history), backbone.encode(history)
    assert not torch.allclose(got[0], plain[0])
    torch.testing.assert_close(got[1:], plain[1:])
    torch.testing.assert_close(got[0], plain[0] + model.map(plain[0]))
    assert model.tied and model.item_emb is backbone.item_emb


@pytest.mark.parametrize("kind", ["gru4rec", "sasrec", "caser", "narm", "bert4rec"])
def test_every_backbone_trains_the_branch_on_head_windows(tiny_csv, kind):
    recipe, seqs, backbone, _ = runner_for(tiny_csv, kind)
    model = Branched(backbone, cutoff=min(seqs.head_threshold, 10))
    *_, runner = runner_for(tiny_csv, kind, model=model, user_branch={"weight": 1.0})
    for _ in range(5):
        stats = runner(lambda n, loss: None)
    assert np.isfinite(stats["loss"]) and stats["branch_loss"] > 0
    assert float(model.map.weight.abs().sum()) > 0  # W moved away from zero
    # the trained map brings short suffixes' states closer to their whole windows' than the identity does
    model.eval()
    obj, term = runner.objective, runner.objective.branch
    idx = torch.arange(len(obj.lengths))
    with torch.no_grad():
        states = model.encode_all(obj.inputs[idx])
        before = obj.gen.get_state()
        trained = term(states, obj.inputs[idx], obj.lengths[idx], obj.owner_head[idx])
        obj.gen.set_state(before)
        model.map.weight.zero_()
        model.map.bias.zero_()
        identity = term(states, obj.inputs[idx], obj.lengths[idx], obj.owner_head[idx])
    if kind != "caser":  # Caser's state sees only its newest `window` items: a suffix that long is the whole state
        assert float(trained) < float(identity)


def test_the_branch_with_every_other_component(tiny_csv):
    recipe, seqs, backbone, _ = runner_for(tiny_csv, "sasrec")
    model = Branched(backbone, cutoff=min(seqs.head_threshold, 10), hidden=16)
    *_, runner = runner_for(
        tiny_csv,
        "sasrec",
        model=model,
        user_branch={"weight": 0.5, "hidden": 16},
        grad_align={"k": 2},
        adversarial={"weight": 0.1},
        robust={"kind": "cvar", "alpha": 0.5},
    )
    stats = runner(lambda n, loss: None)
    assert np.isfinite(stats["loss"]) and "branch_loss" in stats and "disc_acc" in stats


def test_the_discriminator_reads_the_encoder_not_the_branch(tiny_csv):
    """With state: matched the discriminator re-encodes short prefixes; it must read the encoder's own state (as
    with state: last), so the reversed gradient never reaches the branch's map, only the encoder."""
    recipe, seqs, backbone, _ = runner_for(tiny_csv, "gru4rec")
    model = Branched(backbone, cutoff=min(seqs.head_threshold, 10), hidden=0)
    *_, runner = runner_for(
        tiny_csv, "gru4rec", model=model, user_branch={"weight": 0.5}, adversarial={"weight": 1.0, "state": "matched"}
    )
    obj = runner.objective
    idx = torch.arange(len(obj.lengths))
    is_head = obj.owner_head[idx]
    assert is_head.any() and (~is_head).any()
    seen = obj.adversary.counts(obj.lengths[idx], is_head, "cpu")
    states = model.encode_all(obj.inputs[idx])
    adv_loss, _ = obj.adversary(model, states, obj.inputs[idx], is_head, seen)
    adv_loss.backward()
    assert model.map.weight.grad is None or not model.map.weight.grad.any()
    assert any(p.grad is not None and p.grad.any() for p in backbone.parameters())
