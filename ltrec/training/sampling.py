"""Which training windows each step sees: every window once per epoch, or users drawn first.

A long-tailed log gives its head users most of the windows, so batches of shuffled windows are mostly head
users' windows. `UserSampler` draws users instead (uniformly, by events, or head/tail balanced) and then a few
random windows of each: plain training with `train.sampling: users` uses it, and so does gradient
alignment with `sampling: uniform / events / balanced` (and `permuted`, which takes the users in a random
order, each once per epoch, through `UserSampler.subset`). Gradient alignment's default, `window_plan`, instead
keeps plain training's data (every window once per epoch) and only splits each outer iteration's windows
into user-disjoint batches: redrawing users every iteration leaves about a third of them out of each epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def window_batches(lengths: torch.Tensor, batch_size: int, gen: torch.Generator) -> list:
    """Every window once, in random batches (each batch in length order). A batch is a uniform random sample:
    batching windows of similar length would be faster on a long-tailed log, but each step would then see
    only short-history (tail) or only long-history (head) users, which trains far worse. The length order lets
    the step encode the batch in groups of similar length instead (`ltrec.models.base.encode_by_length`)."""
    perm = torch.randperm(len(lengths), generator=gen)
    batches = [chunk[torch.argsort(lengths[chunk], stable=True)] for chunk in perm.split(batch_size)]
    order = torch.randperm(len(batches), generator=gen)
    return [batches[i] for i in order]


def disjoint_batches(chunk: torch.Tensor, owner: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """Split a random chunk of window indices into `parts` batches of about equal size, no user in two.

    A user's windows in the chunk stay together (in the order the user first appears in the chunk, which is
    random), and the cuts fall on user boundaries, so a batch can be a little larger or smaller than
    len(chunk) / parts; a batch can be empty when one user holds a large share of the chunk.
    """
    if parts == 1 or len(chunk) == 0:
        return [chunk]
    _, inv = torch.unique(owner[chunk], return_inverse=True)
    first = torch.full((int(inv.max()) + 1,), len(chunk), dtype=torch.long)
    first = first.scatter_reduce(0, inv, torch.arange(len(chunk)), "amin")  # each user's first position
    key = first[inv]
    order = torch.argsort(key, stable=True)
    chunk, key = chunk[order], key[order]
    starts = torch.nonzero(torch.cat([torch.ones(1, dtype=torch.bool), key[1:] != key[:-1]])).squeeze(1)
    wanted = torch.tensor([round(j * len(chunk) / parts) for j in range(1, parts)])
    cuts = starts[torch.searchsorted(starts, wanted).clamp(max=len(starts) - 1)]  # first user start ≥ wanted
    cuts = torch.where(cuts < wanted, len(chunk), cuts)  # no user starts at or after wanted: cut at the end
    bounds = [0] + cuts.tolist() + [len(chunk)]
    return [chunk[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def window_plan(owner: torch.Tensor, parts: int, batch_size: int, gen: torch.Generator) -> Iterator[list]:
    """Every window once, in random order: per outer iteration, `parts` user-disjoint batches of about
    `batch_size` windows (gradient alignment's `sampling: windows`, plain training's data schedule)."""
    perm = torch.randperm(len(owner), generator=gen)
    per_iter = parts * batch_size
    for lo in range(0, len(perm), per_iter):
        yield disjoint_batches(perm[lo : lo + per_iter], owner, parts)


class UserSampler:
    """Draws distinct users, then up to `per_user` random windows of each (indices into the window arrays)."""

    def __init__(
        self, owner: torch.Tensor, user_head: torch.Tensor, sampling: str, per_user: int, gen: torch.Generator
    ):
        # windows are grouped by owner (train_windows emits them user by user): user u owns [start, start + count)
        self.users, self.counts = torch.unique_consecutive(owner, return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.per_user, self.gen = per_user, gen
        head = user_head[self.users]
        if sampling == "uniform":
            self.weights = torch.ones(len(self.users))
        elif sampling == "events":
            self.weights = self.counts.double()
        else:  # balanced: head and tail users drawn equally often in total
            self.weights = torch.where(head, 1.0 / head.sum().clamp(min=1), 1.0 / (~head).sum().clamp(min=1))

    def draw(self, n: int) -> torch.Tensor:
        """Up to n distinct users (positions in self.users)."""
        return torch.multinomial(self.weights, min(n, len(self.users)), replacement=False, generator=self.gen)

    def draws(self, chosen: torch.Tensor) -> torch.Tensor:
        """Exactly `per_user` random windows of each chosen user, with replacement: (m, per_user)."""
        u = torch.rand(len(chosen), self.per_user, generator=self.gen)  # (m, c)
        return self.starts[chosen, None] + (u * self.counts[chosen, None]).long()  # offsets < count

    def windows(self, chosen: torch.Tensor) -> torch.Tensor:
        """Up to `per_user` random windows of each chosen user, without repeats."""
        return torch.unique(self.draws(chosen))

    def subset(self, chosen: torch.Tensor) -> torch.Tensor:
        """All windows of each chosen user, or a random `per_user` of them where it has more, each window at
        most once: (≤ m·per_user,), grouped by user in the order of `chosen`."""
        counts = self.counts[chosen]
        group = torch.repeat_interleave(torch.arange(len(chosen)), counts)  # which chosen user each window is of
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        rank = torch.arange(len(group)) - first  # position within its user
        idx = self.starts[chosen][group] + rank
        if bool((counts > self.per_user).any()):  # shuffle within each user, then keep the first per_user
            idx = idx[torch.argsort(group + torch.rand(len(group), generator=self.gen))]
        return idx[rank < self.per_user]

    def batches(self, users_per_step: int, steps: int):
        """`steps` batches, each the windows of `users_per_step` freshly drawn users; drawn lazily, so the
        random stream is consumed in the same order as gradient alignment's inner steps with k = 1."""
        if not len(self.users):
            return
        for _ in range(steps):
            yield self.windows(self.draw(users_per_step))


def permuted_plan(sampler: UserSampler, parts: int, users_per_step: int) -> tuple[int, Iterator]:
    """Every user once per epoch, in random order: per outer iteration `parts` batches of `users_per_step`
    users each (all their windows, up to the sampler's cap). Returns (iterations, plan)."""
    order = torch.randperm(len(sampler.users), generator=sampler.gen)
    chunks = order.split(parts * users_per_step)
    return len(chunks), ((sampler.subset(group) for group in chunk.split(users_per_step)) for chunk in chunks)


def drawn_plan(
    sampler: UserSampler, parts: int, users_per_step: int, iterations: int, fixed: bool = False
) -> tuple[int, Iterator]:
    """Fresh users every outer iteration: `parts` batches of `users_per_step` distinct users each (so some
    users go unvisited in an epoch, others come twice). `fixed`: exactly the cap of windows per user, drawn
    with replacement (equal shapes for vmapped chains). Returns (iterations, plan)."""
    windows = (lambda users: sampler.draws(users).reshape(-1)) if fixed else sampler.windows

    def plan():
        for _ in range(iterations if len(sampler.users) else 0):
            chosen = sampler.draw(parts * users_per_step)  # all distinct: no two batches share a user
            # lazily, so the random stream runs as in plain `train.sampling: users` when parts = 1
            yield (windows(group) for group in chosen.split(users_per_step))

    return iterations, plan()
