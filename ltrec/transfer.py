"""How one epoch updates the model: plain mini-batch training and the paper's two transfer components.

- Adversarial training (`transfer.adversarial`): a discriminator D on the user state guesses head vs tail;
  a gradient-reversal layer of weight λ sits between encoder and D, so one backward pass trains D to tell
  head from tail and the encoder to make that impossible ("frequency-agnostic" user states).
- Gradient alignment (`transfer.grad_align`): each outer iteration remembers θ₀ (model and discriminator),
  takes k inner steps, each on windows of users that no other step of the iteration uses, then moves
  θ ← θ₀ + β(θ_k − θ₀) (or feeds θ₀ − θ_k to Adam). To first order this is SGD on the summed losses minus
  (α/2)·Σ inner products of different users' gradients: it favours directions that help several users.

`make_epoch` returns an object that runs one epoch when called and carries its optimiser state, so the
trainer (checkpoints, resume) does not need to know which kind of training runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class GradReverse(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -λ backward."""

    @staticmethod
    def forward(ctx, x, weight: float):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


class Discriminator(nn.Module):
    """P(head | user state): a small MLP (or linear with hidden=0) returning logits."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Linear(dim, 1) if hidden == 0 else nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)  # (B,)


def balanced_bce(logits: torch.Tensor, is_head: torch.Tensor) -> torch.Tensor:
    """BCE with head and tail weighted equally, whatever their share of the batch (most users are tail)."""
    y = is_head.float()
    n_head = y.sum().clamp(min=1)
    n_tail = (1 - y).sum().clamp(min=1)
    weight = torch.where(is_head, 0.5 / n_head, 0.5 / n_tail)  # (B,), sums to 1 when both classes present
    return (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * weight).sum()


class Step:
    """The loss of one batch of windows: the backbone's training loss, plus the adversarial term when enabled."""

    def __init__(self, recipe, model, inputs, targets, owner_head, device, gen):
        self.cfg, self.model, self.device, self.gen = recipe.train, model, device, gen
        self.inputs, self.targets, self.owner_head = inputs, targets, owner_head
        self.lengths = (inputs > 0).sum(1)  # (W,)
        adv = recipe.transfer.adversarial
        self.adv = adv
        self.disc = Discriminator(model.dim, adv.hidden).to(device) if adv else None
        self.weight = adv.weight if adv else 0.0
        self.reset_stats()

    def reset_stats(self) -> None:
        self.sums = {"loss": 0.0, "batches": 0, "skipped": 0, "adv_loss": 0.0, "correct_head": 0.0,
                     "correct_tail": 0.0, "n_head": 0.0, "n_tail": 0.0}

    def loss(self, idx: torch.Tensor) -> torch.Tensor | None:
        width = int(self.lengths[idx].max())  # drop leading all-pad columns: backbones are pad-invariant
        inputs = self.inputs[idx, -width:].to(self.device)
        # the backbone's own objective: next-item at every position by default, BERT4Rec's cloze
        loss, state = self.model.training_loss(inputs, self.targets[idx, -width:].to(self.device),
                                               self.cfg.loss, self.cfg.negatives, self.gen)
        if self.disc is not None:
            is_head = self.owner_head[idx].to(self.device)  # (B,)
            logits = self.disc(GradReverse.apply(state, self.weight))  # the window's user state (B, D)
            adv_loss = balanced_bce(logits, is_head)
            loss = loss + adv_loss
            with torch.no_grad():
                right = (logits > 0) == is_head
                s = self.sums
                s["adv_loss"] += adv_loss.item()
                s["correct_head"] += (right & is_head).sum().item()
                s["correct_tail"] += (right & ~is_head).sum().item()
                s["n_head"] += is_head.sum().item()
                s["n_tail"] += (~is_head).sum().item()
        if not torch.isfinite(loss):  # one bad batch must not poison the weights; a diverged epoch ends the run
            self.sums["skipped"] += 1
            return None
        self.sums["loss"] += loss.item()
        self.sums["batches"] += 1
        return loss

    def stats(self) -> dict:
        s = self.sums
        out = {"loss": s["loss"] / s["batches"] if s["batches"] else float("nan"), "skipped": s["skipped"]}
        if self.disc is not None:
            # balanced accuracy: 0.5 is chance, whatever the head/tail mix
            out["disc_acc"] = 0.5 * (s["correct_head"] / max(s["n_head"], 1) + s["correct_tail"] / max(s["n_tail"], 1))
            out["adv_loss"] = s["adv_loss"] / max(s["batches"], 1)
        return out

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters()) + (list(self.disc.parameters()) if self.disc else [])

    def set_epoch(self, epoch: int) -> None:
        self.weight = 0.0 if self.adv is None or epoch <= self.adv.warmup_epochs else self.adv.weight


def length_batches(lengths: torch.Tensor, batch_size: int, gen: torch.Generator, pool: int = 50) -> list:
    """Shuffled batches of indices whose windows have similar lengths.

    Long-tailed logs are mostly short windows; a batch of similar lengths can drop its leading all-pad
    columns, which changes nothing (every backbone is invariant to left padding, a tested property) and
    saves most of the encoder's work. Sorting happens only within pools of `pool` batches, so batches stay
    random samples of the data.
    """
    perm = torch.randperm(len(lengths), generator=gen)
    batches = []
    for lo in range(0, len(perm), batch_size * pool):
        chunk = perm[lo:lo + batch_size * pool]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += list(chunk.split(batch_size))
    order = torch.randperm(len(batches), generator=gen)
    return [batches[i] for i in order]


def _adam(params, lr, recipe, extra=None):
    groups = [{"params": params, "lr": lr}]
    if extra:
        groups.append(extra)
    return torch.optim.Adam(groups, weight_decay=recipe.train.weight_decay)


class PlainEpoch:
    """Shuffled mini-batches of training windows, Adam, the backbone's training loss."""

    def __init__(self, recipe, step: Step):
        self.step, self.batch_size, self.epoch = step, recipe.train.batch_size, 0
        disc = {"params": list(step.disc.parameters()), "lr": recipe.transfer.adversarial.lr} if step.disc else None
        self.opt = _adam(list(step.model.parameters()), recipe.train.lr, recipe, disc)

    def __call__(self, on_batch) -> dict:
        self.epoch += 1
        self.step.set_epoch(self.epoch)
        self.step.model.train()
        self.step.reset_stats()
        for idx in length_batches(self.step.lengths, self.batch_size, self.step.gen):
            loss = self.step.loss(idx)
            if loss is not None:
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                on_batch(len(idx), loss.item())
        return self.step.stats()

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "epoch": self.epoch,
                "disc": self.step.disc.state_dict() if self.step.disc else {}}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.epoch = state["epoch"]
        if self.step.disc:
            self.step.disc.load_state_dict(state["disc"])


class GradAlignEpoch(PlainEpoch):
    """Reptile/MER outer loop over inner steps that each see different users (see the module docstring)."""

    def __init__(self, recipe, step: Step, owner: torch.Tensor, user_head: torch.Tensor):
        self.ga, self.step, self.epoch = recipe.transfer.grad_align, step, 0
        ga = self.ga
        self.params = step.parameters()
        skip = set() if ga.align_embeddings else {id(step.model.item_emb.weight)}
        self.aligned = [p for p in self.params if id(p) not in skip]
        inner = torch.optim.SGD if ga.inner_optimizer == "sgd" else torch.optim.Adam
        self.opt = inner(self.params, lr=ga.inner_lr)
        self.outer = torch.optim.Adam(self.aligned, lr=recipe.train.lr) if ga.outer == "adam" else None
        # windows are grouped by owner (train_windows emits them user by user): user u owns [start, start + count)
        users, counts = torch.unique_consecutive(owner, return_counts=True)
        self.users, self.counts = users, counts
        self.starts = torch.cumsum(counts, 0) - counts
        head = user_head[users]
        if ga.sampling == "uniform":
            self.weights = torch.ones(len(users))
        elif ga.sampling == "events":
            self.weights = counts.double()
        else:  # balanced: head and tail users drawn equally often in total
            self.weights = torch.where(head, 1.0 / head.sum().clamp(min=1), 1.0 / (~head).sum().clamp(min=1))
        self.per_user = max(1, recipe.train.batch_size // ga.users_per_step)

    def _windows(self, chosen: torch.Tensor) -> torch.Tensor:
        """Up to `per_user` random windows of each chosen user (index into the window arrays)."""
        draws = torch.rand(len(chosen), self.per_user, generator=self.step.gen)  # (m, c)
        offset = (draws * self.counts[chosen, None]).long()  # (m, c), < count
        return torch.unique(self.starts[chosen, None] + offset)

    def __call__(self, on_batch) -> dict:
        self.epoch += 1
        ga, step = self.ga, self.step
        step.set_epoch(self.epoch)
        step.model.train()
        step.reset_stats()
        per_iter = ga.k * ga.users_per_step
        iterations = math.ceil(len(self.users) / per_iter)
        for _ in range(iterations):
            chosen = torch.multinomial(self.weights, min(per_iter, len(self.users)), replacement=False,
                                       generator=step.gen)  # all distinct: no two inner steps share a user
            theta0 = [p.detach().clone() for p in self.aligned]
            for group in chosen.split(ga.users_per_step):
                idx = self._windows(group)
                loss = step.loss(idx)
                if loss is None:
                    continue
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                on_batch(len(idx), loss.item())
            self._outer_step(theta0)
        return step.stats()

    @torch.no_grad()
    def _outer_step(self, theta0: list[torch.Tensor]) -> None:
        if self.outer is None:  # θ ← θ₀ + β(θ_k − θ₀)
            for p, p0 in zip(self.aligned, theta0):
                p.copy_(p0 + self.ga.beta * (p - p0))
            return
        for p, p0 in zip(self.aligned, theta0):  # Adam on the pseudo-gradient θ₀ − θ_k, starting from θ₀
            p.grad = p0 - p
            p.copy_(p0)
        self.outer.step()
        self.outer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["outer"] = self.outer.state_dict() if self.outer else {}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.outer:
            self.outer.load_state_dict(state["outer"])


def make_epoch(recipe, model, seqs, inputs, targets, owner, device, gen: torch.Generator):
    user_head = torch.from_numpy(seqs.head)
    step = Step(recipe, model, inputs, targets, user_head[owner], device, gen)
    if recipe.transfer.grad_align is not None:
        return GradAlignEpoch(recipe, step, owner, user_head)
    return PlainEpoch(recipe, step)
