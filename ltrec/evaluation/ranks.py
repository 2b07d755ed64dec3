"""Full-ranking and sampled evaluation primitives for next-item recommendation.

Conventions: items are 1..N, 0 is padding; a score matrix (B, N) has column j = item j+1.
All ranks are 0-based and PESSIMISTIC about ties (the target loses every tie), so a model
that outputs constant scores gets the worst rank instead of a flattering one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ltrec.files.errors import UserError


class Seen(NamedTuple):
    """The items each user of a batch has seen, as distinct (row, item) pairs: memory grows with the histories'
    total length, not with batch size × the longest history (one user with 200,000 events stays cheap)."""

    row: torch.Tensor  # (M,) int64: the user's row in the batch
    item: torch.Tensor  # (M,) int64: item id 1..N, each at most once per row, sorted by item

    @staticmethod
    def of(row: torch.Tensor, item: torch.Tensor) -> Seen:
        order = torch.argsort(item, stable=True)
        return Seen(row.long()[order], item.long()[order])

    def split(self, targets: torch.Tensor) -> tuple[Seen, torch.Tensor]:
        """(the pairs that are not the row's target, whether each row's target is among its seen items: it
        is then masked too and ranks last)."""
        is_target = self.item == targets.long()[self.row]
        has_target = torch.zeros(len(targets), dtype=torch.bool, device=targets.device)
        has_target[self.row[is_target]] = True
        keep = ~is_target
        return Seen(self.row[keep], self.item[keep]), has_target

    def to(self, device) -> Seen:
        return Seen(self.row.to(device), self.item.to(device))


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, seen: Seen | None = None) -> torch.Tensor:
    """Rank of each target = number of OTHER items with score >= the target's score.

    Items in `seen` count as -inf. If the target itself is seen, its score is -inf too, so it ties with every
    masked item and (pessimistically) ranks last: N-1. NaN scores count as -inf.
    Works on whatever chunk of users it is given; O(B*N) compare + sum, no sort/topk.
    """
    # Memory traffic dominates on CPU, so the (B, N) matrix is read once by a compare + int32 sum and never
    # copied; the history mask is applied as a correction computed on the seen pairs only.
    tgt = targets.long()
    t = scores.gather(1, (tgt - 1).unsqueeze(1))  # (B, 1)
    n_items = scores.shape[1]
    # A NaN score compares false, exactly as -inf does against any target above -inf, so NaNs need no pass of
    # their own; a target at NaN or -inf is tied with or beaten by every other item, masked ones included.
    last = ~(t.squeeze(1) > float("-inf"))  # (B,)
    rank = (scores >= t).sum(dim=1, dtype=torch.int32).long() - 1  # the target counts itself once
    if seen is not None:
        other, has_target = seen.split(tgt)
        beats = scores[other.row, other.item - 1] >= t[other.row, 0]  # (M,)
        rank = rank - torch.zeros_like(rank).index_add_(0, other.row, beats.long())
        last |= has_target
    return torch.where(last, n_items - 1, rank)


def state_ranks(
    states: torch.Tensor,
    table: torch.Tensor,
    targets: torch.Tensor,
    seen: Seen | None = None,
    block_bytes: int = 1 << 21,
) -> torch.Tensor:
    """target_ranks(states @ table.T, targets, seen) without ever holding the (B, N) score matrix.

    Scores are made one block of items at a time, small enough to stay in cache, and compared and counted
    while still there: on CPU, writing and re-reading a 20k-column matrix cost more than the matmul itself.
    The target's score is one dot product; every other item's score is the one its block computed, so
    the target (and each seen item) is excluded by looking up the block's own verdict, not recomputed.
    """
    B, N = states.shape[0], table.shape[0]
    tgt = targets.long().to(states.device) - 1  # (B,) column of the target
    t = (states * table[tgt]).sum(dim=1, keepdim=True)  # (B, 1)
    width = max(64, block_bytes // (4 * max(B, 1)))
    buf = states.new_empty(B * min(width, N))
    hit = torch.empty(B * min(width, N), dtype=torch.bool, device=states.device)
    count = torch.zeros(B, dtype=torch.int32, device=states.device)
    self_hit = torch.zeros(B, dtype=torch.bool, device=states.device)
    if seen is not None:
        other, has_target = seen.to(states.device).split(tgt + 1)  # pairs sorted by item: one range per block
        bounds = torch.searchsorted(other.item, torch.arange(1, N + width + 1, width, device=states.device)).tolist()
        seen_hit = torch.zeros(len(other.row), dtype=torch.bool, device=states.device)
    for j, lo in enumerate(range(0, N, width)):
        w = min(width, N - lo)
        s = buf[: B * w].view(B, w)  # contiguous, so mm and ge write in place
        m = hit[: B * w].view(B, w)
        torch.mm(states, table[lo : lo + w].T, out=s)
        torch.ge(s, t, out=m)
        count += m.sum(dim=1, dtype=torch.int32)
        col = tgt - lo
        self_hit |= m.gather(1, col.clamp(0, w - 1).unsqueeze(1)).squeeze(1) & (col >= 0) & (col < w)
        if seen is not None and bounds[j + 1] > bounds[j]:
            a, b = bounds[j], bounds[j + 1]
            seen_hit[a:b] = m[other.row[a:b], other.item[a:b] - 1 - lo]
    rank = count.long() - self_hit.long()
    last = ~(t.squeeze(1) > float("-inf"))  # a NaN or -inf target loses to everything
    if seen is not None:
        rank = rank - torch.zeros_like(rank).index_add_(0, other.row, seen_hit.long())
        last |= has_target
    return torch.where(last, N - 1, rank)


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Vectorised `keys in sorted_keys`."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    i = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[i] == keys


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """Sort-based unique; numpy 2's hash-based np.unique is much slower on big int arrays."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if x.size else x


def _excluded(n_items: int, targets: np.ndarray, histories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted keys row·(N+1) + item of each row's target and history, (B,) items left to draw from)."""
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    B = targets.shape[0]
    items = np.concatenate([targets[:, None], np.asarray(histories, dtype=np.int64).reshape(B, -1)], axis=1)
    rows = np.broadcast_to(np.arange(B)[:, None], items.shape)
    excl = _sorted_unique((rows * (n_items + 1) + items)[items > 0])
    return excl, n_items - np.bincount(excl // (n_items + 1), minlength=B)


def require_eligible(n_items: int, targets: np.ndarray, histories: np.ndarray, n: int) -> None:
    """Sampled evaluation draws `n` negatives per user outside its target and history: refuse, as the recipe
    error it is, a number some user cannot supply (training checks it too, before the first epoch)."""
    if not len(targets):
        return
    _, eligible = _excluded(n_items, targets, histories)
    if len(eligible) and eligible.min() < n:
        raise UserError(
            f"eval.negatives: {n} negatives per user, but some user has only {eligible.min()} items "
            f"besides the target and history ({n_items} items in all); lower eval.negatives (e.g. "
            f"--set eval.negatives={eligible.min()})"
        )


def sample_negatives(
    n_items: int, targets: np.ndarray, histories: np.ndarray, n: int = 100, seed: int = 0
) -> np.ndarray:
    """(B, n) int64 negatives per user, uniform over 1..N minus {target} ∪ history, no repeats.

    Rejection sampling over all users at once: we draw i.i.d. uniform candidates, drop
    excluded/duplicate ones and keep the first `n` distinct survivors in draw order, which
    is a uniform subset. Per-user exclusions are encoded as global keys row*(N+1)+item so a
    single sorted array + searchsorted tests membership for every user at once (no (B, N)
    matrix, so it scales to large catalogues).
    """
    rng = np.random.default_rng(seed)
    excl, eligible = _excluded(n_items, targets, histories)
    B, stride = len(eligible), n_items + 1
    if B and eligible.min() < n:
        u = int(eligible.argmin())
        raise ValueError(
            f"sample_negatives: user {u} has only {int(eligible[u])} eligible items "
            f"(n_items={n_items}, minus target and history) but n={n} negatives were requested"
        )
    out = np.zeros((B, n), dtype=np.int64)
    filled = np.zeros(B, dtype=np.int64)
    pending = np.arange(B) if n > 0 else np.arange(0)
    while pending.size:
        need = n - filled[pending]
        # Width from the worst acceptance rate among pending users, +25% and slack, capped
        # so one round stays ~<=8M draws; a too-small round just means another iteration.
        accept = (eligible[pending] - filled[pending]) / n_items
        w = int(math.ceil(float((need / accept).max()) * 1.25)) + 8
        w = max(1, min(w, 8_000_000 // pending.size))
        cand = rng.integers(1, n_items + 1, size=(pending.size, w), dtype=np.int64)
        keys = (pending[:, None] * stride + cand).ravel()
        pos = np.flatnonzero(~_member(excl, keys))
        _, first = np.unique(keys[pos], return_index=True)  # drop repeats within this round
        pos = np.sort(pos[first])  # first occurrences, back in draw order
        prow = pos // w  # index into `pending`; sorted, so rows come in contiguous groups
        starts = np.searchsorted(prow, np.arange(pending.size))
        slot = np.arange(pos.size) - starts[prow]
        keep = slot < need[prow]
        r, slot = pending[prow[keep]], slot[keep]
        out[r, filled[r] + slot] = cand.ravel()[pos[keep]]
        filled[pending] += np.minimum(np.bincount(prow, minlength=pending.size), need)
        # Chosen keys are disjoint from excl and distinct, so a plain sort merges them.
        excl = np.sort(np.concatenate([excl, keys[pos[keep]]]))  # no re-drawing chosen items
        pending = pending[filled[pending] < n]
    return out


def sampled_ranks(scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Rank of the target among itself + its negatives (pessimistic ties), 0-based."""
    neg = torch.as_tensor(negatives, device=scores.device).long()
    t = scores.gather(1, (targets.long() - 1).unsqueeze(1))
    return (scores.gather(1, neg - 1) >= t).sum(dim=1)


def check_negatives(
    negs: np.ndarray, targets: np.ndarray, history: np.ndarray, n_items: int, n: int, path: Path
) -> np.ndarray:
    """Stored negatives must be what `sample_negatives` draws: (users, n) item ids 1..N, none the user's target
    or in the history it was drawn against, none twice in a row."""
    fix = "the file is damaged or from other settings: delete it to draw them again"
    if negs.shape != (len(targets), n) or negs.dtype.kind not in "iu":
        raise UserError(f"{path}: expected {(len(targets), n)} item ids, found {negs.shape} {negs.dtype}; {fix}")
    negs = negs.astype(np.int64)
    if negs.size and not (1 <= negs.min() and negs.max() <= n_items):
        raise UserError(f"{path}: item ids outside 1..{n_items} (found {negs.min()}..{negs.max()}); {fix}")
    seen = np.concatenate([targets[:, None], history], axis=1)
    row = np.arange(len(targets))[:, None] * (n_items + 1)  # (user row, item) as one key
    clash = np.isin(row + negs, (row + seen)[seen > 0]).any(axis=1)
    ordered = np.sort(negs, axis=1)
    twice = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    if clash.any() or twice.any():
        row = int(np.flatnonzero(clash | twice)[0])
        what = "the user's target or an item of its history" if clash[row] else "the same item twice"
        raise UserError(f"{path}: row {row} holds {what}; {fix}")
    return negs
