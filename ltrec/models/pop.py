"""Popularity baseline."""

from typing import ClassVar

import torch
import torch.nn as nn


class Pop(nn.Module):
    """Popularity baseline: every user gets log(1 + training count) as scores. No trainable parameters."""

    trainable: ClassVar[bool] = False
    tied = False  # one row of scores for every user, not a user state times an item table
    per_user: ClassVar[bool] = False  # the scores do not depend on the history: an ensemble scores one row

    def __init__(self, n_items: int, max_len: int, **_):
        super().__init__()
        self.n_items, self.max_len, self.dim = n_items, max_len, 1
        self.register_buffer("counts", torch.zeros(n_items))  # (N,), column j is item j+1

    def fit(self, seqs) -> "Pop":
        """Counts of the training events of `seqs` (a `Sequences`)."""
        counts = torch.as_tensor(seqs.item_counts(), dtype=torch.float64)
        self.counts.copy_(torch.log1p(counts).to(self.counts.dtype))
        return self

    def encode_all(self, history: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*history.shape, 1, device=history.device)  # (B, L, 1), no user state

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        return torch.zeros(history.shape[0], 1, device=history.device)  # (B, 1)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(*h.shape[:-1], self.n_items)  # (..., N)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.counts.unsqueeze(0).expand(history.shape[0], -1)  # (B, N), batch follows history
