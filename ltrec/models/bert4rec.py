"""BERT4Rec (Sun et al. 2019): a bidirectional transformer trained to fill in masked items (cloze).

Training (`training_loss`): each window's items get replaced by a [MASK] token (id N+1) at random positions
(each real position with probability `mask_prob`; in a `last_only` share of windows only the newest one, as
BERT4Rec adds last-item-masked samples that look like inference), and the loss is taken only at masked
positions, so the model never sees the item it must predict. At least one item per window is masked.
Inference (`encode`): a [MASK] is appended after the history (the oldest item drops out when the history
already fills max_len), and its state is the user state. This lives in `encode`, so `forward` (and the
ONNX graph) takes a plain history like every other backbone.

The [MASK] embedding is a separate vector, not row N+1 of `item_emb`: the tied output table stays exactly
items 0..N, so the mask token can never be scored, and `score`, the sampled losses and the exported Gemm
need no special case.
"""

import math

import torch
import torch.nn as nn

from ltrec.models.base import encode_by_length
from ltrec.models.losses import loss_from_states
from ltrec.models.sasrec import Transformer


class BERT4Rec(Transformer):
    def __init__(self, n_items: int, max_len: int, *, mask_prob: float = 0.2, last_only: float = 0.1, **sizes):
        super().__init__(n_items, max_len, **sizes)
        self.mask_id, self.mask_prob, self.last_only = n_items + 1, mask_prob, last_only
        self.mask_emb = nn.Parameter(torch.randn(self.dim) * 0.02)  # the [MASK] token's embedding (id N+1)
        self.pos_emb = nn.Embedding(max_len, self.dim)  # counted from the right, as SASRec: pads never shift items
        self._init_items()

    def encode_all(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L): items 1..N, 0 = padding, N+1 = [MASK] → states (B, L, D), each seeing both sides."""
        return self.states(ids, last=False)

    def states(self, ids: torch.Tensor, last: bool) -> torch.Tensor:
        L = ids.shape[1]
        is_mask = (ids == self.mask_id).unsqueeze(-1)  # (B, L, 1)
        valid = ids > 0  # (B, L), a [MASK] is a real position
        keep = valid.unsqueeze(-1).to(self.item_emb.weight.dtype)  # (B, L, 1)
        emb = self.item_emb(torch.where(is_mask.squeeze(-1), torch.zeros_like(ids), ids))  # (B, L, D)
        emb = torch.where(is_mask, self.mask_emb.to(emb.dtype), emb)  # (B, L, D)
        t = torch.arange(L, device=ids.device)  # (L,)
        pos = (L - 1 - t).clamp(max=self.max_len - 1)  # (L,)
        x = self.drop(emb * math.sqrt(self.dim) + self.pos_emb(pos)) * keep  # (B, L, D), pads zeroed
        # not causal: every position sees every real one; pads are never keys, and the diagonal is always
        # allowed so an all-pad row has one visible key (no NaN), as in SASRec
        diag = t.unsqueeze(1) == t.unsqueeze(0)  # (L, L)
        allowed = valid[:, None, None, :] | diag  # (B, 1, L, L), broadcast over heads and queries
        return self.run_blocks(x, allowed, keep, last=last)  # (B, L, D), or (B, 1, D) with `last`

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        mask = torch.full_like(history[:, :1], self.mask_id)  # (B, 1); full_like keeps ONNX batch-dynamic
        ids = torch.cat([history, mask], dim=1)[:, -self.max_len :]  # (B, ≤ max_len): the oldest may drop out
        return self.states(ids, last=True)[:, -1]  # (B, D): the state at the [MASK] asks "what comes next?"

    def training_loss(self, inputs, targets, loss="ce", negatives=1, generator=None, per_target=False, weights=None):
        """Cloze objective on the window; returns (loss, states (B, L, D), each seeing the whole window)."""
        # the window's newest L items: inputs shifted by one plus the last target (what encode sees at
        # inference is also L ids ending at the newest event); the dropped oldest item is the newest of the
        # next older window (windows overlap by one event), so each event is still in some window
        seq = torch.cat([inputs, targets[:, -1:]], dim=1)[:, 1:]  # (B, L)
        real = seq > 0
        dev = generator.device if generator is not None else seq.device
        draw = torch.rand(seq.shape, generator=generator, device=dev).to(seq.device)  # (B, L)
        only_last = torch.rand(seq.shape[0], 1, generator=generator, device=dev).to(seq.device) < self.last_only
        newest = torch.zeros_like(real)
        newest[:, -1] = True
        masked = torch.where(only_last, newest, draw < self.mask_prob) & real  # (B, L)
        masked |= newest & real & ~masked.any(dim=1, keepdim=True)  # no window without a target
        states = encode_by_length(self.encode_all, seq.masked_fill(masked, self.mask_id))  # (B, L, D)
        cloze = torch.where(masked, seq, torch.zeros_like(seq))  # (B, L): targets only where masked
        return loss_from_states(self, states, cloze, loss, negatives, generator, per_target, weights), states
