"""Few-step adaptation for cold users (`eval.adapt`): fine-tune a copy of the model on one user's history.

This is the use a Reptile-style initialisation is made for: a new user arrives with a short history, the
model takes `steps` plain SGD steps of next-item loss on that history (full softmax, every position with a
next item is a target), then scores. The target never enters the loss: the history is exactly what
zero-shot scoring sees.

Every user gets a private copy of the adapted parameters — by default the encoder only (`params:
encoder`): a handful of events cannot reshape a 20k-item catalogue, and leaving the item table shared makes
adaptation cheap. Users are adapted side by side with torch.func (`vmap` over per-user parameter copies),
in chunks of similar history length (one by one for recurrent backbones: torch has no batching rule for
its GRU, and the arithmetic is the same). Dropout is off, so adapted scores are deterministic, and the model
itself is never modified.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap


class _NextItem(nn.Module):
    """The next-item loss of one left-padded history (1, W) as a module, so functional_call can swap weights."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        states = self.model.encode_all(inputs)[0]  # (W, D)
        ce = F.cross_entropy(self.model.score(states), targets[0].clamp(min=1) - 1, reduction="none")  # (W,)
        w = (targets[0] > 0).to(ce.dtype)
        return (ce * w).sum() / w.sum().clamp(min=1)


def adaptable(model: nn.Module, params: str = "encoder") -> list[str]:
    """Names of the parameters each user adapts."""
    table = model.item_table if model.tied else None
    return [n for n, p in model.named_parameters() if p.requires_grad and (params == "all" or p is not table)]


def adapted_scores(
    model, history: np.ndarray, steps: int, lr: float, device="cpu", params: str = "encoder", chunk: int | None = None
) -> torch.Tensor:
    """(B, N) scores after adapting a private copy of the model to each row of `history` (B, L)."""
    model.eval()
    names = adaptable(model, params)
    hist = torch.as_tensor(history, device=device)
    if not names or len(hist) == 0:  # nothing to adapt (popularity): adaptation is the zero-shot ranking
        with torch.no_grad():
            return model(hist).float()
    objective = _NextItem(model)
    live = dict(objective.named_parameters())
    own = {f"model.{n}": live[f"model.{n}"].detach() for n in names}
    size = sum(p.numel() for p in own.values())
    cap = chunk or max(1, min(256, int(5e7 // size)))  # ~200 MB of per-user copies per chunk
    lengths = (hist > 0).sum(1)
    order = torch.argsort(lengths, stable=True)  # similar lengths share a chunk: few pad columns
    out = torch.empty(len(hist), model.n_items, device=device)

    # tie_weights=False: a shared table is one shared module, swapped once (see transfer/chains.py)
    def loss(p, inputs, targets):
        return functional_call(objective, p, (inputs[None], targets[None]), tie_weights=False)

    def scores(p, row):
        return functional_call(model, {k[len("model.") :]: v for k, v in p.items()}, (row[None],), tie_weights=False)[0]

    step, each = per_user(model, grad(loss)), per_user(model, scores)
    lo = 0
    with torch.no_grad():
        while lo < len(order):
            hi = min(lo + cap, len(order))
            width = max(int(lengths[order[hi - 1]]), 1)  # sorted: the chunk's longest history
            hi = lo + max(1, min(hi - lo, int(2e7 // (width * model.n_items))))  # logits ≤ ~80 MB a chunk
            idx, lo = order[lo:hi], hi
            width = max(int(lengths[idx].max()), 1)
            rows = hist[idx, -width:]  # (b, width): the leading all-pad columns dropped (pad-invariant)
            inputs = rows[:, :-1]
            targets = torch.where(inputs > 0, rows[:, 1:], 0)  # next item of each real position
            p = {k: v.unsqueeze(0).repeat(len(idx), *[1] * v.dim()) for k, v in own.items()}
            if width >= 2:
                for _ in range(steps):
                    with torch.enable_grad():
                        g = step(p, inputs, targets)
                    ok = torch.stack([torch.isfinite(v).flatten(1).all(1) for v in g.values()]).all(0)  # (b,)
                    for k, v in g.items():  # a user whose step is not finite keeps the weights it has
                        p[k] = p[k] - lr * torch.where(ok.view(-1, *[1] * (v.dim() - 1)), v, 0.0)
            out[idx] = each(p, rows).float()
    return out


def per_user(model: nn.Module, fn):
    """fn mapped over a leading user axis of its arguments: vmapped, or looped where a layer of the model has
    no batching rule."""
    if not any(isinstance(m, nn.RNNBase) for m in model.modules()):
        return vmap(fn)

    def looped(p: dict, *rows: torch.Tensor):
        outs = [fn({k: v[i] for k, v in p.items()}, *(r[i] for r in rows)) for i in range(len(rows[0]))]
        if isinstance(outs[0], dict):
            return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}
        return torch.stack(outs)

    return looped
