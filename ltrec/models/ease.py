"""EASE (Steck, WWW 2019): a linear item-to-item model in closed form. With X the training users' item sets
(binary, users × items), P = (XᵀX + λI)⁻¹ and B = I − P·diag(1/diag(P)), the diagonal of B zero; a user's
scores are x_u·B. No training loop: `fit` solves it once.

Memory: the solve holds dense items × items float32 matrices (4·N² bytes each, two at the peak: the factor
overwrites the Gram matrix and the inverse the factor), so the catalogue is bounded by `max_items`. What is
kept, scored and exported is each item's `neighbours` largest-magnitude entries of B
(`ltrec.models.neighbours`), never the dense matrix. A history counts each item once, as x_u is a set:
repeats past the newest are dropped before the rows are summed."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ltrec.models.neighbours import TableModel, strongest

GB = 1024**3


class EASE(TableModel):
    def __init__(self, n_items: int, max_len: int, l2=500.0, neighbours=200, max_items=25_000):
        super().__init__(n_items, max_len)
        if n_items > max_items:
            raise ValueError(
                f"EASE solves a dense items × items system, and the data has {n_items:,} items, more than "
                f"max_items ({max_items:,}); the solve needs about {2 * 4 * n_items**2 / GB:.2g} GB: "
                f"raise max_items to at least {n_items} if the memory is there, or use kind: transitions"
            )
        self.l2, self.neighbours = l2, neighbours

    def fit(self, seqs) -> EASE:
        """The closed form over the training events of `seqs` (a `Sequences`)."""
        self.set_table(strongest(solve(gram(seqs), self.l2), self.neighbours))
        return self

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """(B, N) scores of items 1..N."""
        t = torch.arange(history.shape[1], device=history.device)
        later = t.unsqueeze(0) > t.unsqueeze(1)  # (L, L) [i, j]: j is newer than i
        repeated = ((history.unsqueeze(2) == history.unsqueeze(1)) & later).any(dim=2)  # (B, L)
        return self.table.summed(history.masked_fill(repeated, 0))[:, 1:]


def gram(seqs) -> torch.Tensor:
    """(N, N) float32 XᵀX: how many training users hold both items (each user's items as a set)."""
    starts = seqs.offsets[:-1]
    lengths = seqs.train_lengths
    user = np.repeat(np.arange(len(lengths)), lengths)
    at = np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    pairs = np.unique(user.astype(np.int64) * (seqs.n_items + 1) + seqs.items[at])
    rows, cols = pairs // (seqs.n_items + 1), pairs % (seqs.n_items + 1) - 1
    with warnings.catch_warnings():  # torch's notes that sparse tensors are beta are not the user's to act on
        warnings.simplefilter("ignore")
        x = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([rows, cols])), torch.ones(len(pairs)), (len(lengths), seqs.n_items)
        ).coalesce()
        return torch.sparse.mm(x.t().coalesce(), x).to_dense()


def solve(g: torch.Tensor, l2: float) -> torch.Tensor:
    """B = I − P·diag(1/diag(P)), P = (G + λI)⁻¹, diagonal zeroed, written over `g` (G is not needed after)."""
    g.diagonal().add_(l2)
    torch.linalg.cholesky(g, out=g)  # G + λI is symmetric positive definite
    p = torch.cholesky_inverse(g, out=g)  # LAPACK's potri works in place: no third N² matrix
    b = p.div_(-p.diagonal().clone())  # column j divided by -P_jj
    b.diagonal().zero_()
    return b
