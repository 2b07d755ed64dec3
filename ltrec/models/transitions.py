"""The transition model (`kind: transitions`): score(u, i) = log(1 + Σ_j 2^-j·T[h_j, i]), h_0 the user's newest
item, T[a, i] how often item i followed item a within `window` events in the training histories (weighted
1 / distance; with direction `both`, preceded it too). Fitted by counting, with no training loop; each item
keeps its `neighbours` strongest transitions (`ltrec.models.neighbours`).

What a short history can offer: one or two items say little to a sequence model trained mostly on long
histories, but many other users went from those items somewhere."""

from __future__ import annotations

import torch

from ltrec.models.neighbours import TableModel, transition_table

DECAY = 0.5  # each older item of the history counts half the next newer one


class Transitions(TableModel):
    def __init__(self, n_items: int, max_len: int, window=5, last=5, direction="both", neighbours=100):
        super().__init__(n_items, max_len)
        self.window, self.last, self.direction, self.neighbours = window, last, direction, neighbours

    def fit(self, seqs) -> Transitions:
        """Counts over the training events of `seqs` (a `Sequences`)."""
        args = (seqs.items, seqs.offsets, seqs.train_lengths, seqs.n_items)
        self.set_table(transition_table(*args, self.window, self.neighbours, self.direction))
        return self

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """(B, N) scores of items 1..N."""
        return self.table.summed(history, self.last, DECAY, log1p=True)[:, 1:]
