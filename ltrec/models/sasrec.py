"""SASRec (Kang & McAuley 2018): a causal transformer; `Block` is shared with BERT4Rec."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ltrec.models.base import Dropout, NeuralBackbone


class Block(nn.Module):
    """Pre-LN transformer block with hand-written attention (explicit matmul exports cleanly to ONNX)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)  # a Python constant, so tracing bakes in no tensor math
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = Dropout(dropout)
        self.resid_drop = Dropout(dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), Dropout(dropout), nn.Linear(dim, dim), Dropout(dropout)
        )

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, bias: torch.Tensor | None = None, last: bool = False
    ) -> torch.Tensor:
        """x (B, L, D); allowed (B, 1, L, L) [query, key]; bias (H, L, L) added to the attention scores. With
        `last`, the newest position is the only query: out (B, 1, D), equal to the full pass's newest row."""
        B, L, D = x.shape
        h = self.ln1(x)  # (B, L, D)
        if last:  # keys and values still cover every position; the query, projection and FFN only the newest
            (w_q, w_kv), (b_q, b_kv) = self.qkv.weight.split([D, 2 * D]), self.qkv.bias.split([D, 2 * D])
            q = F.linear(h[:, -1:], w_q, b_q)  # (B, 1, D)
            k, v = F.linear(h, w_kv, b_kv).chunk(2, dim=-1)  # 2 x (B, L, D)
            x, allowed = x[:, -1:], allowed[:, :, -1:]
            bias = None if bias is None else bias[:, -1:]
        else:
            q, k, v = self.qkv(h).chunk(3, dim=-1)  # 3 x (B, L, D)
        Q = q.shape[1]  # L, or 1 with `last`
        q = q.reshape(B, Q, self.heads, -1).transpose(1, 2)  # (B, H, Q, Dh)
        k = k.reshape(B, L, self.heads, -1).transpose(1, 2)  # (B, H, L, Dh)
        v = v.reshape(B, L, self.heads, -1).transpose(1, 2)  # (B, H, L, Dh)
        att = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, Q, L)
        if bias is not None:
            att = att + bias
        att = att.masked_fill(~allowed, float("-inf"))  # every row keeps its diagonal, so never all -inf
        att = self.attn_drop(F.softmax(att, dim=-1))  # (B, H, Q, L)
        y = (att @ v).transpose(1, 2).reshape(B, Q, D)  # (B, Q, D)
        x = x + self.resid_drop(self.proj(y))  # (B, Q, D)
        return x + self.ffn(self.ln2(x))  # (B, Q, D)


class Transformer(NeuralBackbone):
    """What SASRec and BERT4Rec share: the item table, `layers` pre-LN blocks of `heads` heads, dropout on the
    input and a final LayerNorm. Subclasses add their positions and their input."""

    def __init__(
        self, n_items: int, max_len: int, dim: int = 64, layers: int = 2, heads: int = 2, dropout: float = 0.2
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"{type(self).__name__}: dim={dim} must be divisible by heads={heads}")
        self.n_items, self.max_len, self.dim, self.heads = n_items, max_len, dim, heads
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)

    def run_blocks(
        self,
        x: torch.Tensor,
        allowed: torch.Tensor,
        keep: torch.Tensor,
        bias: torch.Tensor | None = None,
        last: bool = False,
    ) -> torch.Tensor:
        """x (B, L, D) through the blocks and the final LayerNorm, pads zeroed after each → (B, L, D). With
        `last`, only the newest position's state (B, 1, D): what `encode` needs, at about half the blocks' work."""
        for i, block in enumerate(self.blocks):
            if last and i == len(self.blocks) - 1:
                x, keep = block(x, allowed, bias, last=True), keep[:, -1:]
            else:
                x = block(x, allowed, bias)
            x = x * keep  # zero pads so they stay inert
        return self.ln_f(x) * keep


class SASRec(Transformer):
    def __init__(self, n_items: int, max_len: int, *, input_norm=True, item_scale=True, positions="newest", **sizes):
        super().__init__(n_items, max_len, **sizes)
        dim = self.dim
        # sqrt(dim) as in the original SASRec; a Python constant, so the exported graph holds one Mul or none
        self.item_mult = math.sqrt(dim) if item_scale else 1.0
        # newest: a position embedding counted from the right (newest item = 0), so extra left pads never shift
        # real items. relative: none; each head adds a learned bias of the query-key distance to its scores
        # (shared by the blocks), so a state depends only on the items before it and how far back they are
        self.relative = positions == "relative"
        if self.relative:
            self.dist_bias = nn.Embedding(max_len, self.heads)
            nn.init.zeros_(self.dist_bias.weight)
        else:
            self.pos_emb = nn.Embedding(max_len, dim)
        # Without it the residual stream starts at the item embeddings' small init scale while every block adds
        # O(1) outputs: items with few updates (the catalogue's long tail) stay drowned out. A unit-scale input
        # trains far better on long-tailed catalogues; recipes default to it.
        self.ln_in = nn.LayerNorm(dim) if input_norm else nn.Identity()
        self._init_items()
        if input_norm and not self.relative:  # nn.Embedding's N(0, 1) would outweigh the items' 0.02 * sqrt(dim)
            nn.init.normal_(self.pos_emb.weight, std=0.02)

    def encode_all(self, history: torch.Tensor) -> torch.Tensor:
        return self.states(history, last=False)

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        return self.states(history, last=True)[:, -1]  # (B, D): left padding puts the newest item last

    def states(self, history: torch.Tensor, last: bool) -> torch.Tensor:
        L = history.shape[1]
        valid = history > 0  # (B, L)
        keep = valid.unsqueeze(-1).to(self.item_emb.weight.dtype)  # (B, L, 1)
        t = torch.arange(L, device=history.device)  # (L,)
        x = self.item_emb(history) * self.item_mult  # (B, L, D)
        bias = None
        if self.relative:  # distances beyond max_len share the farthest bias (only pads should get there)
            dist = (t.unsqueeze(1) - t.unsqueeze(0)).clamp(0, self.max_len - 1)  # (L, L), [query, key]
            bias = self.dist_bias(dist).permute(2, 0, 1)  # (H, L, L)
        else:  # items older than max_len share the oldest position (only pads should ever get there)
            x = x + self.pos_emb((L - 1 - t).clamp(max=self.max_len - 1))  # (B, L, D)
        x = self.drop(self.ln_in(x)) * keep  # (B, L, D), pads zeroed
        # query i may see key j if j <= i (causal) and j is a real item; the diagonal is always allowed
        # so a pad query has one visible key: an all-masked row would give NaN, and 0 * NaN poisons later layers
        causal = t.unsqueeze(1) >= t.unsqueeze(0)  # (L, L), [query, key]
        diag = t.unsqueeze(1) == t.unsqueeze(0)  # (L, L)
        allowed = (causal & valid[:, None, None, :]) | diag  # (B, 1, L, L), broadcast over heads
        return self.run_blocks(x, allowed, keep, bias, last)  # (B, L, D), or (B, 1, D) with `last`
