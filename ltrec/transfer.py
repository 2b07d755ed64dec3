"""How one epoch updates the model: plain mini-batch training, and the paper's transfer components.

`make_epoch` returns an object that runs one epoch when called and carries its optimiser state, so the
trainer (checkpoints, resume) does not need to know which kind of training runs.
"""

from __future__ import annotations

import torch

from .models import next_item_loss


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


class PlainEpoch:
    """Shuffled mini-batches of training windows, Adam, next-item loss at every position."""

    def __init__(self, recipe, model, inputs, targets, device, gen: torch.Generator):
        cfg = recipe.train
        self.cfg, self.model, self.inputs, self.targets, self.device, self.gen = cfg, model, inputs, targets, device, gen
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.lengths = (inputs > 0).sum(1)  # (W,)

    def __call__(self, on_batch) -> dict:
        self.model.train()
        total, batches, skipped = 0.0, 0, 0
        for idx in length_batches(self.lengths, self.cfg.batch_size, self.gen):
            width = int(self.lengths[idx].max())
            loss = next_item_loss(self.model, self.inputs[idx, -width:].to(self.device),
                                  self.targets[idx, -width:].to(self.device), self.cfg.loss, self.cfg.negatives,
                                  self.gen)
            if not torch.isfinite(loss):  # one bad batch must not poison the weights; many end the run
                skipped += 1
                continue
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total, batches = total + loss.item(), batches + 1
            on_batch(len(idx), loss.item())
        return {"loss": total / batches if batches else float("nan"), "skipped": skipped}

    def state_dict(self) -> dict:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state)


def make_epoch(recipe, model, seqs, inputs, targets, owner, device, gen: torch.Generator):
    return PlainEpoch(recipe, model, inputs, targets, device, gen)
