"""Events → `Sequences`: DuckDB maps ids and orders events; numpy assigns roles (leave-one-out, cold users)
and the head/tail flag."""

from __future__ import annotations

import numpy as np

from ltrec.data.read import TEXT, opened_events, source_files
from ltrec.data.sequences import COLD, EVAL, TRAIN_ONLY, Sequences
from ltrec.files.errors import UserError
from ltrec.recipe import Data, Head, Split

BLOCK = 4_000_000  # events per DuckDB sort and fetch: bounds the memory each step needs, whatever the log's size


def load(data: Data, split: Split, head: Head, seed: int = 0) -> Sequences:
    """Read the recipe's data source into Sequences (see the module docstring for the conventions)."""
    with opened_events(data) as con:
        seqs = _to_sequences(con, data, split, head, seed)
    seqs.report["files"] = len(source_files(data.source)[0])
    return seqs


def _to_sequences(con, data: Data, split: Split, head: Head, seed: int) -> Sequences:
    total = con.execute("SELECT count(*) FROM events").fetchone()[0]
    if total == 0:
        raise UserError(f"data.source: {data.source}: no events (the file or query returned no rows)")
    # The text of each *distinct* raw id and a dense key in text order (users are ordered by it; item ids
    # follow the raw order, below): one text conversion per id instead of per event, and integer joins.
    # Two statements: DuckDB ranks a stored table much faster than the same rows from a subquery.
    for key, raw in (("uk", "u_raw"), ("ik", "i_raw")):
        distinct = f"SELECT {raw}, {TEXT.format(raw)} AS txt FROM (SELECT DISTINCT {raw} FROM events)"
        con.execute(f"CREATE TABLE {key}_text AS {distinct}")
        con.execute(f"""CREATE TABLE {key}s AS SELECT {raw}, txt, dense_rank() OVER (ORDER BY txt) AS {key}
                        FROM {key}_text WHERE txt IS NOT NULL""")
        con.execute(f"DROP TABLE {key}_text")
    # Every clean event (user, item and time present) as integer keys. The source is not needed past this
    # point: dropping it makes room for the sort, the one step that touches every event.
    row = "INTEGER" if total < 2**31 else "BIGINT"  # rows are numbered from 0 (the row order that breaks ties)
    con.execute(f"""CREATE TABLE ev AS SELECT uk::INTEGER AS uk, ik::INTEGER AS ik, t, r::{row} AS r FROM events
                    JOIN uks USING (u_raw) JOIN iks USING (i_raw) WHERE t IS NOT NULL""")
    picked = con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'picked'").fetchone()
    con.execute("DROP VIEW events")
    con.execute(f"DROP {'VIEW' if picked[0] == 'VIEW' else 'TABLE'} picked")  # a view, or the query's table
    con.execute("DROP TABLE source")
    n_uk, n_ik = (con.execute(f"SELECT max({k}) FROM {k}s").fetchone()[0] or 0 for k in ("uk", "ik"))
    per_user, per_item = (_counts(con, k, n + 1) for k, n in (("uk", n_uk), ("ik", n_ik)))  # keys start at 1
    clean = int(per_user.sum())
    if clean == 0:
        raise UserError(
            f"data: {data.source}: all {total:,} rows have an empty user, item or time "
            f"(columns {data.columns.user}, {data.columns.item}, {data.columns.time})"
        )
    users_before, items_before = int((per_user > 0).sum()), int((per_item > 0).sum())
    keep_user, keep_item = per_user >= data.min_user_events, per_item >= data.min_item_events  # the raw counts
    ik, user_keys, counts, repeats = _sorted_events(con, per_user, keep_user, keep_item)
    kept = len(ik)
    if kept == 0:
        raise UserError(
            f"data: no events left after min_user_events={data.min_user_events} and "
            f"min_item_events={data.min_item_events} ({clean:,} before); lower the thresholds"
        )
    # item ids 1..N in numeric order where the ids are numbers, then in text order, over the items left
    pairs = con.execute("SELECT ik, txt FROM iks ORDER BY TRY_CAST(txt AS DOUBLE) NULLS LAST, txt").fetchnumpy()
    present = np.bincount(ik, minlength=n_ik + 1) > 0
    pair_kept = present[pairs["ik"]]
    vocab = np.asarray(pairs["txt"])[pair_kept]
    if len(vocab) != int(present.sum()):  # two raw ids with one text, e.g. 1 and '1' in a mixed-type JSON column
        raise UserError(f"data.columns.item: {data.source}: item ids differ in type but not in text; unify them")
    if len(vocab) < 2:
        raise UserError(
            f"data.columns.item: {data.source}: only {len(vocab)} distinct item; a recommender needs "
            "at least 2 (check data.columns.item and the minimum counts)"
        )
    item_of = np.zeros(n_ik + 1, np.int64)
    item_of[np.asarray(pairs["ik"])[pair_kept]] = np.arange(1, len(vocab) + 1)
    items = item_of[ik]
    del ik, pairs
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    names = con.execute("SELECT uk, txt FROM uks").fetchnumpy()
    text_of = np.empty(n_uk + 1, dtype=object)
    text_of[np.asarray(names["uk"])] = np.asarray(names["txt"])
    del names
    users = text_of[user_keys].astype(str)
    report = {
        "events": int(kept),
        "rows": int(total),
        "null_rows": int(total - clean),
        "dropped_users": int(users_before - len(users)),
        "dropped_items": int(items_before - len(vocab)),
        "duplicate_rows": repeats,  # kept: a repeat of the same item at the same time is still an event
    }
    return _assign_roles(items, offsets, users, vocab.astype(str), split, head, seed, report)


def _counts(con, key: str, size: int) -> np.ndarray:
    """(size,) int64 number of clean events of each user or item key: one column fetched and counted by numpy
    takes half the time of DuckDB's GROUP BY over millions of keys."""
    return np.bincount(con.execute(f"SELECT {key} FROM ev").fetchnumpy()[key], minlength=size)


def _sorted_events(con, per_user, keep_user, keep_item) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The kept events in their final order (by user text, then time, then source row), sorted by DuckDB in
    blocks of whole users, so no sort or fetch holds much more than BLOCK events.

    Returns the item key of each event (E,) int32, the user key (U,) and event count (U,) of each user left,
    and the number of repeated (user, item, time) events."""
    ik = np.empty(int(per_user[keep_user].sum()), np.int32)  # (E,) at most: the item minimum drops more
    ends = np.cumsum(per_user)  # events up to and including each user key
    cuts = np.unique(np.searchsorted(ends, np.arange(BLOCK, ends[-1], BLOCK), side="right"))
    bounds = [1, *cuts.tolist(), len(per_user)]  # user key ranges [lo, hi); a user longer than BLOCK is one range
    user_keys, counts, at, repeats = [], [], 0, 0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if lo >= hi:
            continue
        got = con.execute(
            "SELECT uk, ik, t FROM ev WHERE uk >= ? AND uk < ? ORDER BY uk, t, r", [int(lo), int(hi)]
        ).fetchnumpy()
        uk, iks, t = (np.asarray(got[c]) for c in ("uk", "ik", "t"))
        del got
        keep = keep_user[uk] & keep_item[iks]
        uk, iks, t = uk[keep], iks[keep], t[keep]
        if len(uk) == 0:
            continue
        repeats += _repeats(uk, iks, t)  # a repeat shares user and item, so the minimum counts keep both or neither
        first = np.flatnonzero(np.concatenate([[True], uk[1:] != uk[:-1]]))  # each user's first event
        user_keys.append(uk[first])
        counts.append(np.diff(np.append(first, len(uk))))
        ik[at : at + len(iks)] = iks
        at += len(iks)
    con.execute("DROP TABLE ev")
    if not user_keys:
        return ik[:0], np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    return ik[:at], np.concatenate(user_keys), np.concatenate(counts), repeats


def _repeats(uk: np.ndarray, items: np.ndarray, t: np.ndarray) -> int:
    """Events that repeat an earlier (user, item, time). Events are sorted by user and time, so a repeat lies in
    a run of equal (user, time); only events in such runs (few, outside day-resolution logs) are sorted."""
    tie = np.zeros(len(uk), bool)
    tie[1:] = (uk[1:] == uk[:-1]) & (t[1:] == t[:-1])
    if not tie.any():
        return 0
    in_run = tie.copy()
    in_run[:-1] |= tie[1:]  # the first event of each run too
    run = np.cumsum(~tie)[in_run]  # (M,) run number of each event in a run
    key = np.sort(run * (int(items.max()) + 1) + items[in_run])
    return int((key[1:] == key[:-1]).sum())


def _assign_roles(items, offsets, users, vocab, split: Split, head: Head, seed: int, report: dict) -> Sequences:
    n = np.diff(offsets)
    role = np.where(n >= 3, EVAL, TRAIN_ONLY).astype(np.int8)
    report["short_dropped"] = 0
    if split.short_users == "drop":
        keep = role == EVAL
        report["short_dropped"] = int((~keep).sum())
        items, users, role, n = items[np.repeat(keep, n)], users[keep], role[keep], n[keep]
        offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
    if not (role == EVAL).any():
        raise UserError("data: no user has the 3 events leave-one-out needs (train, validation, test)")
    seqs = Sequences(items, offsets, users, vocab, role, np.zeros(len(users), bool), report=report)
    if split.cold_users > 0:
        pool = np.flatnonzero(role == EVAL)
        if split.cold_from == "tail":
            pool = pool[seqs.train_lengths[pool] < _threshold(seqs.train_lengths[role != COLD], head)]
        take = int(round(split.cold_users * len(pool)))
        cold = np.random.default_rng(seed if split.seed is None else split.seed).choice(pool, size=take, replace=False)
        seqs.role[cold] = COLD
        if not (seqs.role == EVAL).any():
            raise UserError("split.cold_users: no evaluated user left outside the cold set; lower the fraction")
    tl = seqs.train_lengths
    seqs.head_threshold = _threshold(tl[seqs.role != COLD], head)
    # cold users have no training events: judge them by the history they arrive with (all but the last two)
    seqs.head = np.where(seqs.role == COLD, n - 2, tl) >= seqs.head_threshold
    return seqs


def _threshold(train_lengths: np.ndarray, head: Head) -> int:
    """Smallest count t such that users with ≥ t training events are at most `fraction` of all users."""
    if head.count is not None:
        return int(head.count)
    desc = np.sort(train_lengths)[::-1]
    m = int(np.floor(head.fraction * len(desc)))
    return int(desc[m]) + 1 if m < len(desc) else int(desc[-1])
