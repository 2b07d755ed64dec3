"""Several Reptile chains side by side (`transfer.grad_align.chains: C`), vectorised with torch.func.

Each outer iteration makes C·k user-disjoint batches (with `sampling: windows`, the default, from the
epoch's shuffled windows; otherwise from C·k·users_per_step drawn users). Chain c takes its k inner steps on
its own k batches; the C chains advance together, one `vmap`-ed gradient per inner step, so every kernel
does C chains' work. The outer step then moves θ₀ toward the chains' mean result:
θ ← θ₀ + β·(mean_c θ_k^c − θ₀) (or outer Adam on θ₀ − mean_c θ_k^c). No inner step of any chain shares a
user with another step of the iteration, which is the property the alignment term needs.

What differs from one chain (`GradAlignEpoch`): with drawn users, windows are drawn with replacement
(exactly `batch_size / users_per_step` per user; batches of unequal size are padded), each chain keeps its
own inner Adam moments across iterations, and the loss is full-softmax cross-entropy only.
`vectorized=False` runs the same chains one after the other — the reference the tests compare against.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from .distributed import LOCAL
from .transfer import GradAlignEpoch, matched_prefix

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which the one-chain inner optimiser uses


class _Objective(nn.Module):
    """Step.loss as a pure function of the parameters, on fixed-shape (padded) batches so it can be vmapped."""

    def __init__(self, model: nn.Module, disc: nn.Module | None, longest_tail: int):
        super().__init__()
        self.model, self.disc, self.longest = model, disc, longest_tail

    def forward(self, inputs, pos, tgt, pos_w, head, row_w, seen, weight: float):
        states = self.model.encode_all(inputs)  # (B, W, D)
        h = states.reshape(-1, states.shape[-1])[pos]  # (M, D): target positions (padded; pos_w 0 on padding)
        ce = F.cross_entropy(self.model.score(h), tgt.clamp(min=1) - 1, reduction="none")  # (M,)
        loss = (ce * pos_w).sum() / pos_w.sum().clamp(min=1)
        if self.disc is None:
            return loss, loss.new_zeros(head.shape), loss.new_zeros(())
        # the state Step reads: the newest, or with state: matched the encoding of the newest `seen` items
        last = self.model.encode(matched_prefix(inputs, seen, self.longest)) if self.longest else states[:, -1]
        # gradient reversal without an autograd.Function (which torch.func cannot transform): the value is
        # `last`, the encoder's gradient is −λ times the discriminator's
        logits = self.disc((1 + weight) * last.detach() - weight * last)  # (B,)
        y = head.to(logits.dtype)
        n_head, n_tail = (y * row_w).sum().clamp(min=1), ((1 - y) * row_w).sum().clamp(min=1)
        w = torch.where(head, 0.5 / n_head, 0.5 / n_tail) * row_w  # the class-balanced BCE of Step
        adv = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum()
        return loss + adv, logits, adv


class ChainsEpoch(GradAlignEpoch):
    def __init__(self, recipe, step, owner: torch.Tensor, user_head: torch.Tensor, dist=LOCAL,
                 vectorized: bool = True):
        super().__init__(recipe, step, owner, user_head, dist)
        self.chains, self.vectorized = self.ga.chains, vectorized
        self.objective = _Objective(step.model, step.disc, step.longest_tail)
        self.live = dict(self.objective.named_parameters())
        stacked = [p.detach().unsqueeze(0).expand(self.chains, *p.shape) for p in self.live.values()]
        self.moments = {"m": [torch.zeros_like(s) for s in stacked], "v": [torch.zeros_like(s) for s in stacked],
                        "t": torch.zeros(self.chains, device=step.device)}
        grad_fn = grad_and_value(self._loss, has_aux=True)
        self.grad_fn = vmap(grad_fn, in_dims=(0,) * 8, randomness="different") if vectorized else grad_fn

    def _loss(self, params, inputs, pos, tgt, pos_w, head, row_w, seen):
        loss, logits, adv = functional_call(self.objective, params,
                                            (inputs, pos, tgt, pos_w, head, row_w, seen, self.step.weight))
        return loss, (logits, adv)

    def _windows_of(self, users: torch.Tensor) -> torch.Tensor:
        """Exactly `per_user` windows of each user of the group, drawn with replacement."""
        return self.sampler.draws(users).reshape(-1)  # fixed shapes: every chain's batch has the same size

    def _batch(self, idx: list[torch.Tensor]):
        """The chains' windows for one inner step, padded to common shapes; padding weighs nothing."""
        step, C = self.step, len(idx)
        B = max(max(len(i) for i in idx), 1)
        W = max(int(step.lengths[i].max()) for i in idx if len(i))
        inputs = torch.zeros(C, B, W, dtype=torch.long)
        targets = torch.zeros(C, B, W, dtype=torch.long)
        head = torch.zeros(C, B, dtype=torch.bool)
        row_w = torch.zeros(C, B)
        for c, i in enumerate(idx):
            inputs[c, :len(i)], targets[c, :len(i)] = step.inputs[i, -W:], step.targets[i, -W:]
            head[c, :len(i)], row_w[c, :len(i)] = step.owner_head[i], 1.0
        flat = targets.reshape(C, -1)  # (C, B·W)
        M = max(int((flat > 0).sum(1).max()), 1)
        pos = torch.zeros(C, M, dtype=torch.long)
        pos_w = torch.zeros(C, M)
        for c in range(C):
            where = (flat[c] > 0).nonzero().squeeze(1)
            pos[c, :len(where)], pos_w[c, :len(where)] = where, 1.0
        tgt = torch.gather(flat, 1, pos)  # (C, M)
        dev = step.device
        seen = torch.ones(C, B, dtype=torch.long, device=dev)  # with state: matched; padding rows weigh nothing
        if step.disc is not None and step.longest_tail:
            for c, i in enumerate(idx):
                if len(i):
                    seen[c, :len(i)] = step.adv_counts(i)
        return [t.to(dev) for t in (inputs, pos, tgt, pos_w, head, row_w)] + [seen], int(row_w.sum())

    def _grads(self, params: dict, batch: list):
        if self.vectorized:
            return self.grad_fn(params, *batch)
        outs = [self.grad_fn({n: p[c] for n, p in params.items()}, *(b[c] for b in batch))
                for c in range(self.chains)]
        grads = {n: torch.stack([o[0][n] for o in outs]) for n in params}
        loss = torch.stack([o[1][0] for o in outs])
        return grads, (loss, tuple(torch.stack([o[1][1][j] for o in outs]) for j in range(2)))

    def __call__(self, on_batch) -> dict:
        self.epoch += 1
        ga, step = self.ga, self.step
        step.set_epoch(self.epoch)
        step.model.train()
        step.reset_stats()
        world = self.dist.world  # under torchrun each rank runs C chains on its own users; deltas are averaged
        iterations, plan = self._plan(self.chains * ga.k)
        for _ in range(iterations):  # the same count on every rank
            theta0 = [p.detach().clone() for p in (self.params if world > 1 else self.aligned)]
            groups = next(plan, None)
            if groups is None:  # a rank without users (or windows) left only joins the all-reduce, weight 0
                self._outer_step_distributed(theta0, 0.0)
                continue
            groups = list(groups)
            params = {n: p.detach().unsqueeze(0).repeat(self.chains, *[1] * p.dim()) for n, p in self.live.items()}
            for s in range(0, len(groups), self.chains):
                chunk = groups[s:s + self.chains]
                chunk += [chunk[-1][:0]] * (self.chains - len(chunk))  # a chain with no windows left idles
                if not any(len(i) for i in chunk):
                    continue
                batch, n = self._batch(chunk)
                grads, (loss, (logits, adv)) = self._grads(params, batch)
                self._inner_update(params, grads, loss, active=batch[5].sum(1) > 0)
                self._record(loss, logits, adv, batch, n, on_batch)
            with torch.no_grad():
                for n, p in self.live.items():
                    p.copy_(params[n].mean(0))  # the chains' mean result; the outer step starts from here
            if world > 1:
                self._outer_step_distributed(theta0, 1.0)
            else:
                self._outer_step(theta0)
        if world > 1:
            self.dist.sum_stats(step.sums)
        return step.stats()

    @torch.no_grad()
    def _inner_update(self, params: dict, grads: dict, loss: torch.Tensor, active: torch.Tensor) -> None:
        ok = torch.isfinite(loss) & active  # (C,): a chain with a bad batch (or none) keeps its weights
        lr = self.ga.inner_lr
        mom = self.moments
        mom["t"] += ok.float()
        for j, (n, p) in enumerate(params.items()):
            g = torch.nan_to_num(grads[n])
            mask = ok.view(-1, *[1] * (p.dim() - 1))
            if self.ga.inner_optimizer == "sgd":
                p.sub_(torch.where(mask, lr * g, 0.0))
                continue
            m, v = mom["m"][j], mom["v"][j]
            m.copy_(torch.where(mask, m.lerp(g, 1 - BETAS[0]), m))
            v.copy_(torch.where(mask, v * BETAS[1] + (1 - BETAS[1]) * g * g, v))
            t = mom["t"].clamp(min=1).view(-1, *[1] * (p.dim() - 1))  # each chain's own step count
            step_size = lr / (1 - BETAS[0] ** t)
            denom = (v.sqrt() / torch.sqrt(1 - BETAS[1] ** t)) + EPS
            p.sub_(torch.where(mask, step_size * m / denom, 0.0))

    def _record(self, loss, logits, adv, batch, n: int, on_batch) -> None:
        s, ok = self.step.sums, torch.isfinite(loss) & (batch[5].sum(1) > 0)
        s["skipped"] += int((~torch.isfinite(loss)).sum())
        s["loss"] += float(loss[ok].sum())
        s["batches"] += int(ok.sum())
        if self.step.disc is not None:
            head, row_w = batch[4], batch[5] > 0
            right = ((logits > 0) == head) & row_w
            s["correct_head"] += int((right & head).sum())
            s["correct_tail"] += int((right & ~head).sum())
            s["n_head"] += int((head & row_w).sum())
            s["n_tail"] += int((~head & row_w).sum())
            s["adv_loss"] += float(adv[ok].sum())
        on_batch(n, float(loss[ok].mean()) if ok.any() else float("nan"))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "chains": self._moments()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._load_moments(state["chains"])

    def rank_state(self) -> dict:  # under torchrun each rank's chains keep their own moments
        return {**super().rank_state(), "chains": self._moments()}

    def load_rank_state(self, state: dict) -> None:
        super().load_rank_state(state)
        self._load_moments(state["chains"])

    def _moments(self) -> dict:
        return {"m": self.moments["m"], "v": self.moments["v"], "t": self.moments["t"]}

    @torch.no_grad()
    def _load_moments(self, saved: dict) -> None:
        for key in ("m", "v"):
            for mine, theirs in zip(self.moments[key], saved[key]):
                mine.copy_(theirs)
        self.moments["t"].copy_(saved["t"])
