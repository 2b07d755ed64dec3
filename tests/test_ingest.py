"""The vectorised ingest against a plain-Python reference on small irregular logs: ties in time, one-event users,
blank ids and times, text and integer ids, minimum counts; and the same tensors whatever the block sizes."""

import csv
import importlib
import random

import duckdb
import numpy as np
import pytest

from ltrec.data import EVAL, TRAIN_ONLY, load
from ltrec.recipe import Data, Head, Split

USERS = ["u1", "12", "3", "007", "7", " b ", "a", "é", "z9", "100"]
ITEMS = ["10", "9", "007", "7", "3.5", "1e3", "b", "a2", " x", "-4"]


def irregular_rows(seed: int, n: int = 300) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        user = rng.choice(USERS) if rng.random() > 0.03 else ""
        item = rng.choice(ITEMS) if rng.random() > 0.03 else ""
        time = str(rng.randrange(10)) if rng.random() > 0.03 else ""  # ten times: many ties
        rows.append((user, item, time))
    rows += [("solo", "10", "4"), ("pair", "9", "1"), ("pair", "10", "1")]  # one- and two-event users
    return rows


def reference(rows, min_user: int = 1, min_item: int = 1) -> dict:
    """The documented conventions, one event at a time."""
    clean = [
        (u.strip(), i.strip(), float(t), r) for r, (u, i, t) in enumerate(rows) if u.strip() and i.strip() and t.strip()
    ]
    per_user, per_item = {}, {}
    for u, i, _, _ in clean:
        per_user[u] = per_user.get(u, 0) + 1
        per_item[i] = per_item.get(i, 0) + 1
    kept = [e for e in clean if per_user[e[0]] >= min_user and per_item[e[1]] >= min_item]

    def number(text):
        try:
            return (0, float(text), text)
        except ValueError:
            return (1, 0.0, text)

    vocab = sorted({e[1] for e in kept}, key=number)
    item_id = {text: k + 1 for k, text in enumerate(vocab)}
    users = sorted({e[0] for e in kept})
    items, offsets, seen, repeats = [], [0], set(), 0
    for u in users:
        for _, i, t, _ in sorted((e for e in kept if e[0] == u), key=lambda e: (e[2], e[3])):
            items.append(item_id[i])
            repeats += (u, i, t) in seen
            seen.add((u, i, t))
        offsets.append(len(items))
    lengths = np.diff(offsets)
    return {
        "items": items,
        "offsets": offsets,
        "users": users,
        "vocab": vocab,
        "role": [EVAL if n >= 3 else TRAIN_ONLY for n in lengths],
        "report": {
            "events": len(kept),
            "rows": len(rows),
            "null_rows": len(rows) - len(clean),
            "dropped_users": len(per_user) - len(users),
            "dropped_items": len(per_item) - len(vocab),
            "duplicate_rows": repeats,
        },
    }


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        w.writerows(rows)
    return str(path)


def same(s, ref):
    assert s.items.tolist() == ref["items"] and s.offsets.tolist() == ref["offsets"]
    assert s.users.tolist() == ref["users"] and s.vocab.tolist() == ref["vocab"]
    assert s.role.tolist() == ref["role"]
    assert {k: s.report[k] for k in ref["report"]} == ref["report"]


@pytest.fixture(params=["default", "tiny"])
def blocks(request, monkeypatch):
    """Run each check with the default block sizes and with blocks of a few events, so users span many blocks."""
    if request.param == "tiny":
        monkeypatch.setattr(importlib.import_module("ltrec.data.load"), "BLOCK", 7)
        monkeypatch.setattr(importlib.import_module("ltrec.data.sequences"), "GATHER_BLOCK", 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mins", [(1, 1), (3, 2), (5, 20)])
def test_text_ids_match_the_reference(tmp_path, blocks, seed, mins):
    rows = irregular_rows(seed)
    s = load(
        Data(source=write_csv(tmp_path / "e.csv", rows), min_user_events=mins[0], min_item_events=mins[1]),
        Split(),
        Head(),
    )
    same(s, reference(rows, *mins))


@pytest.mark.parametrize("seed", [3, 4])
def test_integer_ids_match_the_reference(tmp_path, blocks, seed):
    rng = random.Random(seed)
    rows = [(str(rng.randrange(1, 40)), str(rng.randrange(1, 2**40, 2**33)), str(rng.randrange(6))) for _ in range(400)]
    rows.append(("999", "5", "0"))  # a one-event user
    path = write_csv(tmp_path / "e.csv", rows)
    parquet = str(tmp_path / "e.parquet")
    duckdb.sql(
        "COPY (SELECT user_id::BIGINT AS user_id, item_id::BIGINT AS item_id, timestamp::BIGINT AS timestamp "
        f"FROM read_csv('{path}', all_varchar = true)) TO '{parquet}' (FORMAT parquet)"
    )
    for source in (path, parquet):
        same(load(Data(source=source), Split(), Head()), reference(rows))


def test_tensors_do_not_depend_on_the_block_sizes(tmp_path, monkeypatch):
    source = write_csv(tmp_path / "e.csv", irregular_rows(5, 2000))

    def tensors():
        s = load(Data(source=source), Split(cold_users=0.2), Head(), seed=1)
        out = [s.items, s.offsets, s.role, s.head, *s.train_windows(6, 4), *s.train_windows(3)]
        for split in ("valid", "test"):
            out += [*s.eval_inputs(split, 5), *s.eval_inputs(split, 5, cold=True), *s.seen(np.arange(3), split)]
        return out

    default = tensors()
    monkeypatch.setattr(importlib.import_module("ltrec.data.load"), "BLOCK", 3)
    monkeypatch.setattr(importlib.import_module("ltrec.data.sequences"), "GATHER_BLOCK", 1)
    for a, b in zip(default, tensors(), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
