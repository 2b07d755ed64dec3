"""GRU4Rec (Hidasi et al. 2016): a bias-free GRU over the item embeddings."""

import torch
import torch.nn as nn

from ltrec.models.base import Dropout, NeuralBackbone


class GRU4Rec(NeuralBackbone):
    def __init__(self, n_items: int, max_len: int, dim: int = 64, layers: int = 1, dropout: float = 0.2):
        super().__init__()
        self.n_items, self.max_len, self.dim = n_items, max_len, dim
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.drop = Dropout(dropout)
        # bias=False is deliberate: the padding input is exactly 0, and with zero input, zero state
        # and no bias every gate pre-activation is 0, so h' = (1 - z) * n + z * h = 0.5 * tanh(0) + 0.5 * 0 = 0.
        # The GRU therefore stays at h = 0 through any number of left pads, and a history gives the
        # same state whatever its padded length (no packing needed, and it exports to ONNX as is).
        self.gru = nn.GRU(dim, dim, layers, batch_first=True, bias=False, dropout=dropout if layers > 1 else 0.0)
        self._init_items()

    def encode_all(self, history: torch.Tensor) -> torch.Tensor:
        valid = (history > 0).unsqueeze(-1).to(self.item_emb.weight.dtype)  # (B, L, 1)
        # multiplying by the mask keeps pads at exactly 0 even if someone re-initialises row 0
        x = self.drop(self.item_emb(history) * valid)  # (B, L, D); dropout keeps zeros zero
        # an explicit h0 sized from the input keeps the ONNX graph batch-dynamic (no baked-in batch size)
        h0 = x.new_zeros(self.gru.num_layers, x.shape[0], self.dim)  # (layers, B, D)
        out, _ = self.gru(x, h0)  # (B, L, D), 0 at the leading pads
        return out
