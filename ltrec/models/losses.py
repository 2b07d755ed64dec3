"""Next-item losses over tied item embeddings, from per-position states."""

import torch
import torch.nn.functional as F

LOSSES = ("ce", "bce", "sampled")
# Targets per chunk of logits (buffers reused from the heap, never mapped afresh each step). One thread runs
# fastest with chunks that stay in cache, 256 targets; several threads split a matmul's rows among them and
# want large ones, 32 MB of logits. Measured side by side on SASRec, Amazon Music and MovieLens-1M: at one
# thread 256 targets are 4-8% faster than 8 MB; at two, 32 MB is 10-11% faster (BENCHMARKS.md).
CHUNK_BYTES = 32 << 20
THREAD_ROWS = 256


def chunk_rows(n_items: int, device: torch.device | str = "cpu") -> int:
    rows = max(1, CHUNK_BYTES // (4 * n_items))
    one_thread = torch.device(device).type == "cpu" and torch.get_num_threads() == 1
    return min(rows, THREAD_ROWS) if one_thread else rows


class _ChunkedCE(torch.autograd.Function):
    """Per-target full-softmax cross-entropy of states h (M, D) against item rows W (N, D), targets t (M,) in
    0..N-1, without ever holding the (M, N) logits: chunks of targets are scored, reduced and dropped in the
    forward, and scored again in the backward. A (M, N) matrix of a long-tailed catalogue runs to hundreds of
    megabytes a step; allocating and freeing that much every step costs more in page faults than the work."""

    @staticmethod
    def forward(ctx, h, W, t):
        ctx.dtypes = h.dtype, W.dtype  # under autocast h may be bf16: the softmax is done in fp32 at least
        dtype = torch.promote_types(torch.promote_types(h.dtype, W.dtype), torch.float32)
        h, W = h.to(dtype), W.to(dtype)
        rows = chunk_rows(W.shape[0], W.device)
        lse = torch.empty(h.shape[0], dtype=h.dtype, device=h.device)
        losses = torch.empty_like(lse)
        for lo in range(0, h.shape[0], rows):
            logits = h[lo : lo + rows] @ W.T  # (c, N)
            lse[lo : lo + rows] = torch.logsumexp(logits, dim=1)
            losses[lo : lo + rows] = lse[lo : lo + rows] - logits.gather(1, t[lo : lo + rows, None]).squeeze(1)
        ctx.save_for_backward(h, W, t, lse)
        ctx.rows = rows
        return losses

    @staticmethod
    def backward(ctx, grad):
        h, W, t, lse = ctx.saved_tensors
        grad_h, grad_W = torch.empty_like(h), torch.zeros_like(W)
        for lo in range(0, h.shape[0], ctx.rows):
            hc, tc = h[lo : lo + ctx.rows], t[lo : lo + ctx.rows]
            p = torch.exp(hc @ W.T - lse[lo : lo + ctx.rows, None])  # (c, N): the softmax
            p[torch.arange(len(tc), device=p.device), tc] -= 1.0  # minus the one-hot target
            p *= grad[lo : lo + ctx.rows, None]
            grad_h[lo : lo + ctx.rows] = p @ W
            grad_W.addmm_(p.T, hc)
        return grad_h.to(ctx.dtypes[0]), grad_W.to(ctx.dtypes[1]), None


class _MeanCE(torch.autograd.Function):
    """The mean of _ChunkedCE's losses (or their weighted mean, weights w (M,) summing to 1), with both
    gradients computed in the forward while each chunk's softmax is at hand: a mean's upstream gradient is one
    scalar, so nothing is left for the backward but a scale. Per chunk: three matmuls and one fused softmax
    (the output layer's bound), written into two buffers reused by every chunk."""

    @staticmethod
    def forward(ctx, h, W, t, w=None):
        ctx.dtypes = h.dtype, W.dtype
        dtype = torch.promote_types(torch.promote_types(h.dtype, W.dtype), torch.float32)
        h, W = h.to(dtype), W.to(dtype)
        rows = chunk_rows(W.shape[0], W.device)
        grad_h, grad_W = torch.empty_like(h), torch.zeros_like(W)
        logits = h.new_empty(min(rows, h.shape[0]), W.shape[0])  # (c, N)
        probs = torch.empty_like(logits)
        # the softmax's fused kernel takes half the time of max, shift, exp, sum and divide as five passes. The
        # loss is then −log p(target), floored at the smallest normal float: a target so far out that its
        # probability underflows counts 87 nats, and its gradient stays exact
        tiny = torch.finfo(dtype).tiny
        total = h.new_zeros(())
        for lo in range(0, h.shape[0], rows):
            hc, tc = h[lo : lo + rows], t[lo : lo + rows]
            lg, p = logits[: len(tc)], probs[: len(tc)]
            torch.mm(hc, W.T, out=lg)
            torch.softmax(lg, 1, out=p)
            picked = torch.arange(len(tc), device=p.device), tc
            nll = -p[picked].clamp(min=tiny).log()  # (c,)
            p[picked] -= 1.0
            if w is None:
                total += nll.sum()
            else:
                wc = w[lo : lo + rows].to(dtype)  # (c,)
                total += (wc * nll).sum()
                p.mul_(wc[:, None])
            torch.mm(p, W, out=grad_h[lo : lo + rows])
            grad_W.addmm_(p.T, hc)
        n = max(1, h.shape[0]) if w is None else 1  # weights summing to 1 are already the mean's scale
        ctx.save_for_backward(grad_h / n, grad_W / n)
        return total / n

    @staticmethod
    def backward(ctx, grad):
        grad_h, grad_W = ctx.saved_tensors
        return (grad * grad_h).to(ctx.dtypes[0]), (grad * grad_W).to(ctx.dtypes[1]), None, None


def chunked_ce(h: torch.Tensor, W: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(M,) cross-entropy of each state in h (M, D) over the rows of W (N, D), targets in 0..N-1."""
    return _ChunkedCE.apply(h, W, targets)


def mean_ce(h: torch.Tensor, W: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None):
    """The mean of chunked_ce(h, W, targets), or its weighted mean Σ w·ce / Σ w with `weights` (M,); when a
    gradient is wanted it is computed on the way."""
    if weights is not None:
        weights = weights / weights.sum()
    if torch.is_grad_enabled() and (h.requires_grad or W.requires_grad):
        return _MeanCE.apply(h, W, targets, weights)
    each = chunked_ce(h, W, targets)
    return each.mean() if weights is None else (weights * each).sum()


def loss_from_states(model, states, targets, loss="ce", negatives=1, generator=None, per_target=False, weights=None):
    """Next-item loss from precomputed states (B, L, D) and targets (B, L); target 0 = no target.

    ce: full softmax over all N items. bce: SASRec-style binary CE, `negatives` uniform negatives per
    position (summed). sampled: softmax over the positive plus `negatives` uniform negatives shared by
    the batch. All are means over positions with a target (0 if there are none); with `weights` (B,), means
    in which each target weighs its row's weight. With `per_target`: (losses (M,), the row of each target
    (M,)) instead of their mean, for objectives that weigh users by their losses.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (expected one of {', '.join(LOSSES)})")
    mask = targets > 0  # (B, L)
    h = states[mask]  # (M, D): only positions with a target, so logits are never (B, L, N)
    pos = targets[mask]  # (M,), item ids 1..N
    if per_target:
        rows = mask.nonzero()[:, 0]  # (M,)
        return _losses(model, h, pos, loss, negatives, generator, "none"), rows
    if h.shape[0] == 0:
        return states.sum() * 0.0  # keeps the graph (and the device) and avoids 0/0
    w = None if weights is None else weights.to(h.dtype)[mask.nonzero()[:, 0]]  # (M,)
    if loss == "ce":  # the fused mean: its gradients in the forward
        return mean_ce(h, model.item_emb.weight[1:], pos - 1, w)
    each = _losses(model, h, pos, loss, negatives, generator, "mean" if w is None else "none")
    return each if w is None else (w * each).sum() / w.sum()


def _losses(model, h, pos, loss, negatives, generator, reduction):
    n_items = model.n_items
    if loss == "ce":  # class j is item j + 1: the table without its padding row
        if reduction == "mean":
            return mean_ce(h, model.item_emb.weight[1:], pos - 1)
        return chunked_ce(h, model.item_emb.weight[1:], pos - 1)  # (M,)

    W = model.item_emb.weight  # (N+1, D), tied with score()
    dev = generator.device if generator is not None else h.device
    pos_logit = (h * W[pos]).sum(-1)  # (M,)
    if loss == "bce":
        neg = torch.randint(1, n_items + 1, (h.shape[0], negatives), generator=generator, device=dev).to(h.device)
        neg_logit = (h.unsqueeze(1) * W[neg]).sum(-1)  # (M, K)
        # -log sigmoid(pos) - sum_k log(1 - sigmoid(neg_k)), written with softplus for stability
        each = F.softplus(-pos_logit) + F.softplus(neg_logit).sum(-1)  # (M,)
        return each.mean() if reduction == "mean" else each
    neg = torch.randint(1, n_items + 1, (negatives,), generator=generator, device=dev).to(h.device)
    neg_logit = h @ W[neg].T  # (M, K)
    # a sampled "negative" that is the positive itself would fight the positive: drop those hits
    neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == pos.unsqueeze(1), float("-inf"))  # (M, K)
    logits = torch.cat([pos_logit.unsqueeze(1), neg_logit], dim=1)  # (M, 1+K), positive is class 0
    return F.cross_entropy(logits, torch.zeros_like(pos), reduction=reduction)


def padded_ce(model, states, pos, tgt, pos_w) -> torch.Tensor:
    """Full-softmax next-item loss on fixed shapes (what vmap needs): the states (B, W, D) at flat target
    positions `pos` (M,), targets `tgt` (M,), weights `pos_w` (M,) 1 for real positions and 0 for padding."""
    h = states.reshape(-1, states.shape[-1])[pos]  # (M, D)
    ce = F.cross_entropy(model.score(h), tgt.clamp(min=1) - 1, reduction="none")  # (M,)
    return (ce * pos_w).sum() / pos_w.sum().clamp(min=1)
