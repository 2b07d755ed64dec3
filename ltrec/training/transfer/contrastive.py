"""Contrastive regularisation of the user state (`transfer.contrastive`), DuoRec-style (Qiu et al., WSDM 2022).

Each window's state (its newest position, which predicts its last target) is pulled toward the state of a
*supervised positive* — another training window whose last target is the same item, encoded with its own
dropout mask (the window itself where no other has that target, so the two differ by dropout alone) — and
pushed from the other positives of the batch, with an InfoNCE loss at temperature τ. Windows with the same
target are not each other's negatives. Tail users' short windows then share a space with the head users'
windows that lead to the same items, which is where the gains of this family are reported to go.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ContrastiveLoss:
    """weight · InfoNCE(state of each window, state of a window with the same last target)."""

    def __init__(self, cfg, inputs: torch.Tensor, targets: torch.Tensor, gen: torch.Generator):
        self.weight, self.tau, self.gen, self.inputs = cfg.weight, cfg.temperature, gen, inputs
        self.last = targets[:, -1].long()  # (W,) the target each window's newest state predicts
        self.order = torch.argsort(self.last, stable=True)  # windows grouped by that target
        _, counts = torch.unique_consecutive(self.last[self.order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        group = torch.repeat_interleave(torch.arange(len(counts)), counts)  # (W,) group of order[i]
        self.start, self.count = torch.empty_like(self.last), torch.empty_like(self.last)
        self.start[self.order], self.count[self.order] = starts[group], counts[group]

    def positives(self, idx: torch.Tensor) -> torch.Tensor:
        """(B,) for each window, a random window with the same last target (possibly itself)."""
        draw = torch.rand(len(idx), generator=self.gen, device=self.gen.device).to(self.count.device)
        return self.order[self.start[idx] + (draw * self.count[idx]).long()]

    def __call__(self, model, states: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        pos = self.positives(idx)
        width = int((self.inputs[pos] > 0).sum(1).max())
        other = model.encoder.encode(self.inputs[pos, -width:].to(states.device, torch.long))  # (B, D), its own dropout
        h = states[:, -1]  # (B, D)
        logits = F.normalize(h, dim=1) @ F.normalize(other, dim=1).T / self.tau  # (B, B)
        last = self.last[idx].to(states.device)
        same = (last[:, None] == last[None, :]) & ~torch.eye(len(idx), dtype=torch.bool, device=states.device)
        logits = logits.masked_fill(same, float("-inf"))  # a window with the same target is no negative
        return self.weight * F.cross_entropy(logits, torch.arange(len(idx), device=states.device))
