"""How a batch's next-item losses are weighed over its users (`transfer.robust`): instead of the plain mean over
targets, where a user counts by how many targets it has, a loss that weighs the users the model serves worst
more (CVaR, group DRO), or every user more alike (balanced).

- CVaR (`kind: cvar`): each user of the batch has a loss, the mean over its targets, and a weight, its share of
  the batch's targets. The loss is the mean over the worst users that make up a share α of the weight, i.e.
  CVaR_α = min_η η + E_w[(ℓ_u − η)_+] / α of that distribution; α = 1 is exactly the plain mean over targets.
  `mix` blends in the plain mean, which a hard top-α alone learns slowly from.
- Group DRO (`kind: group_dro`, Sagawa et al. 2020): users in fixed groups (by training-history length: equal-
  sized quantiles, or head/tail). Each step the group weights q move toward the worse groups,
  q_g ← q_g·exp(η·ℓ_g), renormalised, and the loss is Σ_g q_g·ℓ_g (ℓ_g: the mean loss of the group's targets
  in the batch, 0 for a group absent from it). q is training state: checkpointed, logged every epoch, and
  under torchrun averaged over the ranks at the end of each epoch.
- Balanced (`kind: balanced`): each target weighs n_u^−power, n_u the number of training targets of its user,
  normalised over the batch. The test metrics average over users, the plain loss over targets, so a user with
  200 events counts 200 times as much in training as one with 2 events and once in the test score; power 1
  trains on the test's weighting, power 0 is the plain mean. The weights are fixed, so the backbone's fused
  mean loss takes them and the epoch costs what a plain one does.
"""

from __future__ import annotations

import numpy as np
import torch

from ltrec.runtime.distributed import LOCAL, Dist


def user_means(losses: torch.Tensor, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss (U,), number of targets (U,)) of each distinct user among the targets."""
    _, inv = torch.unique(users, return_inverse=True)
    counts = torch.bincount(inv).to(losses.dtype)  # (U,)
    sums = torch.zeros(len(counts), dtype=losses.dtype, device=losses.device).index_add(0, inv, losses)
    return sums / counts, counts


def cvar(losses: torch.Tensor, users: torch.Tensor, alpha: float) -> torch.Tensor:
    """CVaR_α of the users' mean losses, each user weighted by its share of the targets."""
    means, counts = user_means(losses, users)
    weight = counts / counts.sum()  # (U,)
    order = torch.argsort(means.detach(), descending=True)
    before = torch.cumsum(weight[order], 0) - weight[order]  # weight of the worse users
    take = torch.minimum(weight[order], (alpha - before).clamp(min=0))  # each user's part of the top α
    return (take * means[order]).sum() / alpha


class Stateless:
    """An objective with no training state: nothing to log, checkpoint or average over ranks."""

    fixed_weights = False  # True: per-window weights known before the loss (`weights(users)`), no per-target losses

    def stats(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def sync(self) -> None:
        pass


class CVaRLoss(Stateless):
    def __init__(self, cfg):
        self.alpha, self.mix = cfg.alpha, cfg.mix

    def __call__(self, losses: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        robust = cvar(losses, users, self.alpha)
        return robust if self.mix == 0 else (1 - self.mix) * robust + self.mix * losses.mean()


class BalancedLoss(Stateless):
    """Fixed weights, known before the loss: the backbone's fused mean takes them (no per-target losses)."""

    fixed_weights = True

    def __init__(self, cfg, train_lengths: np.ndarray):
        targets = np.maximum(train_lengths.astype(np.float64) - 1, 1)  # n events give n − 1 next-item targets
        self.weight = torch.from_numpy(targets**-cfg.power).float()  # (U,)

    def weights(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) the weight of each window's targets, from its user."""
        return self.weight.to(users.device)[users]


def length_groups(train_lengths: np.ndarray, head: np.ndarray, cfg) -> np.ndarray:
    """(U,) the group of every user: head/tail, or quantiles of training events over the users who train
    (ties kept together, so there can be fewer groups than asked where many users share a length)."""
    if cfg.groups == "head_tail":
        return head.astype(np.int64)
    trained = train_lengths[train_lengths >= 2]  # a user with fewer events has no training window
    if not len(trained):
        return np.zeros(len(train_lengths), np.int64)
    edges = np.unique(np.quantile(trained, np.linspace(0, 1, cfg.n_groups + 1)[1:-1], method="higher"))
    edges = edges[edges > trained.min()]  # the shortest trained users form the first group, never an empty one
    return np.searchsorted(edges, train_lengths, side="right").astype(np.int64)


class GroupDROLoss:
    fixed_weights = False

    def __init__(self, cfg, user_group: torch.Tensor, dist: Dist = LOCAL):
        self.step, self.user_group, self.dist = cfg.step, user_group, dist
        self.n = int(user_group.max()) + 1 if len(user_group) else 1
        self.q = torch.full((self.n,), 1.0 / self.n, dtype=torch.float64)

    def __call__(self, losses: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        group = self.user_group.to(losses.device)[users]  # (M,)
        sums = torch.zeros(self.n, dtype=losses.dtype, device=losses.device).index_add(0, group, losses)
        counts = torch.bincount(group, minlength=self.n).to(losses.dtype)
        group_loss = sums / counts.clamp(min=1)  # (G,), 0 for a group not in the batch
        with torch.no_grad():  # the exponentiated-gradient step on q, then the loss with the new q
            q = self.q * torch.exp(self.step * group_loss.detach().double().cpu())
            self.q = q / q.sum()
        return (self.q.to(losses.device, losses.dtype) * group_loss).sum()

    def stats(self) -> dict:
        return {f"dro_q{g}": float(v) for g, v in enumerate(self.q.tolist())}

    def state_dict(self) -> dict:
        return {"q": self.q.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.q = state["q"].double().clone()

    def sync(self) -> None:
        """Every rank ends the epoch with the mean of the ranks' q (each updated it on its own batches)."""
        if self.dist.world > 1:
            q = [self.q.float()]
            self.dist.mean_(q)
            self.q = q[0].double() / q[0].double().sum()


def robust_loss(cfg, seqs, dist: Dist = LOCAL):
    """The recipe's robust objective, or None."""
    if cfg is None:
        return None
    if cfg.kind == "cvar":
        return CVaRLoss(cfg)
    if cfg.kind == "balanced":
        return BalancedLoss(cfg, seqs.train_lengths)
    groups = torch.from_numpy(length_groups(seqs.train_lengths, seqs.head, cfg))
    return GroupDROLoss(cfg, groups, dist)
