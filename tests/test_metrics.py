import numpy as np
import pytest
import torch
from conftest import seen_from_padded

from ltrec.evaluation.ranks import sample_negatives, sampled_ranks, state_ranks, target_ranks

# N = 4 items; column j is item j+1.
SCORES = torch.tensor(
    [
        [0.1, 0.5, 0.5, 0.2],  # user 0, target 2 (0.5): item 3 ties at 0.5 -> pessimistic rank 1
        [0.1, 0.2, 0.3, 0.9],  # user 1, target 4 (0.9): nothing >= 0.9 -> rank 0
        [0.9, 0.1, 0.8, 0.2],  # user 2, target 3 (0.8): item 1 (0.9) beats it -> rank 1
    ]
)
TARGETS = torch.tensor([2, 4, 3])


def test_target_ranks_pessimistic_ties():
    assert target_ranks(SCORES, TARGETS).tolist() == [1, 0, 1]
    assert target_ranks(SCORES, TARGETS).dtype == torch.int64


def test_target_ranks_all_tied_is_last():
    # constant scores: target ties with all 3 others -> rank 3 = N-1
    assert target_ranks(torch.zeros(1, 4), torch.tensor([1])).tolist() == [3]


def test_target_ranks_seen_masking():
    seen = torch.tensor(
        [
            [0, 0, 3],  # user 0: item 3 (the tie) masked -> rank 0
            [
                0,
                4,
                1,
            ],  # user 1: target 4 itself seen -> -inf, ties with masked item 1 and loses to 2, 3 -> rank 3 = N-1
            [0, 0, 2],  # user 2: item 2 masked; padding must NOT mask item 1 (0.9 > 0.8) -> still rank 1
        ]
    )
    assert target_ranks(SCORES, TARGETS, seen_from_padded(seen)).tolist() == [0, 3, 1]
    # input scores are not modified in place
    assert SCORES[0, 2].item() == pytest.approx(0.5)


def test_sample_negatives_excludes_and_unique():
    n_items, n = 50, 20
    targets = np.array([1, 25, 50])
    hist = np.array([[0, 0, 2, 3, 4], [0, 10, 11, 25, 12], [5, 6, 7, 8, 9]])
    neg = sample_negatives(n_items, targets, hist, n=n, seed=3)
    assert neg.shape == (3, n) and neg.dtype == np.int64
    for i in range(3):
        row = set(neg[i].tolist())
        assert len(row) == n  # no duplicates
        assert all(1 <= x <= n_items for x in row)
        assert targets[i] not in row
        assert not row & set(hist[i].tolist())


def test_sample_negatives_deterministic_per_seed():
    targets, hist = np.array([3, 7]), np.array([[0, 1, 2], [4, 5, 6]])
    a = sample_negatives(1000, targets, hist, n=30, seed=11)
    b = sample_negatives(1000, targets, hist, n=30, seed=11)
    c = sample_negatives(1000, targets, hist, n=30, seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_negatives_exact_and_not_enough():
    # N=10, history {1..5}, target 6 -> eligible {7, 8, 9, 10}: exactly 4
    hist, targets = np.array([[1, 2, 3, 4, 5]]), np.array([6])
    assert sorted(sample_negatives(10, targets, hist, n=4)[0].tolist()) == [7, 8, 9, 10]
    with pytest.raises(ValueError, match="eligible"):
        sample_negatives(10, targets, hist, n=5)


def test_sampled_ranks_hand_example():
    negatives = torch.tensor(
        [
            [3, 1],  # user 0: target 0.5 vs 0.5 (tie, loses), 0.1 -> rank 1
            [1, 2],  # user 1: target 0.9 vs 0.1, 0.2 -> rank 0
            [1, 4],  # user 2: target 0.8 vs 0.9 (beats), 0.2 -> rank 1
        ]
    )
    assert sampled_ranks(SCORES, TARGETS, negatives).tolist() == [1, 0, 1]
    # numpy negatives (as returned by sample_negatives) are accepted too
    assert sampled_ranks(SCORES, TARGETS, negatives.numpy()).tolist() == [1, 0, 1]


def _naive_ranks(scores, targets, seen=None):
    """Reference: mask the history in a copy, NaN as -inf, then count the other items scoring >= the target."""
    s = torch.where(scores.isnan(), float("-inf"), scores)  # (nan_to_num would also clip ±inf to finite)
    if seen is not None:
        for b in range(len(s)):
            for item in seen[b].tolist():
                if item > 0:
                    s[b, item - 1] = float("-inf")
    out = []
    for b in range(len(s)):
        t = int(targets[b]) - 1
        out.append(sum(1 for j in range(s.shape[1]) if j != t and s[b, j] >= s[b, t]))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_target_ranks_match_naive_reference(seed):
    # coarse scores force ties; NaN, +-inf and repeated / target items in the history cover the special cases
    g = torch.Generator().manual_seed(seed)
    B, N = 40, 12
    scores = torch.randint(-3, 4, (B, N), generator=g).float()
    special = torch.tensor([float("nan"), float("inf"), float("-inf")])
    hits = torch.rand(B, N, generator=g) < 0.15
    scores[hits] = special[torch.randint(0, 3, (int(hits.sum()),), generator=g)]
    targets = torch.randint(1, N + 1, (B,), generator=g)
    seen = torch.randint(0, N + 1, (B, 6), generator=g)  # 0 = padding, repeats allowed, may hold the target
    before = scores.clone()
    assert target_ranks(scores, targets).tolist() == _naive_ranks(scores, targets)
    assert target_ranks(scores, targets, seen_from_padded(seen)).tolist() == _naive_ranks(scores, targets, seen)
    assert torch.equal(scores.isnan(), before.isnan()) and torch.equal(scores.nan_to_num(), before.nan_to_num())


@pytest.mark.parametrize("seed", range(5))
def test_state_ranks_equal_target_ranks_on_the_full_matrix(seed):
    # integer-valued states and items: every dot product is exact in float32 whatever the summation order, so
    # the block-by-block ranking must match the full matrix rank for rank, ties and ±inf/NaN items included
    g = torch.Generator().manual_seed(seed)
    B, N, D = 30, 37, 4
    states = torch.randint(-2, 3, (B, D), generator=g).float()
    table = torch.randint(-2, 3, (N, D), generator=g).float()
    table[3] = float("inf")
    table[5, 0] = float("nan")
    states[2] = float("nan")  # a user whose every score is NaN ranks last
    targets = torch.randint(1, N + 1, (B,), generator=g)
    seen = torch.randint(0, N + 1, (B, 7), generator=g)
    scores = states @ table.T
    for block_bytes in (1, 4 * B * 8, 1 << 21):  # 64-column blocks with a partial last one, and a single block
        assert state_ranks(states, table, targets, None, block_bytes).tolist() == target_ranks(scores, targets).tolist()
        assert state_ranks(states, table, targets, seen_from_padded(seen), block_bytes).tolist() == _naive_ranks(
            scores, targets, seen
        )


def test_evaluate_ranks_block_by_block_as_on_the_full_matrix(tiny_csv, monkeypatch):
    # the evaluation's fast path (encode, then state_ranks) against model(hist) + target_ranks on a real model
    from ltrec.data import load
    from ltrec.evaluation.engine import Evaluator
    from ltrec.models import BACKBONES
    from ltrec.recipe import Data, Eval, Head, Split

    seqs = load(Data(source=str(tiny_csv)), Split(), Head())
    torch.manual_seed(0)
    model = BACKBONES["sasrec"](seqs.n_items, 20, dim=16, layers=1, heads=1)
    cfg = Eval(batch_size=32)
    fast = Evaluator(model, seqs, cfg, 20).run("test")
    monkeypatch.setattr(type(model), "tied", property(lambda self: False))
    full = Evaluator(model, seqs, cfg, 20).run("test")
    assert len(fast.users) > 50 and np.array_equal(fast.per_user["rank"], full.per_user["rank"])
