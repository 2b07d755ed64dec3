"""ltrec.training.transfer.contrastive: positives share the last target, the InfoNCE term is exactly the one
described (same-target windows are no negatives), and it trains with every backbone that has next-item
states."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import runner_for
from pydantic import ValidationError

from ltrec.recipe import Contrastive, Recipe
from ltrec.training.transfer.contrastive import ContrastiveLoss


def windows(last: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of 4 slots whose last targets are `last`; inputs distinct per window (row i holds i + 1)."""
    n = len(last)
    inputs = torch.zeros(n, 4, dtype=torch.long)
    inputs[:, -1] = torch.arange(1, n + 1)
    targets = torch.zeros(n, 4, dtype=torch.long)
    targets[:, -1] = torch.tensor(last)
    return inputs, targets


def test_every_positive_has_the_same_last_target_and_a_lone_window_is_its_own():
    inputs, targets = windows([7, 3, 7, 9, 7, 3])
    term = ContrastiveLoss(Contrastive(), inputs, targets, torch.Generator().manual_seed(0))
    idx = torch.arange(6).repeat(200)
    pos = term.positives(idx)
    assert torch.equal(targets[pos, -1], targets[idx, -1])
    assert set(pos[idx == 3].tolist()) == {3}  # the only window with target 9
    assert set(pos[idx == 0].tolist()) == {0, 2, 4}  # every window of its group is drawn
    assert set(pos[idx == 1].tolist()) == {1, 5}


class Lookup:
    """A stand-in encoder: the state of a window is a fixed vector per its newest item."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    @property
    def encoder(self) -> "Lookup":
        return self

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        return self.table[history[:, -1]]


def test_the_term_is_infonce_over_cosines_without_same_target_negatives():
    inputs, targets = windows([5, 6, 5, 8])
    g = torch.Generator().manual_seed(1)
    table = torch.randn(5, 3, generator=g)
    states = torch.randn(4, 2, 3, generator=g)  # (B, L, D): the newest position is the anchor
    term = ContrastiveLoss(Contrastive(weight=0.5, temperature=0.2), inputs, targets, torch.Generator().manual_seed(2))
    idx = torch.arange(4)
    before = term.gen.get_state()
    got = term(Lookup(table), states, idx)
    term.gen.set_state(before)
    pos = term.positives(idx)
    other = table[inputs[pos, -1]]
    sims = F.normalize(states[:, -1], dim=1) @ F.normalize(other, dim=1).T / 0.2
    want = 0.0
    for i in range(4):
        keep = [j for j in range(4) if j == i or targets[j, -1] != targets[i, -1]]
        want += -torch.log_softmax(sims[i, keep], 0)[keep.index(i)] / 4
    torch.testing.assert_close(got, 0.5 * want)


def test_a_branched_model_contrasts_the_backbone_states(tiny_csv):
    from ltrec.models.branched import Branched

    _, seqs, backbone, _ = runner_for(tiny_csv, "gru4rec")
    model = Branched(backbone, cutoff=min(seqs.head_threshold, 10))
    with torch.no_grad():
        model.map.weight.normal_()  # a branch far from the identity must not enter the positives
    *_, runner = runner_for(tiny_csv, "gru4rec", model=model, user_branch={}, contrastive={"weight": 1.0})
    obj = runner.objective
    idx = torch.arange(len(obj.lengths))
    model.eval()
    with torch.no_grad():
        states = backbone.encode_all(obj.inputs[idx])
        before = obj.gen.get_state()
        got = obj.contrastive(model, states, idx)
        obj.gen.set_state(before)
        want = obj.contrastive(backbone, states, idx)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kind", ["gru4rec", "sasrec", "caser", "narm"])
def test_every_next_item_backbone_trains_with_it(tiny_csv, kind):
    *_, runner = runner_for(tiny_csv, kind, contrastive={"weight": 0.5, "temperature": 0.5})
    first = runner(lambda n, loss: None)
    for _ in range(4):
        last = runner(lambda n, loss: None)
    assert np.isfinite(last["loss"]) and last["cl_loss"] > 0
    assert last["cl_loss"] < first["cl_loss"]  # the term is trained, not just reported


def test_it_combines_with_the_other_components(tiny_csv):
    *_, runner = runner_for(
        tiny_csv,
        "sasrec",
        contrastive={},
        grad_align={"k": 2},
        adversarial={"weight": 0.1},
        robust={"kind": "cvar", "alpha": 0.5, "mix": 0.5},
    )
    stats = runner(lambda n, loss: None)
    assert np.isfinite(stats["loss"]) and stats["cl_loss"] > 0 and "disc_acc" in stats


@pytest.mark.parametrize(
    "backbone, transfer, words",
    [
        ("bert4rec", {"contrastive": {}}, "bert4rec"),
        ("pop", {"contrastive": {}}, "kind pop is fitted in closed form"),
        ("gru4rec", {"contrastive": {}, "grad_align": {"chains": 2}}, "chains"),
        ("gru4rec", {"contrastive": {"temperature": 0}}, "temperature"),
        ("gru4rec", {"contrastive": {"weight": 1, "negatives": 5}}, "negatives"),
    ],
)
def test_recipes_it_cannot_serve_are_refused(backbone, transfer, words):
    with pytest.raises(ValidationError, match=words):
        Recipe.model_validate(
            {"name": "t", "data": {"source": "x.csv"}, "backbone": {"kind": backbone}, "transfer": transfer}
        )
