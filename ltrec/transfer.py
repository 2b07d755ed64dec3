"""How one epoch updates the model: plain mini-batch training and the paper's two transfer components.

- Adversarial training (`transfer.adversarial`): a discriminator D on the user state guesses head vs tail;
  a gradient-reversal layer of weight λ sits between encoder and D, so one backward pass trains D to tell
  head from tail and the encoder to make that impossible ("frequency-agnostic" user states). Head windows
  hold more items than tail windows, which alone tells them apart; `state: matched` reads a head window's
  state from only as many of its newest items as a random tail window has, so D must use what the items say.
- Gradient alignment (`transfer.grad_align`): each outer iteration remembers θ₀ (model and discriminator),
  takes k inner steps, each on windows of users that no other step of the iteration uses, then moves
  θ ← θ₀ + β(θ_k − θ₀) (or feeds θ₀ − θ_k to Adam). To first order this is SGD on the summed losses minus
  (α/2)·Σ inner products of different users' gradients: it favours directions that help several users.

`make_epoch` returns an object that runs one epoch when called and carries its optimiser state, so the
trainer (checkpoints, resume) does not need to know which kind of training runs.

Under torchrun (`dist.world > 1`) each rank holds only its own users' windows (see `distributed.shard_users`):
plain training splits `train.batch_size` across the ranks and averages their gradients before every step, so
one step still sees `batch_size` windows; gradient alignment runs each rank's k inner steps on its own users
without any communication and averages the ranks' deltas θ_k − θ₀ before the outer step. Every rank takes
the same number of steps per epoch (the largest rank's count; shorter ranks repeat batches), so none waits.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import LOCAL, Dist
from .sampling import UserSampler, length_batches, window_plan


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


def matched_prefix(inputs: torch.Tensor, seen: torch.Tensor, longest: int) -> torch.Tensor:
    """(B, M) each left-padded window's newest `seen` items, left-padded again; M = min(width, longest)."""
    m = min(inputs.shape[-1], longest)
    keep = torch.arange(m, device=inputs.device) >= (m - seen).unsqueeze(-1)
    return inputs[..., -m:] * keep


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
        # state: matched draws a head window's item count from the tail windows' counts
        tail = self.lengths[~owner_head.bool()] if adv and adv.state == "matched" else self.lengths[:0]
        self.tail_lengths = tail.to(gen.device)
        self.longest_tail = int(tail.max()) if len(tail) else 0
        # bf16 autocast for the forward pass (weights, optimiser state and evaluation stay fp32); CUDA only
        self.bf16 = getattr(recipe.train, "precision", "fp32") == "bf16" and torch.device(device).type == "cuda"
        self.reset_stats()

    def reset_stats(self) -> None:
        self.sums = {"loss": 0.0, "batches": 0, "skipped": 0, "adv_loss": 0.0, "correct_head": 0.0,
                     "correct_tail": 0.0, "n_head": 0.0, "n_tail": 0.0}

    def loss(self, idx: torch.Tensor) -> torch.Tensor | None:
        width = int(self.lengths[idx].max())  # drop leading all-pad columns: backbones are pad-invariant
        inputs = self.inputs[idx, -width:].to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            return self._loss(idx, inputs, width)

    def _loss(self, idx: torch.Tensor, inputs: torch.Tensor, width: int) -> torch.Tensor | None:
        # the backbone's own objective: next-item at every position by default, BERT4Rec's cloze
        loss, states = self.model.training_loss(inputs, self.targets[idx, -width:].to(self.device),
                                                self.cfg.loss, self.cfg.negatives, self.gen)
        if self.disc is not None:
            is_head = self.owner_head[idx].to(self.device)  # (B,)
            seen = self.adv_counts(idx)
            state = states[:, -1] if seen is None else self.model.encode(matched_prefix(inputs, seen, self.longest_tail))
            logits = self.disc(GradReverse.apply(state, self.weight))  # (B,)
            adv_loss = balanced_bce(logits, is_head)
            loss = loss + adv_loss
            with torch.no_grad():
                right = (logits > 0) == is_head
                # one device-to-host copy instead of five: each is a sync on a GPU
                counts = torch.stack([adv_loss.detach().float(), (right & is_head).sum().float(),
                                      (right & ~is_head).sum().float(), is_head.sum().float(),
                                      (~is_head).sum().float()]).tolist()
                for key, value in zip(("adv_loss", "correct_head", "correct_tail", "n_head", "n_tail"), counts):
                    self.sums[key] += value
        if not torch.isfinite(loss):  # one bad batch must not poison the weights; a diverged epoch ends the run
            self.sums["skipped"] += 1
            return None
        self.sums["loss"] += loss.item()
        self.sums["batches"] += 1
        return loss

    def adv_counts(self, idx: torch.Tensor) -> torch.Tensor | None:
        """state: matched — (B,) how many of its newest items each window's user state is read from: all of a
        tail window's, and as many of a head window's as a randomly drawn tail window holds (at most all).
        None with state: last (every window's newest state, which has seen all its items)."""
        if not self.longest_tail:
            return None
        dev = self.tail_lengths.device
        n = self.lengths[idx].to(dev)
        draw = self.tail_lengths[torch.randint(len(self.tail_lengths), (len(idx),), generator=self.gen, device=dev)]
        return torch.where(self.owner_head[idx].to(dev), torch.minimum(draw, n), n).to(self.device)

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


def _adam(params, lr, recipe, extra=None):
    groups = [{"params": params, "lr": lr}]
    if extra:
        groups.append(extra)
    return torch.optim.Adam(groups, weight_decay=recipe.train.weight_decay)


class PlainEpoch:
    """Shuffled mini-batches of training windows, Adam, the backbone's training loss."""

    def __init__(self, recipe, step: Step, dist: Dist = LOCAL, sampler: UserSampler | None = None):
        self.step, self.batch_size, self.epoch, self.dist = step, recipe.train.batch_size, 0, dist
        disc = {"params": list(step.disc.parameters()), "lr": recipe.transfer.adversarial.lr} if step.disc else None
        self.opt = _adam(list(step.model.parameters()), recipe.train.lr, recipe, disc)
        # train.sampling: users — each step draws users_per_step users, an epoch as many steps as visit each once
        self.sampler, self.users_per_step = sampler, recipe.train.users_per_step
        self.pool = 50 if recipe.train.length_buckets else 1  # pool 1: sorted only inside each random batch
        self.all_users = dist.sum_ints([len(sampler.users)])[0] if sampler else 0  # over all ranks

    def _batches(self, world: int = 1):
        if self.sampler is None:
            return length_batches(self.step.lengths, math.ceil(self.batch_size / world), self.step.gen, self.pool)
        steps = math.ceil(self.all_users / self.users_per_step)
        return self.sampler.batches(math.ceil(self.users_per_step / world), steps)

    def __call__(self, on_batch) -> dict:
        if self.dist.world > 1:
            return self._distributed(on_batch)
        self.epoch += 1
        self.step.set_epoch(self.epoch)
        self.step.model.train()
        self.step.reset_stats()
        for idx in self._batches():
            loss = self.step.loss(idx)
            if loss is not None:
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                on_batch(len(idx), loss.item())
        return self.step.stats()

    def _distributed(self, on_batch) -> dict:
        """Each rank: batch_size / world of its own windows per step; gradients averaged before every step."""
        self.epoch += 1
        step, dist = self.step, self.dist
        step.set_epoch(self.epoch)
        step.model.train()
        step.reset_stats()
        batches = list(self._batches(dist.world))
        n = dist.sum_ints([len(batches)], "max")[0]  # a common count: no rank waits for another's all-reduce
        if batches:  # a short shard repeats its (shuffled) batches; an empty one only joins the all-reduces
            batches = (batches * math.ceil(n / len(batches)))[:n]
        params = step.parameters()
        for i in range(n):
            idx = batches[i] if batches else None
            loss = step.loss(idx) if idx is not None else None
            self.opt.zero_grad(set_to_none=True)
            if loss is not None:
                loss.backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            total, had = dist.mean_(grads, 1.0 if loss is not None else 0.0, [p.grad is not None for p in params])
            if total > 0:  # some rank had a finite loss: every rank takes the same step
                for p, g, h in zip(params, grads, had):
                    p.grad = g if h else None
                self.opt.step()
            if loss is not None:
                on_batch(len(idx), loss.item())
        dist.sum_stats(step.sums)
        return step.stats()

    def rank_state(self) -> dict:
        """What differs between ranks besides the random streams (plain: nothing, the optimiser is in sync)."""
        return {}

    def load_rank_state(self, state: dict) -> None:
        pass

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

    def __init__(self, recipe, step: Step, owner: torch.Tensor, user_head: torch.Tensor, dist: Dist = LOCAL):
        self.ga, self.step, self.epoch, self.dist = recipe.transfer.grad_align, step, 0, dist
        ga = self.ga
        self.params = step.parameters()
        skip = set() if ga.align_embeddings else {id(step.model.item_emb.weight)}
        self.aligned = [p for p in self.params if id(p) not in skip]
        inner = torch.optim.SGD if ga.inner_optimizer == "sgd" else torch.optim.Adam
        self.opt = inner(self.params, lr=ga.inner_lr)
        self.outer = torch.optim.Adam(self.aligned, lr=recipe.train.lr) if ga.outer == "adam" else None
        self.owner, self.batch_size = owner, recipe.train.batch_size
        per_user = max(1, recipe.train.batch_size // ga.users_per_step)
        drawn = "uniform" if ga.sampling in ("windows", "permuted") else ga.sampling
        self.sampler = UserSampler(owner, user_head, drawn, per_user, step.gen)
        self.all_users = dist.sum_ints([len(self.sampler.users)])[0]  # over all ranks

    def _plan(self, parts: int):
        """(iterations, plan): the outer iterations of one epoch, the same count on every rank, and per
        iteration `parts` batches of window indices in which no user appears twice. `sampling: windows`
        visits every window once (plain training's data); `permuted` every user once, users_per_step per
        batch; the others draw users_per_step users per batch, fresh users for every iteration (so some users
        go unvisited in an epoch, others come twice)."""
        if self.ga.sampling == "windows":
            mine = math.ceil(len(self.owner) / (parts * self.batch_size))
            return self.dist.sum_ints([mine], "max")[0], window_plan(self.owner, parts, self.batch_size, self.step.gen)
        per_iter = parts * self.ga.users_per_step
        if self.ga.sampling == "permuted":
            order = torch.randperm(len(self.sampler.users), generator=self.step.gen)
            chunks = order.split(per_iter)
            return (self.dist.sum_ints([len(chunks)], "max")[0],
                    ((self.sampler.subset(group) for group in chunk.split(self.ga.users_per_step)) for chunk in chunks))
        n = math.ceil(self.all_users / (per_iter * self.dist.world))

        def users():
            for _ in range(n if len(self.sampler.users) else 0):
                chosen = self.sampler.draw(per_iter)  # all distinct: no two batches share a user
                # lazily, so the random stream runs as in plain `train.sampling: users` when k = 1
                yield (self._windows_of(group) for group in chosen.split(self.ga.users_per_step))
        return n, users()

    def _windows_of(self, users: torch.Tensor) -> torch.Tensor:
        return self.sampler.windows(users)

    def __call__(self, on_batch) -> dict:
        if self.dist.world > 1:
            return self._distributed(on_batch)
        self.epoch += 1
        ga, step = self.ga, self.step
        step.set_epoch(self.epoch)
        step.model.train()
        step.reset_stats()
        for batches in self._plan(ga.k)[1]:
            theta0 = [p.detach().clone() for p in self.aligned]
            self._inner_steps(batches, on_batch)
            self._outer_step(theta0)
        return step.stats()

    def _inner_steps(self, batches, on_batch) -> bool:
        """One inner step per batch of windows (each of other users); whether any step was taken."""
        moved = False
        for idx in batches:
            if not len(idx):
                continue
            loss = self.step.loss(idx)
            if loss is None:
                continue
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            moved = True
            on_batch(len(idx), loss.item())
        return moved

    def _distributed(self, on_batch) -> dict:
        """Each rank runs its own k inner steps on its own users; the ranks' deltas are averaged for the outer
        step. An outer step thus moves along the mean of `world` Reptile chains, and an epoch, which still
        visits about every user once, has `world` times fewer outer steps."""
        self.epoch += 1
        ga, step, dist = self.ga, self.step, self.dist
        step.set_epoch(self.epoch)
        step.model.train()
        step.reset_stats()
        iterations, plan = self._plan(ga.k)
        for _ in range(iterations):  # the same count on every rank
            theta0 = [p.detach().clone() for p in self.params]
            batches = next(plan, None)  # None: this rank has run out (or has no users) and joins with weight 0
            moved = 1.0 if batches is not None and self._inner_steps(batches, on_batch) else 0.0
            self._outer_step_distributed(theta0, moved)
        dist.sum_stats(step.sums)
        return step.stats()

    @torch.no_grad()
    def _outer_step_distributed(self, theta0: list[torch.Tensor], weight: float) -> None:
        """Δ = mean over ranks of θ_k − θ₀ (one all-reduce, model and discriminator together); then
        θ ← θ₀ + βΔ (or Adam on −Δ) for aligned parameters and θ ← θ₀ + Δ for the others (embeddings when
        align_embeddings is off: one process keeps their θ_k, the ranks keep the mean of theirs)."""
        deltas = [p - p0 for p, p0 in zip(self.params, theta0)]
        total, _ = self.dist.mean_(deltas, weight)
        aligned = {id(p) for p in self.aligned}
        for p, p0, d in zip(self.params, theta0, deltas):
            if total == 0:
                p.copy_(p0)
            elif id(p) not in aligned:
                p.copy_(p0 + d)
            elif self.outer is None:
                p.copy_(p0 + self.ga.beta * d)
            else:
                p.grad = -d
                p.copy_(p0)
        if self.outer is not None and total > 0:
            self.outer.step()
            self.outer.zero_grad(set_to_none=True)

    def rank_state(self) -> dict:
        """The inner optimiser's state: each rank's inner steps see other users, so it differs per rank."""
        return {"inner": self.opt.state_dict()}

    def load_rank_state(self, state: dict) -> None:
        self.opt.load_state_dict(state["inner"])

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


def make_epoch(recipe, model, seqs, inputs, targets, owner, device, gen: torch.Generator, dist: Dist = LOCAL):
    user_head = torch.from_numpy(seqs.head)
    step = Step(recipe, model, inputs, targets, user_head[owner], device, gen)
    if recipe.transfer.grad_align is not None and recipe.transfer.grad_align.chains > 1:
        from .chains import ChainsEpoch  # torch.func is only imported where it is used

        return ChainsEpoch(recipe, step, owner, user_head, dist)
    if recipe.transfer.grad_align is not None:
        return GradAlignEpoch(recipe, step, owner, user_head, dist)
    users = recipe.train.sampling == "users"
    per_user = max(1, recipe.train.batch_size // recipe.train.users_per_step)
    return PlainEpoch(recipe, step, dist, UserSampler(owner, user_head, "uniform", per_user, gen) if users else None)
