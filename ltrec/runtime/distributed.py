"""Data-parallel training under torchrun: the process group, the few collectives the trainer uses, and how
errors on one rank stop every rank.

`ltrec train` runs unchanged under `torchrun --nproc_per_node=N -m ltrec train recipe.yaml`. The process group
is created only when torchrun's WORLD_SIZE is above 1; otherwise `LOCAL` stands in, whose collectives return
their input untouched, so a single process runs exactly the code (and gets exactly the numbers) it always did.

Backend: gloo for CPU tensors and, where CUDA exists, nccl for CUDA tensors (one group, "cpu:gloo,cuda:nccl"):
the tensors' device picks it, so no recipe key is needed. Object collectives (errors, checkpoints, per-user
ranks) go through gloo on the CPU.

Gradients are averaged with one explicit all-reduce of the flattened gradients per step rather than by
DistributedDataParallel: the trainer calls `encode_all` and the tied item scores directly (not the module's
`forward`, which DDP hooks), the discriminator is a second module in the same update, and gradient alignment
must *not* synchronise its inner steps, only the outer deltas. One flat all-reduce serves all three.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from ltrec.files.errors import UserError


@dataclass
class Dist:
    """This process's place in the job. world == 1: every collective is the identity."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    # -- collectives (identity for one process) ---------------------------------------------------------------

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def gather(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def sum_ints(self, values: list[int], op: str = "sum") -> list[int]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64)
        torch.distributed.all_reduce(
            t, {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}[op]
        )
        return t.tolist()

    def sum_stats(self, sums: dict) -> None:
        """Add every rank's float counters (loss sums, batch counts, ...) in place."""
        if self.world == 1:
            return
        keys = sorted(sums)
        t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        for k, v in zip(keys, t.tolist()):
            sums[k] = type(sums[k])(v)

    def mean_(
        self, tensors: list[torch.Tensor], weight: float = 1.0, present: list[bool] | None = None
    ) -> tuple[float, list[bool]]:
        """Replace each tensor by the weighted mean over ranks, Σ_r w_r·t_r / Σ_r w_r, in one all-reduce.

        A rank with weight 0 (no finite loss, no users) contributes nothing and does not dilute the mean.
        `present[i]` False says tensor i stands for a missing gradient (pass zeros); returns (Σ w, for each
        tensor whether any rank had it), so callers can keep "no gradient" as None, as one process would.
        """
        present = [True] * len(tensors) if present is None else present
        if self.world == 1:
            return weight, list(present)
        device = tensors[0].device if tensors else torch.device("cpu")
        flat = torch.cat(
            [t.detach().reshape(-1).float() * weight for t in tensors]
            + [torch.tensor([weight] + [float(x) for x in present], device=device)]
        )
        torch.distributed.all_reduce(flat)
        tail = flat[len(flat) - len(tensors) - 1 :].tolist()
        total, had = tail[0], [x > 0 for x in tail[1:]]
        if total > 0:
            offset = 0
            with torch.no_grad():
                for t in tensors:
                    t.copy_((flat[offset : offset + t.numel()] / total).view_as(t))
                    offset += t.numel()
        return total, had

    def broadcast_module_(self, module: torch.nn.Module) -> None:
        """Rank 0's weights (parameters and buffers) on every rank."""
        if self.world == 1:
            return
        module.load_state_dict(self.broadcast(to_cpu(module.state_dict()) if self.main else None))

    def broadcast_params_(self, params: list[torch.Tensor]) -> None:
        if self.world == 1:
            return
        with torch.no_grad():
            for p in params:
                torch.distributed.broadcast(p.data, src=0)

    @contextlib.contextmanager
    def together(self):
        """Run a block on every rank; if it raised on any rank, raise on every rank (no rank left waiting).

        Wrap the steps that can fail on some ranks only: rank 0's run-directory writes, checkpoint loading.
        The first failing rank's message is printed once, by rank 0; every rank exits with code 2.
        """
        if self.world == 1:
            yield
            return
        error, original = None, None
        try:
            yield
        except UserError as exc:
            error = (True, str(exc))
        except Exception as exc:  # a bug or an OS error: its rank keeps the traceback; the others stop cleanly
            error, original = (False, f"{type(exc).__name__}: {exc}"), exc
        errors = self.all_gather(error)
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if not failed:
            return
        if original is not None:
            raise original
        r, (is_user, text) = failed[0]
        if not is_user:
            text = f"stopped: rank {r} failed ({text}); see its traceback"
        elif r != 0 and len(failed) < self.world:
            text = f"rank {r}: {text}"
        exc = UserError(text)
        exc.echo = self.main  # printed once; the other ranks exit 2 quietly
        raise exc


LOCAL = Dist()


def to_cpu(obj):
    """A copy of nested dicts/lists/tuples with every tensor on the CPU: what is pickled for another rank
    must not name this rank's GPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s random streams (dropout, batch order, negatives); rank 0 keeps the recipe's."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> 1)


def shard_users(window_owner: np.ndarray, rank: int, world: int, seed: int) -> np.ndarray:
    """Boolean mask over training windows: the windows of the users rank `rank` trains on.

    Users are dealt whole (a user's windows stay on one rank, so gradient alignment's "different users per
    inner step" holds across ranks too), largest first to the rank with the fewest windows so far, so the
    ranks' window counts differ by less than one heavy user's. Ties in size are broken by a seeded shuffle.
    Deterministic given the data and the seed.
    """
    users, counts = np.unique(window_owner, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(users))
    order = order[np.argsort(-counts[order], kind="stable")]
    load = np.zeros(world, np.int64)
    owner_rank = np.empty(len(users), np.int64)
    for i in order:  # greedy longest-processing-time assignment; O(U·world), fine for ≤ millions of users
        r = int(np.argmin(load))
        owner_rank[i] = r
        load[r] += counts[i]
    mine = users[owner_rank == rank]
    return np.isin(window_owner, mine)


def from_env() -> Dist:
    """The Dist torchrun describes in the environment, without starting anything."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return LOCAL
    return Dist(rank=int(os.environ.get("RANK", "0")), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def process_group():
    """Join torchrun's process group for the duration of a command (a no-op without torchrun)."""
    dist = from_env()
    if dist.world == 1:
        yield dist
        return
    if not torch.distributed.is_available():
        raise UserError("torchrun started several processes, but this torch build has no torch.distributed")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    try:
        torch.distributed.init_process_group(backend)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"torchrun: cannot join the process group ({str(exc).strip().splitlines()[0][:200]})") from None
    try:
        yield dist
    finally:
        torch.distributed.destroy_process_group()
