"""Adversarial training (`transfer.adversarial`): a discriminator on the user state guesses head vs tail,
and a gradient-reversal layer of weight λ between encoder and discriminator makes one backward pass train the
discriminator to tell them apart and the encoder to make that impossible ("frequency-agnostic" states).

Head windows hold more items than tail windows, which alone tells them apart; `state: matched` reads a head
window's state from only as many of its newest items as a random tail window holds, so the discriminator
must use what the items say. Every training path (one process, torchrun, vmapped chains) calls `Adversary`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GradReverse(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -λ backward. Written in the form torch.func can vmap."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight: float):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.weight = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


class Discriminator(nn.Module):
    """P(head | user state): a small MLP (or linear with hidden=0) returning logits."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = (
            nn.Linear(dim, 1) if hidden == 0 else nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)  # (B,)


def balanced_bce(logits: torch.Tensor, is_head: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """BCE with head and tail weighted equally, whatever their share of the batch (most users are tail).
    `rows` (B,) 0/1 marks the real rows of a padded batch (vmapped chains); padding weighs nothing."""
    y = is_head.to(logits.dtype)
    real = 1.0 if rows is None else rows
    n_head = (y * real).sum().clamp(min=1)
    n_tail = ((1 - y) * real).sum().clamp(min=1)
    weight = torch.where(is_head, 0.5 / n_head, 0.5 / n_tail) * real  # (B,), sums to 1 when both classes present
    return (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * weight).sum()


def matched_prefix(inputs: torch.Tensor, seen: torch.Tensor, longest: int) -> torch.Tensor:
    """(B, M) each left-padded window's newest `seen` items, left-padded again; M = min(width, longest)."""
    m = min(inputs.shape[-1], longest)
    keep = torch.arange(m, device=inputs.device) >= (m - seen).unsqueeze(-1)
    return inputs[..., -m:] * keep


class Adversary(nn.Module):
    """The discriminator and its loss on a batch of windows. `weight` is λ, 0 during the warm-up epochs."""

    def __init__(self, cfg, dim: int, lengths: torch.Tensor, is_head: torch.Tensor, gen: torch.Generator):
        super().__init__()
        self.cfg, self.gen, self.weight = cfg, gen, cfg.weight
        self.disc = Discriminator(dim, cfg.hidden)
        # state: matched draws a head window's item count from the tail windows' counts
        tail = lengths[~is_head.bool()] if cfg.state == "matched" else lengths[:0]
        self.tail_lengths = tail.to(gen.device)
        self.longest_tail = int(tail.max()) if len(tail) else 0

    def set_epoch(self, epoch: int) -> None:
        self.weight = 0.0 if epoch <= self.cfg.warmup_epochs else self.cfg.weight

    def counts(self, lengths: torch.Tensor, is_head: torch.Tensor, device) -> torch.Tensor | None:
        """state: matched — (B,) how many of its newest items each window's user state is read from: all of a
        tail window's, as many of a head window's as a randomly drawn tail window holds (at most all).
        None with state: last (each window's newest state, which has seen all its items)."""
        if not self.longest_tail:
            return None
        dev = self.tail_lengths.device
        draw = self.tail_lengths[torch.randint(len(self.tail_lengths), (len(lengths),), generator=self.gen, device=dev)]
        n = lengths.to(dev)
        return torch.where(is_head.to(dev), torch.minimum(draw, n), n).to(device)

    def forward(
        self,
        model,
        states: torch.Tensor,
        inputs: torch.Tensor,
        is_head: torch.Tensor,
        seen: torch.Tensor | None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(balanced BCE through gradient reversal, logits (B,)) for windows `inputs` (B, L) whose
        per-position states are `states` (B, L, D)."""
        # the encoder's own state, as with state: last: a user branch's map (`model.encoder` is what it wraps) is
        # for inference, and trained through the reversal it would learn to hide short histories, not rank them
        state = states[:, -1] if seen is None else model.encoder.encode(matched_prefix(inputs, seen, self.longest_tail))
        logits = self.disc(GradReverse.apply(state, self.weight))  # (B,)
        return balanced_bce(logits, is_head, rows), logits
