"""Item-to-item models as sparse tables: each item keeps its `K` strongest neighbours as (N + 1, K) id and
strength tables (row 0, the padding item, all zeros), so a user's scores are one gather and one scatter-add
over the items of the history, and no N × N matrix is held at inference or stored in the exported graph.
The transition model builds its table from counts (`transition_table`); EASE keeps the strongest entries of
its dense closed-form solution (`strongest`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn


@dataclass
class Table:
    ids: torch.Tensor  # (N + 1, K) int32 (half an int64 table, in memory and in the graph); 0 = none
    strength: torch.Tensor  # (N + 1, K) float32

    def summed(
        self, history: torch.Tensor, last: int | None = None, decay: float = 1.0, log1p: bool = False
    ) -> torch.Tensor:
        """(B, N + 1) Σ_j decay^j·T[h_j, i] over the newest `last` items (all when None) of left-padded
        histories, h_0 the newest; padding rows are zeros, so pads add nothing, and column 0 stays 0.
        `log1p`: log(1 + sum) instead, taken only where a sum was added (log1p(0) = 0 everywhere else)."""
        newest = history if last is None else history[:, -last:]  # (B, m)
        strength = self.strength.to(history.device)[newest]  # (B, m, K)
        if decay != 1.0:
            steps = torch.arange(newest.shape[1] - 1, -1, -1, dtype=torch.float32, device=history.device)
            strength = strength * (decay**steps)[None, :, None]
        ids = self.ids.to(history.device)[newest].flatten(1).long()  # (B, m·K); scatter indices are int64
        out = torch.zeros(history.shape[0], self.ids.shape[0], device=history.device)
        out.scatter_add_(1, ids, strength.flatten(1))  # in place: no second (B, N + 1) matrix
        if log1p:  # a row holds at most m·K sums among N + 1 columns; a repeated id writes one value twice
            out.scatter_(1, ids, out.gather(1, ids).log1p())
        return out


def _sparse_rows(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, stride: int, k: int) -> Table:
    """The table of entries (rows, cols, values) keeping each row's `k` largest values (ties: lower id)."""
    order = np.lexsort((cols, -values, rows))  # by row, largest first
    rows, cols, values = rows[order], cols[order], values[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    keep = rank < k
    width = max(min(k, int(rank.max(initial=0)) + 1), 1)  # as wide as the most-connected item needs
    ids = np.zeros((stride, width), np.int32)
    strength = np.zeros((stride, width), np.float32)
    ids[rows[keep], rank[keep]] = cols[keep]
    strength[rows[keep], rank[keep]] = values[keep]
    return Table(torch.from_numpy(ids), torch.from_numpy(strength))


def transition_table(
    items: np.ndarray,
    offsets: np.ndarray,
    train_lengths: np.ndarray,
    n_items: int,
    window: int,
    neighbours: int,
    direction: str,
) -> Table:
    """T[a, b]: how often b followed a within `window` events in the training events (items[offsets[u]:
    offsets[u] + train_lengths[u]]), weighted 1 / distance; with direction `both`, preceded it too."""
    lengths = np.diff(offsets)
    user = np.repeat(np.arange(len(lengths)), lengths)  # (E,)
    pos = np.arange(len(items)) - offsets[user]
    stride = n_items + 1
    keys, values = np.zeros(0, np.int64), np.zeros(0, np.float64)
    for d in range(1, window + 1):  # one distance at a time: memory follows the distinct pairs, not all pairs
        at = np.flatnonzero(pos + d < train_lengths[user])
        a, b = items[at].astype(np.int64), items[at + d].astype(np.int64)
        new = [a * stride + b] + ([b * stride + a] if direction == "both" else [])
        keys = np.concatenate([keys, *new])
        values = np.concatenate([values, np.full(sum(len(k) for k in new), 1.0 / d)])
        keys, inverse = np.unique(keys, return_inverse=True)
        values = np.bincount(inverse, weights=values, minlength=len(keys))
    return _sparse_rows(keys // stride, keys % stride, values, stride, neighbours)


def strongest(weights: torch.Tensor, k: int) -> Table:
    """The table of a dense (N, N) item-to-item matrix (row a: what item a + 1 adds to every item) keeping each
    row's `k` entries of largest magnitude, their signs kept."""
    n = weights.shape[0]
    k = min(k, n)
    _, cols = weights.abs().topk(k, dim=1)  # (N, k)
    ids = torch.zeros(n + 1, k, dtype=torch.int32)
    strength = torch.zeros(n + 1, k, dtype=torch.float32)
    ids[1:] = (cols + 1).to(torch.int32)
    strength[1:] = weights.gather(1, cols).float()
    return Table(ids, strength)


class TableModel(nn.Module):
    """A fitted item-to-item model held as one `Table` (buffers `ids`, `strength`), fitted by `fit(seqs)` with no
    training loop. Its checkpoint is its table, checked when loaded: ids in 0..N, finite strengths, padding row
    empty. Subclasses say how a history's summed rows become scores (`forward`)."""

    trainable: ClassVar[bool] = False
    tied = False  # scores come from the history's items' neighbours, not from a state times an item table

    def __init__(self, n_items: int, max_len: int):
        super().__init__()
        self.n_items, self.max_len, self.dim = n_items, max_len, 1
        self.register_buffer("ids", torch.zeros(n_items + 1, 1, dtype=torch.int32))
        self.register_buffer("strength", torch.zeros(n_items + 1, 1))

    @property
    def table(self) -> Table:
        return Table(self.ids, self.strength)

    def set_table(self, table: Table) -> None:
        self.ids, self.strength = table.ids, table.strength

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        ids, strength = state_dict.get(prefix + "ids"), state_dict.get(prefix + "strength")
        if isinstance(ids, torch.Tensor) and isinstance(strength, torch.Tensor):
            check_table(ids, strength, self.n_items)
            # a fitted table's width is the checkpoint's, not the placeholder's
            self.ids, self.strength = torch.empty_like(ids), torch.empty_like(strength)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        return torch.zeros(history.shape[0], 1, device=history.device)  # (B, 1), no user state


class DamagedTable(ValueError):
    """A table read from a file that no fit can have written (ids out of range, a wrong dtype, a strength that
    is not finite, a padding row with entries): the file is damaged, not another run's."""


def check_table(ids: torch.Tensor, strength: torch.Tensor, n_items: int) -> None:
    """A table read from a file, checked before any id is used as an index. A shape that is not this
    catalogue's is a ValueError (another run's table, or a damaged one); the rest, `DamagedTable`."""
    if ids.dtype != torch.int32 or strength.dtype != torch.float32:
        raise DamagedTable(
            f"neighbour tables: expected int32 ids and float32 strengths, got {ids.dtype}, {strength.dtype}"
        )
    if ids.dim() != 2 or ids.shape != strength.shape or ids.shape[0] != n_items + 1:
        raise ValueError(
            f"neighbour tables: expected two ({n_items + 1}, K) tables, got "
            f"{tuple(ids.shape)} and {tuple(strength.shape)}"
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > n_items):
        raise DamagedTable(f"neighbour tables: item ids outside 0..{n_items}")
    if not torch.isfinite(strength).all():
        raise DamagedTable("neighbour tables: strengths that are not finite")
    if ids[0].any() or strength[0].any():
        raise DamagedTable("neighbour tables: the padding row (0) must be empty")
