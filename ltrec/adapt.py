"""Few-step adaptation for cold users (`eval.adapt`): fine-tune a copy of the model on one user's history.

This is the use a Reptile-style initialisation is made for: a new user arrives with a short history, the
model takes `steps` plain SGD steps of next-item loss on that history (full softmax, every position with a
next item is a target), then scores. The target (and, for the test split, the validation event before it
only as an input) never enters the loss: the history is exactly what zero-shot scoring sees.

Dropout is off during the steps (eval mode), so adapted scores are deterministic. The weights are restored
after every user from one snapshot, so users never leak into each other.
"""

from __future__ import annotations

import numpy as np
import torch

from .models import next_item_loss


def adapted_scores(model, history: np.ndarray, steps: int, lr: float, device="cpu") -> torch.Tensor:
    """(B, N) scores after adapting the model to each row of `history` (B, L) separately."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # nothing to adapt (popularity): adaptation is the zero-shot ranking
        with torch.no_grad():
            return model(torch.as_tensor(history, device=device)).float()
    snapshot = [p.detach().clone() for p in params]
    out = []
    try:
        for row in history:
            seq = torch.as_tensor(row[row > 0], device=device).unsqueeze(0)  # (1, n), pads dropped: pad-invariant
            if seq.shape[1] >= 2:
                _sgd(model, params, seq[:, :-1], seq[:, 1:], steps, lr)
            with torch.no_grad():
                out.append(model(torch.as_tensor(row, device=device).unsqueeze(0)).float())  # (1, N)
                for p, s in zip(params, snapshot):
                    p.copy_(s)
    finally:
        with torch.no_grad():  # an interrupted evaluation must not leave a half-adapted model behind
            for p, s in zip(params, snapshot):
                p.copy_(s)
    return torch.cat(out) if out else torch.zeros(0, model.n_items, device=device)


def _sgd(model, params, inputs: torch.Tensor, targets: torch.Tensor, steps: int, lr: float) -> None:
    with torch.enable_grad():
        for _ in range(steps):
            loss = next_item_loss(model, inputs, targets)
            if not torch.isfinite(loss):
                return  # keep the last finite weights: one odd history must not break the evaluation
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    if g is not None:
                        p.sub_(lr * g)
