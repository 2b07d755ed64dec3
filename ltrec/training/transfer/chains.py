"""Several Reptile chains side by side (`transfer.grad_align.chains: C`), vectorised with torch.func.

Each outer iteration gets C·k user-disjoint batches from its plan. Chain c takes its k inner steps on its own
k batches; the C chains advance together, one `vmap`-ed gradient per inner step, so every kernel does C
chains' work. The outer step (`OuterStep`, as for one chain) then moves θ₀ toward the chains' mean result.
No inner step of any chain shares a user with another step of the iteration, which is the property the
alignment term needs.

vmap needs fixed shapes, so each step's batches are padded to one size (padding weighs nothing) and the loss
is the full-softmax cross-entropy at gathered target positions (`models.losses.padded_ce`); the adversarial
term is the same `Adversary` every path uses. Each chain keeps its own weights and its own inner optimiser
(moments and step count) across iterations; a chain with no windows left, or a non-finite loss, skips its
step. `vectorized=False` runs the same chains one after the other: the reference the tests compare against.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
from torch.func import functional_call, grad_and_value, vmap

from ltrec.models.losses import padded_ce
from ltrec.runtime.distributed import LOCAL, Dist
from ltrec.training.transfer.grad_align import outer_step


class _Padded(nn.Module):
    """The objective as a pure function of the parameters on fixed-shape (padded) batches, for vmap."""

    def __init__(self, model: nn.Module, adversary: nn.Module | None):
        super().__init__()
        self.model, self.adversary = model, adversary

    def forward(self, inputs, pos, tgt, pos_w, head, rows, seen):
        states = self.model.encode_all(inputs)  # (B, W, D)
        loss = padded_ce(self.model, states, pos, tgt, pos_w)
        if self.adversary is None:
            return loss, loss.new_zeros(head.shape), loss.new_zeros(())
        matched = seen if self.adversary.longest_tail else None
        adv, logits = self.adversary(self.model, states, inputs, head, matched, rows.to(states.dtype))
        return loss + adv, logits, adv


class ChainBatch(NamedTuple):
    """One inner step's windows for every chain, padded to common shapes (C = chains)."""

    inputs: torch.Tensor  # (C, B, W) item ids
    pos: torch.Tensor  # (C, M) flat positions of the targets
    tgt: torch.Tensor  # (C, M) the targets
    pos_w: torch.Tensor  # (C, M) 1 for a real target, 0 for padding
    head: torch.Tensor  # (C, B) bool: the window's user is head
    rows: torch.Tensor  # (C, B) 1 for a real window, 0 for padding
    seen: torch.Tensor  # (C, B) how many items the adversary's state sees


class Chains:
    def __init__(self, objective, cfg, lr: float, dist: Dist = LOCAL, vectorized: bool = True):
        self.objective, self.cfg, self.dist, self.vectorized = objective, cfg, dist, vectorized
        self.chains = cfg.chains
        self.outer = outer_step(objective, cfg, lr, dist)
        self.padded = _Padded(objective.model, objective.adversary)
        self.live = dict(self.padded.named_parameters())
        self.weights = [
            {n: p.detach().clone().requires_grad_() for n, p in self.live.items()} for _ in range(self.chains)
        ]
        inner = torch.optim.SGD if cfg.inner_optimizer == "sgd" else torch.optim.Adam
        self.opts = [inner(list(w.values()), lr=cfg.inner_lr) for w in self.weights]
        grad_fn = grad_and_value(self._loss, has_aux=True)
        self.grad_fn = vmap(grad_fn, in_dims=(0,) * 8, randomness="different") if vectorized else grad_fn

    def _loss(self, params, *batch):
        # Backbones tie tables by sharing a module (NARM's item_emb is its GRU4Rec's), which swaps as one;
        # torch's tie_weights would restore such an alias twice and leave the swapped tensor in the model
        loss, logits, adv = functional_call(self.padded, params, batch, tie_weights=False)
        return loss, (logits, adv)

    def __call__(self, group, on_batch) -> None:
        params = self.objective.parameters()
        theta0 = [p.detach().clone() for p in params]
        if group is None:  # a rank without windows left only joins the all-reduce, with weight 0
            self.outer(theta0, 0.0)
            return
        group = list(group)
        with torch.no_grad():
            for w in self.weights:  # every chain starts the iteration from θ₀
                for n, p in self.live.items():
                    w[n].copy_(p)
        for s in range(0, len(group), self.chains):
            chunk = group[s : s + self.chains]
            chunk += [chunk[-1][:0]] * (self.chains - len(chunk))  # a chain with no windows left idles
            if not any(len(i) for i in chunk):
                continue
            batch, n = self._batch(chunk)
            stacked = {name: torch.stack([w[name].detach() for w in self.weights]) for name in self.live}
            grads, (loss, (logits, adv)) = self._grads(stacked, batch)
            self._inner_update(grads, loss, active=batch.rows.sum(1) > 0)
            self._record(loss, logits, adv, batch, n, on_batch)
        with torch.no_grad():
            for name, p in self.live.items():  # the chains' mean result; the outer step starts from here
                p.copy_(torch.stack([w[name] for w in self.weights]).mean(0))
        self.outer(theta0, 1.0)

    def _batch(self, idx: list[torch.Tensor]):
        """The chains' windows for one inner step, padded to common shapes; padding weighs nothing."""
        obj, C = self.objective, len(idx)
        B = max(max(len(i) for i in idx), 1)
        W = max(int(obj.lengths[i].max()) for i in idx if len(i))
        inputs = torch.zeros(C, B, W, dtype=torch.long)
        targets = torch.zeros(C, B, W, dtype=torch.long)
        head = torch.zeros(C, B, dtype=torch.bool)
        rows = torch.zeros(C, B)
        for c, i in enumerate(idx):
            inputs[c, : len(i)], targets[c, : len(i)] = obj.inputs[i, -W:], obj.targets[i, -W:]
            head[c, : len(i)], rows[c, : len(i)] = obj.owner_head[i], 1.0
        flat = targets.reshape(C, -1)  # (C, B·W)
        M = max(int((flat > 0).sum(1).max()), 1)
        pos = torch.zeros(C, M, dtype=torch.long)
        pos_w = torch.zeros(C, M)
        for c in range(C):
            where = (flat[c] > 0).nonzero().squeeze(1)
            pos[c, : len(where)], pos_w[c, : len(where)] = where, 1.0
        tgt = torch.gather(flat, 1, pos)  # (C, M)
        dev = obj.device
        seen = torch.ones(C, B, dtype=torch.long, device=dev)  # with state: matched; padding rows weigh nothing
        if obj.adversary is not None and obj.adversary.longest_tail:
            for c, i in enumerate(idx):
                if len(i):
                    seen[c, : len(i)] = obj.adversary.counts(obj.lengths[i], obj.owner_head[i], dev)
        return ChainBatch(*(t.to(dev) for t in (inputs, pos, tgt, pos_w, head, rows)), seen), int(rows.sum())

    def _grads(self, params: dict, batch: ChainBatch):
        if self.vectorized:
            return self.grad_fn(params, *batch)
        outs = [self.grad_fn({n: p[c] for n, p in params.items()}, *(b[c] for b in batch)) for c in range(self.chains)]
        grads = {n: torch.stack([o[0][n] for o in outs]) for n in params}
        loss = torch.stack([o[1][0] for o in outs])
        return grads, (loss, tuple(torch.stack([o[1][1][j] for o in outs]) for j in range(2)))

    def _inner_update(self, grads: dict, loss: torch.Tensor, active: torch.Tensor) -> None:
        ok = (torch.isfinite(loss) & active).tolist()  # a chain with a bad batch (or none) keeps its weights
        for c, (w, opt) in enumerate(zip(self.weights, self.opts)):
            if ok[c]:
                for name, p in w.items():
                    p.grad = grads[name][c]
                opt.step()

    def _record(self, loss, logits, adv, batch, n: int, on_batch) -> None:
        s, ok = self.objective.sums, torch.isfinite(loss) & (batch.rows.sum(1) > 0)
        s["skipped"] += int((~torch.isfinite(loss)).sum())
        s["loss"] += float(loss[ok].sum())
        s["batches"] += int(ok.sum())
        if self.objective.adversary is not None:
            self.objective.count_adversary(logits, batch.head, adv[ok], rows=batch.rows > 0)
        on_batch(n, float(loss[ok].mean()) if ok.any() else float("nan"))

    def state_dict(self) -> dict:
        return {"outer": self.outer.state_dict(), **self.rank_state()}

    def load_state_dict(self, state: dict) -> None:
        self.outer.load_state_dict(state["outer"])
        self.load_rank_state(state)

    def rank_state(self) -> dict:  # under torchrun each rank's chains keep their own inner optimisers
        return {"chains": [opt.state_dict() for opt in self.opts]}

    def load_rank_state(self, state: dict) -> None:
        for opt, saved in zip(self.opts, state["chains"]):
            opt.load_state_dict(saved)
