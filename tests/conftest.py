"""Shared fixtures: a small synthetic long-tailed log with learnable sequential structure."""

from pathlib import Path

import numpy as np
import pytest


def write_long_tailed(path: Path, users: int = 150, items: int = 60, seed: int = 0) -> Path:
    """Zipf-like history lengths (most users short, a few long); each user mostly walks item → item + 1."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(1 + rng.zipf(1.6, users), 60)
    rows = ["user_id,item_id,timestamp"]
    for u, n in enumerate(lengths):
        item = int(rng.integers(1, items + 1))
        for t in range(n):
            rows.append(f"u{u},{item},{1000 + t}")
            item = item % items + 1 if rng.random() < 0.8 else int(rng.integers(1, items + 1))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    return write_long_tailed(tmp_path / "events.csv")
