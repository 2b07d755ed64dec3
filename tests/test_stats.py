"""ltrec.evaluation.metrics: per-user metrics from ranks, slice means, and the paired bootstrap test (numpy only)."""

import math
import warnings

import numpy as np
import pytest

from ltrec.evaluation.metrics import metrics_from_ranks, paired_test, summarize


def test_metrics_from_ranks_exact():
    m = metrics_from_ranks(np.array([0, 1, 2, 3]), ks=(1, 2, 3))
    assert set(m) == {f"{k}@{K}" for k in ("hr", "ndcg", "mrr") for K in (1, 2, 3)}
    # hr@K = rank < K
    np.testing.assert_allclose(m["hr@1"], [1, 0, 0, 0])
    np.testing.assert_allclose(m["hr@2"], [1, 1, 0, 0])
    np.testing.assert_allclose(m["hr@3"], [1, 1, 1, 0])
    # ndcg = 1/log2(rank+2): rank0 -> 1/log2(2) = 1, rank1 -> 1/log2(3) ~ 0.6309, rank2 -> 1/log2(4) = 0.5
    np.testing.assert_allclose(m["ndcg@1"], [1, 0, 0, 0])
    np.testing.assert_allclose(m["ndcg@2"], [1, 1 / math.log2(3), 0, 0])
    np.testing.assert_allclose(m["ndcg@3"], [1, 1 / math.log2(3), 0.5, 0])
    # mrr = 1/(rank+1): 1, 1/2, 1/3
    np.testing.assert_allclose(m["mrr@1"], [1, 0, 0, 0])
    np.testing.assert_allclose(m["mrr@2"], [1, 0.5, 0, 0])
    np.testing.assert_allclose(m["mrr@3"], [1, 0.5, 1 / 3, 0])
    assert all(isinstance(v, np.ndarray) for v in m.values())


def test_summarize_mask_and_empty():
    per_user = {"hr@1": np.array([1.0, 0.0, 0.0]), "mrr@2": np.array([1.0, 0.5, 0.0])}
    s = summarize(per_user)
    assert s["users"] == 3
    assert s["hr@1"] == pytest.approx(1 / 3) and s["mrr@2"] == pytest.approx(0.5)  # (1+0.5+0)/3
    s = summarize(per_user, np.array([True, True, False]))
    assert s["users"] == 2
    assert s["hr@1"] == pytest.approx(0.5) and s["mrr@2"] == pytest.approx(0.75)  # (1+0.5)/2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # empty mean must not warn
        s = summarize(per_user, np.zeros(3, dtype=bool))
    assert s["users"] == 0 and math.isnan(s["hr@1"]) and math.isnan(s["mrr@2"])


def test_paired_test_identical():
    a = np.random.default_rng(0).random(500)
    r = paired_test(a, a.copy(), n_boot=2000)
    assert r["diff"] == 0.0 and r["rel_diff"] == 0.0
    assert r["p_value"] == pytest.approx(1.0)
    assert r["ci95"] == (0.0, 0.0)


def test_paired_test_clear_shift():
    rng = np.random.default_rng(1)
    a = rng.random(2000)
    b = a + 0.1 + rng.normal(0, 0.2, size=2000)
    r = paired_test(a, b, n_boot=2000, seed=5)
    assert r["p_value"] < 0.01
    assert r["diff"] == pytest.approx((b - a).mean())
    assert r["rel_diff"] == pytest.approx(b.mean() / a.mean() - 1)
    lo, hi = r["ci95"]
    assert 0 < lo < r["diff"] < hi
    # deterministic per seed
    assert paired_test(a, b, n_boot=2000, seed=5) == r


def test_paired_test_noise_and_edge_cases():
    rng = np.random.default_rng(2)
    a = rng.random(300)
    r = paired_test(a, a + rng.normal(0, 0.1, size=300), n_boot=1000)
    assert 0.0 <= r["p_value"] <= 1.0
    assert math.isnan(paired_test(np.zeros(5), np.ones(5), n_boot=100)["rel_diff"])  # a.mean() == 0
    with pytest.raises(ValueError):
        paired_test(np.zeros(3), np.zeros(4))
