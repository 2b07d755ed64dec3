"""How the weights move: plain Adam steps, or gradient alignment's inner and outer updates.

Gradient alignment (`transfer.grad_align`): each outer iteration remembers θ₀ (model and discriminator),
takes k inner steps, each on windows of users that no other step of the iteration uses, then moves
θ ← θ₀ + β(θ_k − θ₀) (or feeds θ₀ − θ_k to Adam). To first order this is SGD on the summed losses minus
(α/2)·Σ inner products of different users' gradients: it favours directions that help several users.

One code path serves one process and torchrun: the collectives of one process return their input. Under
torchrun plain training averages the ranks' gradients before every step (each rank holds batch_size / world
windows of its own users); gradient alignment runs each rank's inner steps on its own users without any
communication and averages the ranks' deltas θ_k − θ₀ before the outer step. A rank that has run out of
windows (or has none) joins the all-reduce with weight 0, so it neither waits nor dilutes the mean.
"""

from __future__ import annotations

import torch

from ltrec.runtime.distributed import LOCAL, Dist


class AdamSteps:
    """Plain training: one Adam step per batch (the discriminator at its own learning rate)."""

    def __init__(self, objective, lr: float, weight_decay: float, disc_lr: float | None, dist: Dist = LOCAL):
        self.objective, self.dist = objective, dist
        self.params = objective.parameters()
        groups = [{"params": list(objective.model.parameters()), "lr": lr}]
        if objective.adversary is not None:
            groups.append({"params": list(objective.adversary.parameters()), "lr": disc_lr})
        # fused: one kernel per tensor instead of about ten small ops, a sixth of Adam's time on CPU
        self.opt = torch.optim.Adam(groups, weight_decay=weight_decay, fused=True)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]

    def scale_lr(self, factor: float) -> None:
        """Every group's rate at `factor` times its configured one (the discriminator's too)."""
        for group, base in zip(self.opt.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def __call__(self, group, on_batch) -> None:
        idx = group[0] if group else None
        loss = self.objective.loss(idx) if idx is not None else None
        self.opt.zero_grad(set_to_none=True)
        if loss is not None:
            loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        total, had = self.dist.mean_(grads, 1.0 if loss is not None else 0.0, [p.grad is not None for p in self.params])
        if total > 0:  # some rank had a finite loss: every rank takes the same step
            for p, g, h in zip(self.params, grads, had):
                p.grad = g if h else None
            self.opt.step()
        if loss is not None:
            on_batch(len(idx), loss.item())

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])

    def rank_state(self) -> dict:  # the optimiser is in sync across ranks: nothing per rank
        return {}

    def load_rank_state(self, state: dict) -> None:
        pass


class OuterStep:
    """θ ← θ₀ + β·Δ (or Adam on −Δ) for the aligned parameters, Δ = mean over ranks of θ_k − θ₀; parameters
    left out of the alignment (item embeddings with align_embeddings off) keep θ₀ + Δ."""

    def __init__(self, params: list, aligned: list, cfg, lr: float, dist: Dist = LOCAL):
        self.params, self.beta, self.dist = params, cfg.beta, dist
        self.aligned = {id(p) for p in aligned}
        self.adam = torch.optim.Adam(aligned, lr=lr) if cfg.outer == "adam" else None

    @torch.no_grad()
    def __call__(self, theta0: list[torch.Tensor], weight: float) -> None:
        deltas = [p - p0 for p, p0 in zip(self.params, theta0)]
        total, _ = self.dist.mean_(deltas, weight)  # one all-reduce, model and discriminator together
        for p, p0, d in zip(self.params, theta0, deltas):
            if total == 0:
                p.copy_(p0)
            elif id(p) not in self.aligned:
                if self.dist.world > 1:  # one process: p already holds θ₀ + its own Δ
                    p.copy_(p0 + d)
            elif self.adam is None:
                p.copy_(p0 + self.beta * d)
            else:  # Adam on the pseudo-gradient θ₀ − θ_k, starting from θ₀
                p.grad = -d
                p.copy_(p0)
        if self.adam is not None and total > 0:
            self.adam.step()
            self.adam.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.adam.state_dict() if self.adam else {}

    def load_state_dict(self, state: dict) -> None:
        if self.adam:
            self.adam.load_state_dict(state)


def outer_step(objective, cfg, lr: float, dist: Dist = LOCAL) -> OuterStep:
    params = objective.parameters()
    skip = set() if cfg.align_embeddings else {id(objective.model.item_emb.weight)}
    return OuterStep(params, [p for p in params if id(p) not in skip], cfg, lr, dist)


class Reptile:
    """Gradient alignment with one chain: k inner steps (one per batch of the group), then the outer step."""

    def __init__(self, objective, cfg, lr: float, dist: Dist = LOCAL):
        self.objective, self.dist = objective, dist
        self.params = objective.parameters()
        inner = torch.optim.SGD if cfg.inner_optimizer == "sgd" else torch.optim.Adam
        self.opt = inner(self.params, lr=cfg.inner_lr)
        self.outer = outer_step(objective, cfg, lr, dist)

    def __call__(self, group, on_batch) -> None:
        theta0 = [p.detach().clone() for p in self.params]
        moved = group is not None and self._inner_steps(group, on_batch)
        self.outer(theta0, 1.0 if moved else 0.0)

    def _inner_steps(self, batches, on_batch) -> bool:
        """One inner step per batch of windows (each of other users); whether any step was taken."""
        moved = False
        for idx in batches:
            if not len(idx):
                continue
            loss = self.objective.loss(idx)
            if loss is None:
                continue
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            moved = True
            on_batch(len(idx), loss.item())
        return moved

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "outer": self.outer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.outer.load_state_dict(state["outer"])

    def rank_state(self) -> dict:
        """The inner optimiser's state: each rank's inner steps see other users, so it differs per rank."""
        return {"inner": self.opt.state_dict()}

    def load_rank_state(self, state: dict) -> None:
        self.opt.load_state_dict(state["inner"])
