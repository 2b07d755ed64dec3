"""The head→tail user branch (`transfer.user_branch`), the user side of MELT (Kim et al., SIGIR 2023).

A head user's state from the whole window is what a tail user's short history cannot give. The branch learns
it: for head users' windows, the state of a random recent suffix (at most `suffix_max` items, tail-length) is
mapped by f(h) = h + W(h) toward the state of the whole window (the target is detached), with loss
weight·mean over windows and dimensions of (f(h_suffix) − h_full)². At inference f is applied to every history with
fewer items than the cut-off (the head threshold, or max_len where that is smaller): `Branched.encode` does it, so
evaluation, the exported ONNX graph and `predict` all get it. W starts at zero, so f starts as the identity.
"""

from __future__ import annotations

import torch

from ltrec.models.branched import Branched
from ltrec.training.transfer.adversarial import matched_prefix


class BranchLoss:
    """The branch's training term on a batch: head windows' suffix states mapped toward their full states."""

    def __init__(self, cfg, model: Branched, gen: torch.Generator):
        self.weight, self.model, self.gen = cfg.weight, model, gen
        self.longest = cfg.suffix_max or max(model.cutoff - 1, 1)

    def __call__(
        self, states: torch.Tensor, inputs: torch.Tensor, lengths: torch.Tensor, is_head: torch.Tensor
    ) -> torch.Tensor | None:
        """weight·mean (f(h_suffix) − h_full)² over the batch's head windows with ≥ 2 items (None if none)."""
        rows = is_head & (lengths >= 2)
        if not bool(rows.any()):
            return None
        n = lengths[rows].to(self.gen.device)
        top = torch.clamp(n - 1, max=self.longest)  # a suffix is shorter than its window
        draw = torch.rand(len(n), generator=self.gen, device=self.gen.device)
        seen = (1 + (draw * top).long()).to(inputs.device)  # uniform over 1..top
        suffix = self.model.backbone.encode(matched_prefix(inputs[rows], seen, self.longest))  # (H, D)
        target = states[rows, -1].detach()  # the whole window's state
        return self.weight * (self.model.branch(suffix) - target).pow(2).mean()
