"""Per-user metrics from ranks, their means by slice, and the paired significance test. numpy only: `compare`,
`report` and `predict` use this module, and none of them imports torch."""

from __future__ import annotations

import numpy as np


def metrics_from_ranks(ranks: np.ndarray, ks=(5, 10, 20)) -> dict[str, np.ndarray]:
    """Per-user hr@K, ndcg@K (1/log2(rank+2)) and mrr@K (1/(rank+1)); 0 when rank >= K."""
    r = np.asarray(ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(r + 2.0), 0.0)
        out[f"mrr@{k}"] = np.where(hit, 1.0 / (r + 1.0), 0.0)
    return out


def summarize(per_user: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    """Mean of each per-user metric over the masked users (nan if none), plus `users`."""
    out: dict[str, float] = {}
    for name, v in per_user.items():
        v = np.asarray(v, dtype=np.float64)
        sel = v if mask is None else v[np.asarray(mask, dtype=bool)]
        # Explicit check avoids numpy's "mean of empty slice" RuntimeWarning.
        out[name] = float(sel.mean()) if sel.size else float("nan")
    if mask is not None:
        out["users"] = int(np.asarray(mask, dtype=bool).sum())
    else:
        out["users"] = len(next(iter(per_user.values()))) if per_user else 0
    return out


def paired_test(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> dict:
    """Paired bootstrap comparison of per-user metrics a (baseline) vs b (candidate).

    Percentile bootstrap: resample users with replacement, recompute mean(b - a);
    p = 2 * min(P(boot <= 0), P(boot >= 0)) capped at 1 (ties at 0 count on both sides,
    so identical inputs give p = 1). p's resolution is 1/n_boot; p = 0 means < 1/n_boot.
    Resamples are processed in chunks so memory stays ~O(chunk * n_users).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_test needs two equal-length non-empty arrays, got {a.shape} and {b.shape}")
    d = b - a
    m = a.size
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, 4_000_000 // m)
    for s in range(0, n_boot, chunk):
        e = min(n_boot, s + chunk)
        idx = rng.integers(0, m, size=(e - s, m), dtype=np.int32 if m < 2**31 else np.int64)
        boot[s:e] = d[idx].mean(axis=1)
    p = min(1.0, 2.0 * min(np.mean(boot <= 0), np.mean(boot >= 0)))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    am = a.mean()
    return {
        "diff": float(d.mean()),
        "rel_diff": float(b.mean() / am - 1.0) if am != 0 else float("nan"),
        "p_value": float(p),
        "ci95": (float(lo), float(hi)),
        "n_users": int(m),
        "n_boot": int(n_boot),
    }
