"""train.sampling: users — plain training on user-uniform batches, which is gradient alignment with k = 1, β = 1."""

import math

import torch
from conftest import record, runner_for

from ltrec.runtime.distributed import Dist
from ltrec.training.sampling import UserSampler, disjoint_batches


def build(path, train=None, transfer=None, dist=None):
    _, seqs, model, runner = runner_for(path, train=train, dist=dist, **(transfer or {}))
    return seqs, model, runner, torch.from_numpy(seqs.train_windows(10)[2])


class TwoRanks(Dist):
    """Rank 0 of 2 as far as the plan is concerned; the counts are this process's own."""

    def sum_ints(self, values, op="sum"):
        return list(values)


def test_users_sampling_equals_grad_align_with_k1_beta1_adam(tiny_csv):
    # the sampling-only control is grad_align with k 1, β 1; the option
    # must be that very algorithm: the same batches and, up to the outer step's rounding, the same weights
    _, plain, users, _ = build(tiny_csv, train={"sampling": "users", "users_per_step": 4})
    _, ga_model, ga, _ = build(
        tiny_csv,
        transfer={
            "grad_align": {
                "k": 1,
                "beta": 1.0,
                "inner_optimizer": "adam",
                "inner_lr": 1.0e-2,
                "users_per_step": 4,
                "sampling": "uniform",
            }
        },
    )
    assert users.sampler is not None
    a, b = record(users), record(ga)
    assert len(a) == len(b) > 3 and all(torch.equal(x, y) for x, y in zip(a, b))
    for p, q in zip(plain.parameters(), ga_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_users_sampling_steps_hold_distinct_users_and_favour_the_tail(tiny_csv):
    seqs, _, users, owner = build(tiny_csv, train={"sampling": "users", "users_per_step": 4})
    batches = record(users)
    n_users = len(torch.unique(owner))
    assert len(batches) == math.ceil(n_users / 4)
    for idx in batches:
        who, count = torch.unique(owner[idx], return_counts=True)
        assert len(who) == 4 and count.max() <= 16 // 4  # users_per_step users, ≤ batch_size / users_per_step each
    # the point of the option: a head user's windows no longer crowd the steps
    head = torch.from_numpy(seqs.head)[owner]
    _, _, windows, _ = build(tiny_csv)
    share = lambda bs: float(torch.cat([head[i] for i in bs]).float().mean())  # noqa: E731
    assert share(batches) < share(record(windows))


def test_users_sampling_splits_each_step_across_ranks(tiny_csv):
    # under torchrun each rank draws ceil(users_per_step / world) of its own users per step, with the same
    # number of steps everywhere (no rank waits in an all-reduce); here: one process asked for world 2
    _, _, users, owner = build(tiny_csv, train={"sampling": "users", "users_per_step": 4}, dist=TwoRanks(0, 2))
    batches = [group[0] for group in users.plan()[1]]
    assert len(batches) == math.ceil(len(torch.unique(owner)) / 4)
    assert all(len(torch.unique(owner[idx])) == 2 for idx in batches)


def test_window_batches_are_random_samples(tiny_csv):
    # batching windows of similar length made each step all-short or all-long windows (tail-only or head-only
    # users), which trained far worse than random batches; every batch must mix lengths as a sample does
    _, _, epoch, _ = build(tiny_csv)
    lengths = epoch.objective.lengths
    batches = record(epoch)
    assert sorted(torch.cat(batches).tolist()) == list(range(len(lengths)))  # every window once
    means = torch.stack([lengths[i].float().mean() for i in batches[:-1]])  # the last may be short
    assert float(means.std()) < 1.5 * float(lengths.float().std() / math.sqrt(16))


def test_disjoint_batches_split_a_chunk_on_user_boundaries():
    gen = torch.Generator().manual_seed(3)
    owner = torch.repeat_interleave(torch.arange(40), torch.randint(1, 9, (40,), generator=gen))
    for parts in (1, 2, 5):
        chunk = torch.randperm(len(owner), generator=gen)[:100]
        batches = disjoint_batches(chunk, owner, parts)
        assert len(batches) == parts
        assert sorted(torch.cat(batches).tolist()) == sorted(chunk.tolist())  # nothing lost, nothing twice
        users = [set(owner[b].tolist()) for b in batches]
        assert sum(len(u) for u in users) == len(set().union(*users))  # no user in two batches
        assert max(len(b) for b in batches) <= 100 / parts + 8  # cuts within one user of the ideal size
    one = torch.zeros(10, dtype=torch.long)  # a single user: one batch holds everything, the rest are empty
    assert sorted(len(b) for b in disjoint_batches(torch.arange(10), one, 3)) == [0, 0, 10]


def test_grad_align_windows_sampling_is_plain_training_data(tiny_csv):
    # sampling: windows visits every window once per epoch (as plain training does) and keeps the k batches
    # of an outer iteration user-disjoint
    _, _, ga, owner = build(tiny_csv, transfer={"grad_align": {"k": 3, "sampling": "windows"}})
    seen = record(ga)
    assert sorted(torch.cat(seen).tolist()) == list(range(len(owner)))
    assert len(seen) >= math.ceil(len(owner) / 16)
    for lo in range(0, len(seen), 3):
        users = [set(owner[b].tolist()) for b in seen[lo : lo + 3]]
        assert sum(len(u) for u in users) == len(set().union(*users))


def test_grad_align_windows_with_k1_beta1_is_plain_adam_on_the_same_batches(tiny_csv):
    _, ga_model, ga, _ = build(
        tiny_csv,
        transfer={
            "grad_align": {"k": 1, "beta": 1.0, "inner_optimizer": "adam", "inner_lr": 1.0e-2, "sampling": "windows"}
        },
    )
    _, plain_model, plain, _ = build(tiny_csv)
    batches = record(ga)
    plain.plan = lambda: (len(batches), ([b] for b in batches))
    assert record(plain) == batches
    for p, q in zip(plain_model.parameters(), ga_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_grad_align_permuted_sampling_visits_every_user_once_per_epoch(tiny_csv):
    # sampling: permuted is the paper's per-user inner steps without redrawing: a random order of the users,
    # users_per_step of them per inner step, k steps per outer iteration, each user in exactly one step
    _, _, ga, owner = build(tiny_csv, transfer={"grad_align": {"k": 3, "sampling": "permuted", "users_per_step": 2}})
    for _ in range(2):
        seen = record(ga)
        users = [sorted(set(owner[b].tolist())) for b in seen]
        assert all(len(u) == 2 for u in users[:-1]) and 1 <= len(users[-1]) <= 2
        flat = [u for us in users for u in us]
        assert sorted(flat) == sorted(set(owner.tolist()))  # every user once: none twice, none missing
        # each user's windows all come with it (the tiny users hold fewer than batch_size / users_per_step)
        assert sorted(torch.cat(seen).tolist()) == list(range(len(owner)))
    assert ga.plan()[0] == math.ceil(len(set(owner.tolist())) / 6)


def test_grad_align_permuted_with_one_user_per_step_is_the_faithful_mode(tiny_csv):
    _, _, ga, owner = build(tiny_csv, transfer={"grad_align": {"k": 4, "sampling": "permuted", "users_per_step": 1}})
    seen = record(ga)
    assert all(len(set(owner[b].tolist())) == 1 for b in seen)
    assert len(seen) == len(set(owner.tolist()))


def test_user_subset_takes_all_windows_up_to_the_cap_each_once():
    owner = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2, 2])  # windows grouped by user, as train_windows emits them
    sampler = UserSampler(owner, torch.zeros(3, dtype=torch.bool), "uniform", 3, torch.Generator().manual_seed(0))
    for _ in range(20):
        got = sampler.subset(torch.tensor([2, 0, 1])).tolist()
        assert (
            sorted(got[:3]) == [6, 7, 8] and got[-1] == 5
        )  # user 2 whole, user 0 capped at 3, user 1 whole, in that order
        assert len(set(got[3:6])) == 3 and set(got[3:6]) <= {0, 1, 2, 3, 4}
    picks = {tuple(sorted(sampler.subset(torch.tensor([0])).tolist())) for _ in range(50)}
    assert len(picks) > 3  # the capped user's windows are a random subset, not always the first three
