"""The fitted item-to-item backbones, `kind: ease` and `kind: transitions`: EASE's table is the textbook closed
form, the transition scores are a brute-force count, a damaged table in best.pt is a clear error, and both go
through train → eval → export → predict on a real log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_fails, cli_ok, recipe_for, sequences_of, write_long_tailed

from ltrec.data import load
from ltrec.data.sequences import EVAL
from ltrec.files.errors import UserError
from ltrec.models import EASE, Transitions
from ltrec.recipe import load_recipe
from ltrec.runtime.checkpoint import save_torch

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k" / "interactions.csv"
KINDS = ("ease", "transitions")


def left_pad(rows: list[list[int]], width: int | None = None) -> torch.Tensor:
    width = width or max(len(r) for r in rows)
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, width - len(r) :] = torch.tensor(r)
    return out


def dense(model) -> np.ndarray:
    """(N + 1, N + 1) float64: the model's table as a matrix, row a = what item a adds to every item."""
    ids, strength = model.ids.numpy(), model.strength.numpy().astype(np.float64)
    out = np.zeros((len(ids), len(ids)))
    np.add.at(out, (np.repeat(np.arange(len(ids)), ids.shape[1]), ids.ravel()), strength.ravel())
    return out


# --- EASE ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml100k():
    if not ML100K.exists():
        pytest.skip(f"{ML100K} is absent")
    recipe = recipe_for(ML100K)
    return load(recipe.data, recipe.split, recipe.head)


def textbook_ease(seqs, l2: float) -> np.ndarray:
    """Dense float64 EASE as Steck (2019) writes it: X the users' training item sets, P = (XᵀX + λI)⁻¹,
    B = I − P·diag(1/diag P), diag(B) = 0. (N, N), column j is item j + 1."""
    x = np.zeros((len(seqs.users), seqs.n_items))
    for u, start in enumerate(seqs.offsets[:-1]):
        x[u, seqs.items[start : start + seqs.train_lengths[u]] - 1] = 1.0
    p = np.linalg.inv(x.T @ x + l2 * np.eye(seqs.n_items))
    b = np.eye(seqs.n_items) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


@pytest.mark.parametrize("l2", [50.0, 500.0])
def test_ease_table_is_the_textbook_closed_form_and_scores_are_x_times_b(ml100k, l2):
    """With neighbours ≥ items the table holds all of B: equal to the dense float64 solution on MovieLens-100K;
    and a test history scores x·B, x the history's distinct items."""
    seqs, n = ml100k, ml100k.n_items
    want = textbook_ease(seqs, l2)
    assert (seqs.train_lengths < seqs.lengths).any()  # validation and test events are left out of X
    model = EASE(n, 20, l2=l2, neighbours=n).fit(seqs).eval()
    assert model.ids.shape == (n + 1, n)
    got = dense(model)
    assert not got[0].any() and not got[:, 0].any()  # padding: nothing in, nothing out
    np.testing.assert_allclose(got[1:, 1:], want, atol=1e-5, rtol=0)
    assert np.abs(want).max() > 0.1  # not a comparison of near-zero matrices

    _, history, _ = seqs.eval_inputs("test", 20)
    x = np.zeros((len(history), n + 1))
    x[np.arange(len(history))[:, None], history] = 1.0
    with torch.no_grad():
        scores = model(torch.from_numpy(history)).numpy()
    np.testing.assert_allclose(scores, x[:, 1:] @ want, atol=1e-4, rtol=0)


def test_ease_keeps_each_item_s_largest_magnitude_weights(ml100k):
    """neighbours below the catalogue: each item's row keeps its `neighbours` entries of B of largest |B|,
    with their signs, and nothing else."""
    seqs, n, k = ml100k, ml100k.n_items, 50
    want = textbook_ease(seqs, 500.0)
    model = EASE(n, 20, l2=500.0, neighbours=k).fit(seqs)
    ids, strength = model.ids.numpy(), model.strength.numpy()
    assert ids.shape == (n + 1, k) and (ids[1:] > 0).all()
    for a in range(1, n + 1, 7):
        row = want[a - 1]
        np.testing.assert_allclose(strength[a], row[ids[a] - 1], atol=1e-5, rtol=0)  # signed weights of B
        assert len(set(ids[a].tolist())) == k
        dropped = np.delete(np.abs(row), ids[a] - 1)
        assert np.abs(strength[a]).min() >= dropped.max() - 1e-5
    assert (strength < 0).any() and (strength > 0).any()


def test_ease_counts_a_repeated_item_once():
    """x_u is a set: repeats in a history change nothing, nor does their order; with neighbours ≥ items the
    scores are exactly the sum of the distinct items' rows."""
    rng = np.random.default_rng(1)
    log = [[int(i) for i in rng.integers(1, 16, size=rng.integers(2, 9))] for _ in range(60)]
    model = EASE(15, 8, l2=2.0, neighbours=15).fit(sequences_of(log, 15)).eval()
    b = dense(model)
    with torch.no_grad():
        once = model(left_pad([[3, 7]], 8))
        assert torch.equal(model(left_pad([[3, 7, 3, 7, 7]], 8)), once)
        assert torch.equal(model(left_pad([[7, 3, 3]], 8)), once)
        assert torch.equal(model(left_pad([[3, 3, 3]], 8)), model(left_pad([[3]], 8)))
        np.testing.assert_allclose(once[0].numpy(), (b[3] + b[7])[1:], atol=1e-6, rtol=0)
        assert not torch.allclose(model(left_pad([[3, 7, 9]], 8)), once)  # a new item does count
    # the training side too: a user who bought an item twice is one row of X with a 1 there
    twice = EASE(15, 8, l2=2.0, neighbours=15).fit(sequences_of([h + h[:1] for h in log], 15))
    assert torch.equal(twice.strength, model.strength) and torch.equal(twice.ids, model.ids)


def tiny_recipe(folder: Path, kind: str, csv: Path, extra: str = "") -> Path:
    path = folder / f"{kind}.yaml"
    path.write_text(
        f"name: tiny-{kind}\ndata: {{source: {csv}, max_len: 20}}\nhead: {{count: 4}}\n"
        f"backbone: {{kind: {kind}{extra}}}\n"
    )
    return path


def test_max_items_below_the_catalogue_is_a_one_line_user_error(tmp_path):
    csv = write_long_tailed(tmp_path / "events.csv")
    recipe = tiny_recipe(tmp_path, "ease", csv)
    out = cli_fails(
        ["train", recipe, "--set", "backbone.max_items=10", "--out", tmp_path / "run"],
        "more than max_items (10)",
        "raise max_items to at least",
    )
    (line,) = [line for line in out.splitlines() if "max_items" in line]
    assert line.startswith("backbone: EASE solves a dense items × items system") and "kind: transitions" in line
    with pytest.raises(ValueError, match="more than max_items"):
        EASE(11, 5, max_items=10)
    EASE(10, 5, max_items=10)  # at the limit: accepted


def test_a_fit_that_runs_out_of_memory_is_a_user_error(tmp_path, monkeypatch):
    """torch's CPU allocator failing in EASE's solve: a one-line error naming the backbone and the catalogue."""

    def no_memory(self, seqs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(EASE, "fit", no_memory)
    recipe = tiny_recipe(tmp_path, "ease", write_long_tailed(tmp_path / "events.csv"))
    cli_fails(["train", recipe, "--out", tmp_path / "run"], "backbone: ease: fitting on", "ran out of memory")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "component, value",
    [
        ("grad_align", "{}"),
        ("adversarial", "{}"),
        ("robust", "{kind: cvar}"),
        ("user_branch", "{}"),
        ("contrastive", "{}"),
    ],
)
def test_transfer_components_are_refused_for_fitted_models(tmp_path, kind, component, value):
    """Nothing trains a fitted model, so a transfer component would be silently ignored: refuse it instead."""
    recipe = tiny_recipe(tmp_path, kind, tmp_path / "events.csv")
    with pytest.raises(UserError, match=f"transfer.{component}: backbone.kind {kind} is fitted in closed form"):
        load_recipe(recipe, [f"transfer.{component}={value}"])


# --- transitions ---------------------------------------------------------------------------------------------

N_T = 12
_rng = np.random.default_rng(3)
T_LOG = [[int(i) for i in _rng.integers(1, N_T + 1, size=n)] for n in _rng.integers(3, 11, size=25)]


def brute_transitions(log: list[list[int]], window: int, direction: str) -> np.ndarray:
    """T[a, b] by loops over every pair of each user's training events (all but the last two)."""
    t = np.zeros((N_T + 1, N_T + 1))
    for h in log:
        h = h[:-2]
        for i in range(len(h)):
            for j in range(i + 1, min(i + window, len(h) - 1) + 1):
                t[h[i], h[j]] += 1.0 / (j - i)
                if direction == "both":
                    t[h[j], h[i]] += 1.0 / (j - i)
    return t


@pytest.mark.parametrize(
    "window, last, direction", [(1, 1, "forward"), (3, 2, "forward"), (5, 5, "both"), (2, 8, "both")]
)
def test_transition_scores_equal_a_brute_force_count(window, last, direction):
    """log(1 + Σ_j 2^-j·T[h_j, i]) over the newest `last` items, T counted pair by pair; validation and test
    events (the last two of an evaluated user) are not counted."""
    seqs = sequences_of(T_LOG, N_T, role=EVAL)
    model = Transitions(N_T, 10, window=window, last=last, direction=direction, neighbours=N_T).fit(seqs).eval()
    t = brute_transitions(T_LOG, window, direction)
    np.testing.assert_allclose(dense(model), t, atol=1e-6, rtol=0)
    histories = [h[-2 - n : -2] or h[:1] for h, n in zip(T_LOG, range(1, 30))]
    want = []
    for h in histories:
        summed = sum(0.5**j * t[a] for j, a in enumerate(reversed(h[-last:])))
        want.append(np.log1p(summed)[1:])
    with torch.no_grad():
        got = model(left_pad(histories, 10)).numpy()
    np.testing.assert_allclose(got, np.array(want), atol=1e-6, rtol=0)
    assert (got > 0).any(axis=1).mean() > 0.5


def test_transitions_keep_each_item_s_strongest():
    seqs = sequences_of(T_LOG, N_T, role=EVAL)
    t = brute_transitions(T_LOG, 5, "both")
    model = Transitions(N_T, 10, window=5, direction="both", neighbours=2).fit(seqs)
    ids, strength = model.ids.numpy(), model.strength.numpy()
    assert ids.shape == (N_T + 1, 2)
    for a in range(1, N_T + 1):
        top = np.sort(t[a, 1:])[::-1][:2]
        np.testing.assert_allclose(strength[a], top, atol=1e-6, rtol=0)  # the two largest counts, largest first
        np.testing.assert_allclose(strength[a], t[a, ids[a]], atol=1e-6, rtol=0)  # and the items that have them


# --- checkpoints ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny")
    csv = write_long_tailed(folder / "events.csv")
    runs = {}
    for kind in KINDS:
        cli_ok(
            ["train", tiny_recipe(folder, kind, csv, ", l2: 10.0" if kind == "ease" else ""), "--out", folder / kind]
        )
        runs[kind] = folder / kind
    return runs


def _shift(table, at, value):
    table = table.clone()
    table[at] = value
    return table


DAMAGE = {
    "id above the catalogue": (lambda m, n: {**m, "ids": _shift(m["ids"], (3, 0), n + 1)}, "item ids outside 0.."),
    "negative id": (lambda m, n: {**m, "ids": _shift(m["ids"], (3, 0), -1)}, "item ids outside 0.."),
    "NaN strength": (lambda m, n: {**m, "strength": _shift(m["strength"], (2, 0), float("nan"))}, "not finite"),
    "infinite strength": (lambda m, n: {**m, "strength": _shift(m["strength"], (2, 0), float("inf"))}, "not finite"),
    "int64 ids": (lambda m, n: {**m, "ids": m["ids"].long()}, "expected int32 ids and float32 strengths"),
    "float64 strengths": (lambda m, n: {**m, "strength": m["strength"].double()}, "expected int32 ids and float32"),
    "padding row used": (lambda m, n: {**m, "ids": _shift(m["ids"], (0, 0), 1)}, "padding row (0) must be empty"),
    "a row short": (lambda m, n: {"ids": m["ids"][:-1], "strength": m["strength"][:-1]}, "expected two ("),
    "widths differ": (lambda m, n: {**m, "strength": m["strength"][:, :1]}, "expected two ("),
    "strength missing": (lambda m, n: {"ids": m["ids"]}, "does not hold this run's model"),
    "strength not a tensor": (lambda m, n: {**m, "strength": [1.0, 2.0]}, "does not hold this run's model"),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_table_in_best_pt_is_a_clear_error_at_eval_and_export(tiny_runs, tmp_path, kind, damage):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs[kind], run)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    n = ckpt["model"]["ids"].shape[0] - 1
    change, message = DAMAGE[damage]
    save_torch(run / "best.pt", {**ckpt, "model": change(ckpt["model"], n)})
    for command in (["eval", run], ["export", run, "--out", tmp_path / "bundle"]):
        out = cli_fails(command, str(run / "best.pt"), message)
        assert len([line for line in out.splitlines() if "best.pt" in line]) == 1
    assert not (tmp_path / "bundle").exists()


# --- the whole CLI on a real log -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> dict[str, Path]:
    if not ML100K.exists():
        pytest.skip(f"{ML100K} is absent")
    folder = tmp_path_factory.mktemp("ml100k")
    runs = {}
    for kind in KINDS:
        recipe = folder / f"{kind}.yaml"
        recipe.write_text(f"name: ml100k-{kind}\ndata: {{source: {ML100K}, max_len: 50}}\nbackbone: {{kind: {kind}}}\n")
        out = cli_ok(["train", recipe, "--out", folder / kind])
        assert "epoch 1:" not in out  # fitted, not trained: no epochs
        runs[kind] = folder / kind
    return runs


@pytest.mark.parametrize("kind", KINDS)
def test_train_eval_export_predict_on_movielens_100k(real_runs, kind, tmp_path):
    """`eval --slice tail` reproduces training's test table from best.pt; export reports its parity and holds
    it; `predict` (onnxruntime) reproduces eval's test NDCG@10 from each user's history (eval masks the history,
    so predict excludes it)."""
    run = real_runs[kind]
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["epochs"] == 0 and summary["test"]["all"]["ndcg@10"] > 0.02  # far above random (10 / 1682)
    tail = json.loads(cli_ok(["eval", run, "--slice", "tail", "--json"]))["slices"]
    assert list(tail) == ["tail"] and tail["tail"] == pytest.approx(summary["test"]["tail"])

    bundle = tmp_path / "bundle"
    out = cli_ok(["export", run, "--out", bundle, "--k", 10])
    meta = json.loads((bundle / "bundle.json").read_text())
    parity = meta["parity"]
    assert "parity on 943 test histories" in out and f"identical top-10 lists {parity['topk_agreement']:.2%}" in out
    assert meta["backbone"] == kind and parity["users"] == 943
    # summation order differs between torch and onnxruntime: exact ties of counts can come out 1 ulp apart
    assert parity["topk_agreement"] >= 0.995 and parity["max_score_diff"] <= 1e-5

    recipe = load_recipe(run / "recipe.yaml")
    seqs = load(recipe.data, recipe.split, recipe.head)
    rows, targets = ["user_id,item_id,timestamp"], {}
    for u, user in enumerate(seqs.users):
        items = seqs.vocab[seqs.items[seqs.offsets[u] : seqs.offsets[u + 1]] - 1]
        rows += [f"{user},{item},{t}" for t, item in enumerate(items[:-1])]  # all but the test target
        targets[user] = items[-1]
    (tmp_path / "hist.csv").write_text("\n".join(rows) + "\n")
    cli_ok(["predict", bundle, "--input", tmp_path / "hist.csv", "--output", tmp_path / "pred.csv", "--exclude-seen"])
    ndcg = dict.fromkeys(targets, 0.0)
    for row in (tmp_path / "pred.csv").read_text().splitlines()[1:]:
        user, rank, item = row.split(",")[:3]
        if item == targets[user]:
            ndcg[user] = 1.0 / np.log2(int(rank) + 1)
    assert np.mean(list(ndcg.values())) == pytest.approx(summary["test"]["all"]["ndcg@10"], abs=1e-6)
