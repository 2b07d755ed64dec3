"""Caser (Tang & Wang 2018): convolutions over the "image" of the last `window` item embeddings.

Horizontal filters of heights h = 1..window (n_h each) detect union-level patterns (h-grams anywhere in the
window, max-pooled over time); vertical filters (n_v) are weighted sums of the window's rows (point-level
patterns). Their concatenation goes through a fully connected layer to the user state.

Choices made here, where ltrec's conventions differ from the paper's setting:
- no user embedding (the paper adds one before the output layer): ltrec has no user ids, so cold users work;
- the window is the last `window` positions of the left-padded history, pads embed to exactly 0, and the
  history is preceded by window - 1 zero rows: a state depends only on the items at t - window + 1..t
  (zero where there are none), so extra left pads never change it (the project's padding invariance);
- per-position states (encode_all) for the next-item loss at every position: the state at t only sees the
  window ending at t, so training is causal; one set of convolutions over the whole sequence computes all
  windows at once (a conv of kernel h plus a sliding max over the h-grams that fit in each window).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ltrec.models.base import Dropout, NeuralBackbone


class Caser(NeuralBackbone):
    def __init__(
        self,
        n_items: int,
        max_len: int,
        dim: int = 64,
        window: int = 5,
        n_h: int = 16,
        n_v: int = 4,
        dropout: float = 0.4,
    ):
        super().__init__()
        self.n_items, self.max_len, self.dim, self.window = n_items, max_len, dim, window
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.vertical = nn.Conv2d(1, n_v, (window, 1))  # each filter: a weighted sum of the window's rows
        self.horizontal = nn.ModuleList(nn.Conv2d(1, n_h, (h, dim)) for h in range(1, window + 1))
        self.drop = Dropout(dropout)
        self.fc = nn.Linear(n_v * dim + n_h * window, dim)
        self._init_items()

    def encode_all(self, history: torch.Tensor) -> torch.Tensor:
        w = self.window
        valid = (history > 0).unsqueeze(-1).to(self.item_emb.weight.dtype)  # (B, L, 1)
        # × sqrt(D) as SASRec: the tied table starts tiny (std 0.02, for near-uniform scores), and the
        # convolutions learn far faster from unit-scale inputs (pads stay exactly 0, even if row 0 is not)
        x = self.item_emb(history) * valid * math.sqrt(self.dim)  # (B, L, D)
        # w - 1 zero rows in front, so the first positions' windows hold zeros exactly as pad items would:
        # how much left padding there is can then never show (T = L + w - 1)
        x = F.pad(x, (0, 0, w - 1, 0)).unsqueeze(1)  # (B, 1, T, D)
        v = self.vertical(x)  # (B, n_v, L, D): one output row per window
        v = v.permute(0, 2, 1, 3).flatten(2)  # (B, L, n_v * D); no activation on the vertical part (paper)
        hs = []
        for h, conv in enumerate(self.horizontal, start=1):
            c = F.relu(conv(x).squeeze(3))  # (B, n_h, T - h + 1): one value per h-gram
            # the window ending at t holds the w - h + 1 h-grams ending at t - (w - h)..t: a sliding max
            hs.append(F.max_pool1d(c, w - h + 1, stride=1))  # (B, n_h, L)
        o = torch.cat([v, torch.cat(hs, dim=1).transpose(1, 2)], dim=-1)  # (B, L, n_v * D + n_h * w)
        return F.relu(self.fc(self.drop(o)))  # (B, L, D), the paper's z = φ(W [o_v; o_h] + b)

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        # the user state only needs the last window: no need to convolve the whole history at inference
        return self.encode_all(history[:, -self.window :])[:, -1]  # (B, D)
