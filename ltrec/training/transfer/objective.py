"""The loss of one batch of training windows: the backbone's own objective (its plain mean, or a robust
objective over the batch's users) plus the enabled components' terms (adversarial, user branch, contrastive),
and the running statistics of an epoch (loss, skipped batches, the discriminator's accuracy, the robust
weights)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ltrec.training.transfer.adversarial import Adversary


class Objective:
    """`loss(idx)`: the training loss of windows `idx`, or None when it is not finite (the batch is skipped:
    one bad batch must not poison the weights; a diverged epoch ends the run)."""

    def __init__(
        self,
        recipe,
        model: nn.Module,
        inputs,
        targets,
        owner,
        owner_head,
        device,
        gen: torch.Generator,
        robust=None,
        branch=None,
        contrastive=None,
    ):
        self.cfg, self.model, self.device, self.gen = recipe.train, model, device, gen
        self.inputs, self.targets, self.owner, self.owner_head = inputs, targets, owner, owner_head
        self.robust, self.branch, self.contrastive = robust, branch, contrastive
        self.lengths = (inputs > 0).sum(1)  # (W,)
        adv = recipe.transfer.adversarial
        self.adversary = Adversary(adv, model.dim, self.lengths, owner_head, gen).to(device) if adv else None
        # bf16 autocast for the forward pass (weights, optimiser state and evaluation stay fp32); CUDA only
        self.bf16 = recipe.train.precision == "bf16" and torch.device(device).type == "cuda"
        self.sums: dict = {}

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters()) + (list(self.adversary.parameters()) if self.adversary else [])

    def start_epoch(self, epoch: int) -> None:
        self.model.train()
        if self.adversary is not None:
            self.adversary.set_epoch(epoch)
        self.sums = {
            "loss": 0.0,
            "batches": 0,
            "skipped": 0,
            "adv_loss": 0.0,
            "correct_head": 0.0,
            "correct_tail": 0.0,
            "n_head": 0.0,
            "n_tail": 0.0,
            "branch_loss": 0.0,
            "cl_loss": 0.0,
        }

    def loss(self, idx: torch.Tensor) -> torch.Tensor | None:
        width = int(self.lengths[idx].max())  # drop leading all-pad columns: backbones are pad-invariant
        inputs = self.inputs[idx, -width:].to(self.device, torch.long)
        is_head = self.owner_head[idx].to(self.device)  # (B,)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            loss, states = self._objective(idx, inputs, width)
            if self.adversary is not None:
                seen = self.adversary.counts(self.lengths[idx], is_head, self.device)
                adv_loss, logits = self.adversary(self.model, states, inputs, is_head, seen)
                loss = loss + adv_loss
                self.count_adversary(logits, is_head, adv_loss)
            if self.branch is not None:
                term = self.branch(states, inputs, self.lengths[idx].to(self.device), is_head)
                if term is not None:
                    loss = loss + term
                    self.sums["branch_loss"] += float(term.detach())
            if self.contrastive is not None:
                term = self.contrastive(self.model, states, idx)
                loss = loss + term
                self.sums["cl_loss"] += float(term.detach())
        if not torch.isfinite(loss):
            self.sums["skipped"] += 1
            return None
        self.sums["loss"] += loss.item()
        self.sums["batches"] += 1
        return loss

    def _objective(self, idx: torch.Tensor, inputs: torch.Tensor, width: int):
        """The backbone's own objective (next-item at every position by default, BERT4Rec's cloze): its mean
        over the batch's targets (weighted by user, for a balanced objective), or the robust objective over the
        users they belong to."""
        targets = self.targets[idx, -width:].to(self.device, torch.long)
        if self.robust is None or self.robust.fixed_weights:  # the fused mean takes fixed weights
            weights = None if self.robust is None else self.robust.weights(self.owner[idx].to(self.device))
            return self.model.training_loss(
                inputs, targets, self.cfg.loss, self.cfg.negatives, self.gen, weights=weights
            )
        (losses, rows), states = self.model.training_loss(
            inputs, targets, self.cfg.loss, self.cfg.negatives, self.gen, per_target=True
        )
        if not len(losses):
            return states.sum() * 0.0, states
        return self.robust(losses, self.owner[idx].to(self.device)[rows]), states

    @torch.no_grad()
    def count_adversary(self, logits, is_head, adv_loss, rows=None) -> None:
        """Add a batch's discriminator verdicts (and its loss) to the epoch's counts; `rows` marks real rows."""
        real = torch.ones_like(is_head) if rows is None else rows
        right = ((logits > 0) == is_head) & real
        # one device-to-host copy instead of five: each is a sync on a GPU
        counts = torch.stack(
            [
                adv_loss.detach().float().sum(),
                (right & is_head).sum().float(),
                (right & ~is_head).sum().float(),
                (is_head & real).sum().float(),
                (~is_head & real).sum().float(),
            ]
        ).tolist()
        for key, value in zip(("adv_loss", "correct_head", "correct_tail", "n_head", "n_tail"), counts):
            self.sums[key] += value

    def stats(self) -> dict:
        s = self.sums
        out = {"loss": s["loss"] / s["batches"] if s["batches"] else float("nan"), "skipped": s["skipped"]}
        if self.adversary is not None:
            # balanced accuracy: 0.5 is chance, whatever the head/tail mix
            out["disc_acc"] = 0.5 * (s["correct_head"] / max(s["n_head"], 1) + s["correct_tail"] / max(s["n_tail"], 1))
            out["adv_loss"] = s["adv_loss"] / max(s["batches"], 1)
        if self.branch is not None:
            out["branch_loss"] = s["branch_loss"] / max(s["batches"], 1)
        if self.contrastive is not None:
            out["cl_loss"] = s["cl_loss"] / max(s["batches"], 1)
        if self.robust is not None:
            out.update(self.robust.stats())
        return out

    def state_dict(self) -> dict:
        return {
            "adversary": self.adversary.state_dict() if self.adversary else {},
            "robust": self.robust.state_dict() if self.robust else {},
        }

    def load_state_dict(self, state: dict) -> None:
        if self.adversary is not None:
            self.adversary.load_state_dict(state["adversary"])
        if self.robust is not None:
            self.robust.load_state_dict(state["robust"])
