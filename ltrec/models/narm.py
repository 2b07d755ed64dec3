"""NARM (Li et al. 2017): a GRU (global encoder) plus attention over its outputs (local encoder).

  h_1..h_L = GRU(items)                          global:  c_g = h_t
  α_tj = vᵀ σ(A1 h_t + A2 h_j)   for j ≤ t       local:   c_l = Σ_j α_tj h_j
  state_t = B [c_g; c_l]                         B (D × 2D) is NARM's bilinear decoder: score_i = e_iᵀ B c_t,
                                                 so the scores stay tied to the item embeddings
The global encoder is GRU4Rec itself (bias-free, so it stays at h = 0 through left pads). NARM's α are not softmax-
normalised, so multiplying by the mask gives pads (and, for per-position states, later items) exactly zero
weight; a row with nothing to attend to just gets c_l = 0 (no NaN).
"""

import torch
import torch.nn as nn

from ltrec.models.base import Dropout, NeuralBackbone
from ltrec.models.gru4rec import GRU4Rec


class NARM(NeuralBackbone):
    def __init__(self, n_items: int, max_len: int, dim: int = 64, layers: int = 1, dropout: float = 0.25):
        super().__init__()
        self.n_items, self.max_len, self.dim = n_items, max_len, dim
        self.gru4rec = GRU4Rec(n_items, max_len, dim, layers, dropout)  # the global encoder: h_1..h_L
        self.item_emb = self.gru4rec.item_emb  # one table, tied to the scores
        self.drop = Dropout(dropout)
        self.a1 = nn.Linear(dim, dim, bias=False)  # transforms the query (the state attending)
        self.a2 = nn.Linear(dim, dim, bias=False)  # transforms the keys (every GRU output)
        self.v = nn.Linear(dim, 1, bias=False)
        self.b = nn.Linear(2 * dim, dim, bias=False)  # bilinear decoder: [c_g; c_l] (2D) → D

    def _hidden(self, history: torch.Tensor) -> torch.Tensor:
        return self.gru4rec.encode_all(history)  # (B, L, D), 0 at the leading pads

    def _attend(self, h: torch.Tensor, q: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """h (B, L, D) keys/values, q (B, Q, D) queries, allowed (B, Q, L) → states (B, Q, D)."""
        e = torch.sigmoid(self.a1(q).unsqueeze(2) + self.a2(h).unsqueeze(1))  # (B, Q, L, D)
        alpha = self.v(e).squeeze(-1) * allowed.to(h.dtype)  # (B, Q, L): masked weights are exactly 0
        local = alpha @ h  # (B, Q, D)
        return self.b(self.drop(torch.cat([q, local], dim=-1)))  # (B, Q, D)

    def encode_all(self, history: torch.Tensor) -> torch.Tensor:
        h = self._hidden(history)  # (B, L, D)
        t = torch.arange(history.shape[1], device=history.device)  # (L,)
        causal = t.unsqueeze(1) >= t.unsqueeze(0)  # (L, L) [query, key]: position t sees only j ≤ t
        allowed = causal & (history > 0).unsqueeze(1)  # (B, L, L), pads never attended
        return self._attend(h, h, allowed)  # (B, L, D)

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        # only the newest position's query: (B, 1, L) attention instead of (B, L, L); same numbers as
        # encode_all(history)[:, -1] (tested), as the last query may see every real item anyway
        h = self._hidden(history)  # (B, L, D)
        return self._attend(h, h[:, -1:], (history > 0).unsqueeze(1))[:, 0]  # (B, D)
