"""Shared fixtures: a small synthetic long-tailed log with learnable sequential structure."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ltrec.evaluation.ranks import Seen
from ltrec.models import loss_from_states

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


def recipe_for(path, train=None, backbone=None, **transfer):
    """A tiny recipe over `path`: GRU4Rec dim 8 without dropout, head = users with ≥ 4 training events."""
    from ltrec.recipe import Recipe

    return Recipe.model_validate(
        {
            "name": "t",
            "data": {"source": str(path), "max_len": 10},
            "backbone": {"kind": "gru4rec", "dim": 8, "dropout": 0.0, **(backbone or {})},
            "head": {"count": 4},
            "transfer": transfer,
            "train": {"batch_size": 16, "lr": 1.0e-2, **(train or {})},
        }
    )


def runner_for(path, kind="gru4rec", train=None, dist=None, model=None, **transfer):
    """(recipe, seqs, model, runner) for a tiny recipe: the epoch runner `ltrec train` would build."""
    from ltrec.data import load
    from ltrec.models import BACKBONES
    from ltrec.runtime.distributed import LOCAL
    from ltrec.training.transfer import make_runner

    recipe = recipe_for(path, train, **transfer)
    seqs = load(recipe.data, recipe.split, recipe.head)
    torch.manual_seed(0)
    model = model or BACKBONES[kind](seqs.n_items, 10, dim=8, **({} if kind == "pop" else {"dropout": 0.0}))
    gen = torch.Generator().manual_seed(0)
    return recipe, seqs, model, make_runner(recipe, model, seqs, seqs.train_windows(10), "cpu", gen, dist or LOCAL)


def record(runner) -> list:
    """Run one epoch; returns the window indices of every loss the objective computed, in order."""
    seen = []
    real = runner.objective.loss
    runner.objective.loss = lambda idx: seen.append(idx) or real(idx)
    runner(lambda n, loss: None)
    return seen


# the smallest recipe overrides that still train something: for CLI runs on the init example
TINY = [
    "--set",
    "backbone.dim=16",
    "--set",
    "train.epochs=3",
    "--set",
    "data.max_len=20",
    "--set",
    "train.batch_size=64",
]


def cli_ok(args) -> str:
    """Run the CLI in-process; it must succeed. Returns its output."""
    from typer.testing import CliRunner

    from ltrec.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def cli_fails(args, *expected) -> str:
    """Run the CLI in-process; it must fail as a user error (exit 2, no traceback) saying each of `expected`."""
    from typer.testing import CliRunner

    from ltrec.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.output, result.output
    return result.output


def seen_from_padded(seen: torch.Tensor) -> Seen:
    """A user's seen items as `Seen` pairs, from a left-padded (B, L) matrix of item ids (0 = padding)."""
    n = int(seen.max()) + 1 if seen.numel() else 1
    keys = torch.unique((torch.arange(len(seen)).unsqueeze(1) * n + seen.long())[seen > 0])
    return Seen.of(keys // n, keys % n)


def next_item_loss(model, inputs, targets, loss="ce", negatives=1, generator=None) -> torch.Tensor:
    """inputs/targets (B, L); targets[:, t] is the item after inputs[:, t] (0 = ignored)."""
    return loss_from_states(model, model.encode_all(inputs), targets, loss, negatives, generator)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to collect it has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def processes_naming(text: str) -> list[int]:
    """The live processes whose command line holds `text`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text in (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(pid))
        except OSError:  # ended meanwhile
            pass
    return [pid for pid in found if alive(pid)]


def sequences_of(histories: list[list[int]], n_items: int, role: int | None = None):
    """A `Sequences` of the given item lists (ids 1..n_items), one user each, chronological. By default every
    user is train-only, so every event is a training event (what a fitted model's `fit` counts)."""
    from ltrec.data.sequences import TRAIN_ONLY, Sequences

    lengths = np.array([len(h) for h in histories], np.int64)
    return Sequences(
        items=np.array([i for h in histories for i in h], np.int64),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        users=np.array([f"u{u}" for u in range(len(histories))]),
        vocab=np.array([str(i) for i in range(1, n_items + 1)]),
        role=np.full(len(histories), TRAIN_ONLY if role is None else role, np.int8),
        head=np.zeros(len(histories), bool),
    )
