"""How one epoch updates the model: plain mini-batch training and the tail components that act on training.

An epoch is three parts, composed by `Runner`:
- an **objective** (`objective.py`): the loss of a batch of windows — the backbone's own objective, or a
  robust objective over the batch's users (`robust.py`: CVaR, group DRO), plus the enabled terms
  (`adversarial.py`: the head/tail discriminator through gradient reversal; `user_branch.py`: the head→tail
  map of user states; `contrastive.py`: InfoNCE between states that predict the same item);
- a **plan** (`ltrec.training.sampling`): which windows each update sees — shuffled batches, users drawn uniformly,
  or gradient alignment's k user-disjoint batches per outer iteration;
- an **update** (`grad_align.py`, `chains.py`): how those windows move the weights — one Adam step per batch,
  k inner steps and an outer Reptile step, or C such chains side by side.

The runner carries the optimiser state, so the trainer (checkpoints, resume) need not know which kind of
training runs. The same code runs in one process and under torchrun, where each rank holds only its own
users' windows (`distributed.shard_users`) and every rank takes as many updates per epoch as the busiest one.
"""

from __future__ import annotations

import math

import torch

from ltrec.runtime.distributed import LOCAL, Dist
from ltrec.training.sampling import UserSampler, drawn_plan, permuted_plan, window_batches, window_plan
from ltrec.training.transfer.chains import Chains
from ltrec.training.transfer.contrastive import ContrastiveLoss
from ltrec.training.transfer.grad_align import AdamSteps, Reptile
from ltrec.training.transfer.objective import Objective
from ltrec.training.transfer.robust import robust_loss
from ltrec.training.transfer.user_branch import BranchLoss


class Runner:
    """One epoch = for each group of batches the plan gives, one update."""

    def __init__(self, objective: Objective, plan, update, dist: Dist = LOCAL, sampler: UserSampler | None = None):
        self.objective, self.plan, self.update, self.dist, self.epoch = objective, plan, update, dist, 0
        self.sampler = sampler  # the users the plan draws from, where it draws users
        self.decay = None  # epoch → the factor on the learning rate (train.lr_decay), plain training only

    def __call__(self, on_batch) -> dict:
        self.epoch += 1
        self.objective.start_epoch(self.epoch)
        if self.decay is not None:  # a function of the epoch alone, so a resumed run continues it
            self.update.scale_lr(self.decay(self.epoch))
        count, groups = self.plan()
        for _ in range(self.dist.sum_ints([count], "max")[0]):  # the same count on every rank
            self.update(next(groups, None), on_batch)  # None: this rank has run out, it joins with weight 0
        self.dist.sum_stats(self.objective.sums)
        if self.objective.robust is not None:
            self.objective.robust.sync()
        return self.objective.stats()

    def parameters(self) -> list:
        return self.objective.parameters()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "update": self.update.state_dict(), "objective": self.objective.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.objective.load_state_dict(state["objective"])
        self.update.load_state_dict(state["update"])

    def rank_state(self) -> dict:
        return self.update.rank_state()

    def load_rank_state(self, state: dict) -> None:
        self.update.load_rank_state(state)


def make_runner(recipe, model, seqs, windows, device, gen: torch.Generator, dist: Dist = LOCAL) -> Runner:
    """The epoch runner a recipe asks for, over training windows (inputs, targets, owner) as numpy arrays."""
    inputs, targets, owner = (torch.from_numpy(a) for a in windows)
    user_head = torch.from_numpy(seqs.head)
    t = recipe.transfer
    branch = BranchLoss(t.user_branch, model, gen) if t.user_branch else None
    objective = Objective(
        recipe,
        model,
        inputs,
        targets,
        owner,
        user_head[owner],
        device,
        gen,
        robust_loss(t.robust, seqs, dist),
        branch,
        ContrastiveLoss(t.contrastive, inputs, targets, gen) if t.contrastive else None,
    )
    cfg, ga = recipe.train, recipe.transfer.grad_align
    if ga is None:
        update = AdamSteps(
            objective,
            cfg.lr,
            cfg.weight_decay,
            recipe.transfer.adversarial.lr if recipe.transfer.adversarial else None,
            dist,
        )
        if cfg.sampling == "users":  # each step: users_per_step users; an epoch: about one step per user
            sampler = UserSampler(owner, user_head, "uniform", max(1, cfg.batch_size // cfg.users_per_step), gen)
            steps = math.ceil(dist.sum_ints([len(sampler.users)])[0] / cfg.users_per_step)
            per_rank = math.ceil(cfg.users_per_step / dist.world)
            runner = Runner(
                objective, lambda: (steps, ([b] for b in sampler.batches(per_rank, steps))), update, dist, sampler
            )
        else:
            size = math.ceil(cfg.batch_size / dist.world)  # one step still sees batch_size windows over all ranks

            def plain():
                batches = window_batches(objective.lengths, size, gen)
                return len(batches), ([b] for b in batches)

            runner = Runner(objective, plain, update, dist)
        if cfg.lr_decay == "linear":
            runner.decay = lambda epoch: max(1, cfg.epochs - epoch + 1) / cfg.epochs
        return runner
    update = (Chains if ga.chains > 1 else Reptile)(objective, ga, cfg.lr, dist)
    parts = ga.chains * ga.k
    if ga.sampling == "windows":
        return Runner(
            objective,
            lambda: (math.ceil(len(owner) / (parts * cfg.batch_size)), window_plan(owner, parts, cfg.batch_size, gen)),
            update,
            dist,
        )
    drawn = "uniform" if ga.sampling == "permuted" else ga.sampling
    sampler = UserSampler(owner, user_head, drawn, max(1, cfg.batch_size // ga.users_per_step), gen)
    if ga.sampling == "permuted":
        return Runner(objective, lambda: permuted_plan(sampler, parts, ga.users_per_step), update, dist, sampler)
    # vmapped chains need equal shapes: exactly batch_size / users_per_step windows per user, with replacement
    iterations = math.ceil(dist.sum_ints([len(sampler.users)])[0] / (parts * ga.users_per_step * dist.world))
    return Runner(
        objective,
        lambda: drawn_plan(sampler, parts, ga.users_per_step, iterations, fixed=ga.chains > 1),
        update,
        dist,
        sampler,
    )
