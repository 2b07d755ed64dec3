"""Sequential recommender backbones (GRU4Rec, SASRec, popularity) and next-item losses.

Conventions shared by every backbone:
- item ids are 1..N, 0 is padding; histories are LEFT-padded int64 tensors (B, L),
  so the user state is always the last position;
- no user-id embeddings, so unseen (cold, long-tail) users work out of the box;
- item embeddings are tied: scores = state @ item_emb.weight[1:].T, score column j is item j+1.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Backbone(nn.Module):
    """Shared API: encode_all (B, L, D) -> encode (B, D) -> score (..., N) -> forward (B, N)."""

    def _init_items(self) -> None:
        # nn.Embedding's N(0, 1) makes tied logits of size ~sqrt(D): softmax starts saturated and the loss
        # far above log N. A small init (as SASRec/RecBole) starts near uniform scores.
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode_all(self, history: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        return self.encode_all(history)[:, -1]  # (B, D): left padding puts the newest item last

    def score(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item_emb.weight[1:].T  # (..., N), row 0 is padding and never scored

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(history))  # (B, N); this is what gets exported to ONNX


class GRU4Rec(_Backbone):
    def __init__(self, n_items: int, max_len: int, dim: int = 64, layers: int = 1, dropout: float = 0.2):
        super().__init__()
        self.n_items, self.max_len, self.dim = n_items, max_len, dim
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.drop = nn.Dropout(dropout)
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


class _Block(nn.Module):
    """Pre-LN transformer block with hand-written attention (explicit matmul exports cleanly to ONNX)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)  # a Python constant, so tracing bakes in no tensor math
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(dropout)
        self.resid_drop = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)  # 3 x (B, L, D)
        q = q.reshape(B, L, self.heads, -1).transpose(1, 2)  # (B, H, L, Dh)
        k = k.reshape(B, L, self.heads, -1).transpose(1, 2)  # (B, H, L, Dh)
        v = v.reshape(B, L, self.heads, -1).transpose(1, 2)  # (B, H, L, Dh)
        att = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, L, L)
        att = att.masked_fill(~allowed, float("-inf"))  # every row keeps its diagonal, so never all -inf
        att = self.attn_drop(F.softmax(att, dim=-1))  # (B, H, L, L)
        y = (att @ v).transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        x = x + self.resid_drop(self.proj(y))  # (B, L, D)
        return x + self.ffn(self.ln2(x))  # (B, L, D)


class SASRec(_Backbone):
    def __init__(self, n_items: int, max_len: int, dim: int = 64, layers: int = 2, heads: int = 2, dropout: float = 0.2):
        super().__init__()
        if dim % heads:
            raise ValueError(f"SASRec: dim={dim} must be divisible by heads={heads}")
        self.n_items, self.max_len, self.dim, self.heads = n_items, max_len, dim, heads
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        # positions are counted from the right (newest item = 0), so extra left pads never shift real items
        self.pos_emb = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self._init_items()

    def encode_all(self, history: torch.Tensor) -> torch.Tensor:
        L = history.shape[1]
        valid = history > 0  # (B, L)
        keep = valid.unsqueeze(-1).to(self.item_emb.weight.dtype)  # (B, L, 1)
        t = torch.arange(L, device=history.device)  # (L,)
        # items older than max_len share the oldest position (only pads should ever get there)
        pos = (L - 1 - t).clamp(max=self.max_len - 1)  # (L,)
        x = self.item_emb(history) * math.sqrt(self.dim) + self.pos_emb(pos)  # (B, L, D)
        x = self.drop(x) * keep  # (B, L, D), pads zeroed
        # query i may see key j if j <= i (causal) and j is a real item; the diagonal is always allowed
        # so a pad query has one visible key: an all-masked row would give NaN, and 0 * NaN poisons later layers
        causal = t.unsqueeze(1) >= t.unsqueeze(0)  # (L, L), [query, key]
        diag = t.unsqueeze(1) == t.unsqueeze(0)  # (L, L)
        allowed = (causal & valid[:, None, None, :]) | diag  # (B, 1, L, L), broadcast over heads
        for block in self.blocks:
            x = block(x, allowed) * keep  # (B, L, D); zero pads so they stay inert
        return self.ln_f(x) * keep  # (B, L, D)


class Pop(nn.Module):
    """Popularity baseline: every user gets the training counts as scores. No trainable parameters."""

    def __init__(self, n_items: int, max_len: int, **_):
        super().__init__()
        self.n_items, self.max_len, self.dim = n_items, max_len, 1
        self.register_buffer("counts", torch.zeros(n_items))  # (N,), column j is item j+1

    def fit(self, item_counts: torch.Tensor) -> "Pop":
        self.counts.copy_(torch.as_tensor(item_counts, dtype=self.counts.dtype))
        return self

    def encode_all(self, history: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*history.shape, 1, device=history.device)  # (B, L, 1), no user state

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        return torch.zeros(history.shape[0], 1, device=history.device)  # (B, 1)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(*h.shape[:-1], self.n_items)  # (..., N)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.counts.unsqueeze(0).expand(history.shape[0], -1)  # (B, N), batch follows history


BACKBONES = {"gru4rec": GRU4Rec, "sasrec": SASRec, "pop": Pop}

LOSSES = ("ce", "bce", "sampled")


def loss_from_states(model, states, targets, loss="ce", negatives=1, generator=None) -> torch.Tensor:
    """Next-item loss from precomputed states (B, L, D) and targets (B, L); target 0 = no target.

    ce: full softmax over all N items. bce: SASRec-style binary CE, `negatives` uniform negatives per
    position (summed). sampled: softmax over the positive plus `negatives` uniform negatives shared by
    the batch. All are means over positions with a target (0 if there are none).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (expected one of {', '.join(LOSSES)})")
    mask = targets > 0  # (B, L)
    h = states[mask]  # (M, D): only positions with a target, so logits are never (B, L, N)
    pos = targets[mask]  # (M,), item ids 1..N
    if h.shape[0] == 0:
        return states.sum() * 0.0  # keeps the graph (and the device) and avoids 0/0
    n_items = model.n_items
    if loss == "ce":
        return F.cross_entropy(model.score(h), pos - 1)  # (M, N) logits, class j is item j+1

    W = model.item_emb.weight  # (N+1, D), tied with score()
    dev = generator.device if generator is not None else h.device
    pos_logit = (h * W[pos]).sum(-1)  # (M,)
    if loss == "bce":
        neg = torch.randint(1, n_items + 1, (h.shape[0], negatives), generator=generator, device=dev).to(h.device)
        neg_logit = (h.unsqueeze(1) * W[neg]).sum(-1)  # (M, K)
        # -log sigmoid(pos) - sum_k log(1 - sigmoid(neg_k)), written with softplus for stability
        return (F.softplus(-pos_logit) + F.softplus(neg_logit).sum(-1)).mean()
    neg = torch.randint(1, n_items + 1, (negatives,), generator=generator, device=dev).to(h.device)
    neg_logit = h @ W[neg].T  # (M, K)
    # a sampled "negative" that is the positive itself would fight the positive: drop those hits
    neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == pos.unsqueeze(1), float("-inf"))  # (M, K)
    logits = torch.cat([pos_logit.unsqueeze(1), neg_logit], dim=1)  # (M, 1+K), positive is class 0
    return F.cross_entropy(logits, torch.zeros_like(pos))


def next_item_loss(model, inputs, targets, loss="ce", negatives=1, generator=None) -> torch.Tensor:
    """inputs/targets (B, L); targets[:, t] is the item after inputs[:, t] (0 = ignored)."""
    return loss_from_states(model, model.encode_all(inputs), targets, loss, negatives, generator)
