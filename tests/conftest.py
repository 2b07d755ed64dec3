"""Shared fixtures: a small synthetic long-tailed log with learnable sequential structure."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Test models are tiny: one thread is as fast, and it avoids OpenMP spin-waiting, which on a shared 2-core
# machine makes every test several times slower. Subprocesses (CLI runs, torchrun) inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


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
