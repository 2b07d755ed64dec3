"""A backbone with the head→tail user branch (`transfer.user_branch`, the user side of MELT, Kim et al., SIGIR
2023) applied at inference: histories shorter than the cut-off get f(h) = h + W(h) as their state, so
evaluation, the exported ONNX graph and `predict` all see it. W starts at zero, so f starts as the identity.
How W is trained: `ltrec/training/transfer/user_branch.py`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ltrec.models.base import NeuralBackbone


class Branched(NeuralBackbone):
    """A backbone whose user state passes through the branch for short histories; training (encode_all,
    training_loss) is the backbone's own."""

    def __init__(self, backbone: NeuralBackbone, cutoff: int, hidden: int = 0):
        super().__init__()
        self.backbone, self.cutoff = backbone, cutoff
        self.n_items, self.max_len, self.dim = backbone.n_items, backbone.max_len, backbone.dim
        self.item_emb = backbone.item_emb  # tied scores: the backbone's table
        dim = backbone.dim
        self.map = (
            nn.Linear(dim, dim)
            if hidden == 0
            else nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        )
        last = self.map if hidden == 0 else self.map[-1]
        nn.init.zeros_(last.weight)  # f starts as the identity: the untrained branch changes nothing
        nn.init.zeros_(last.bias)

    @property
    def encoder(self) -> NeuralBackbone:
        return self.backbone

    def encode_all(self, history: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_all(history)

    def training_loss(self, *args, **kwargs):
        return self.backbone.training_loss(*args, **kwargs)

    def branch(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.map(h)  # (B, D)

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        h = self.backbone.encode(history)  # (B, D)
        short = (history > 0).sum(dim=1, keepdim=True) < self.cutoff  # (B, 1)
        return torch.where(short, self.branch(h), h)
