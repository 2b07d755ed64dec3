"""Events → `Sequences`: DuckDB does the reading, filtering, id mapping and ordering; numpy the padding.

Conventions (see README "Data"):
- items are mapped to 1..N in ascending order of their original id; 0 is padding;
- each user's events are ordered by time, ties kept in source order (file row order; a query's output order);
- chronological leave-one-out: last event = test target, second-to-last = validation target, the rest trains;
- head/tail is decided on the number of *training* events, once, and travels with the data.
No Python loop runs over events: everything below is SQL or vectorised numpy.
"""

from __future__ import annotations

import glob
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from .errors import UserError
from .recipe import Data, Head, Split

EVAL, TRAIN_ONLY, COLD = 0, 1, 2  # user roles
READERS = {"csv": "read_csv", "parquet": "read_parquet", "json": "read_json"}
NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
           "UBIGINT", "FLOAT", "DOUBLE", "DECIMAL")
TIMESTAMPS = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS")
RESERVED = ("rowid", "__row")  # ltrec orders ties by DuckDB's rowid; a column of that name would shadow it
MAX_LINE_BYTES = 2_000_000  # DuckDB's read_csv max_line_size
TEXT = "NULLIF(TRIM({}::VARCHAR), '')"  # an id as ltrec sees it: its text, trimmed; empty = missing


@dataclass
class Sequences:
    items: np.ndarray  # (E,) int64 item ids 1..N; events grouped by user, chronological
    offsets: np.ndarray  # (U + 1,) int64: user u's events are items[offsets[u]:offsets[u + 1]]
    users: np.ndarray  # (U,) original user ids, as str
    vocab: np.ndarray  # (N,) original item ids, as str: item i is vocab[i - 1]
    role: np.ndarray  # (U,) int8: EVAL, TRAIN_ONLY or COLD
    head: np.ndarray  # (U,) bool, from training events
    head_threshold: int = 0  # head = at least this many training events
    report: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.vocab)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def train_lengths(self) -> np.ndarray:
        """Events each user contributes to training: all but the last two, all for short users, none if cold."""
        n = self.lengths
        return np.select([self.role == EVAL, self.role == TRAIN_ONLY], [n - 2, n], 0)

    def item_counts(self) -> np.ndarray:
        """(N,) training-event count of each item: the popularity baseline and predict's fallback."""
        starts, ends = self.offsets[:-1], self.offsets[:-1] + self.train_lengths
        in_train = np.zeros(len(self.items) + 1, np.int64)
        np.add.at(in_train, starts, 1)
        np.add.at(in_train, ends, -1)
        mask = np.cumsum(in_train[:-1]) > 0
        return np.bincount(self.items[mask], minlength=self.n_items + 1)[1:]

    def train_windows(self, max_len: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Training sequences cut from the end into windows of max_len + 1 events, `stride` apart (default
        max_len: no overlap).

        Returns inputs (W, max_len), targets (W, max_len) (the next item; 0 where the input is padding, or
        where a newer window already trains that target), and the user index of each window (W,), windows
        grouped by user. Every training event after a user's first is a target exactly once: in window j of
        a user (0 = newest) at its newest `stride` positions, in the user's oldest window at all of them.
        """
        s = max_len if stride is None else stride
        tl = self.train_lengths
        # the newest window holds max_len targets, each older one `s` more, the oldest whatever is left
        per_user = np.where(tl >= 2, 1 + -(-np.maximum(tl - 1 - max_len, 0) // s), 0)
        user = np.repeat(np.arange(len(tl)), per_user)  # (W,)
        j = np.arange(len(user)) - np.repeat(np.cumsum(per_user) - per_user, per_user)  # window 0 = latest
        end = self.offsets[user] + tl[user] - j * s  # (W,) exclusive
        seq = self._gather(end, self.offsets[user], max_len + 1)  # (W, L + 1)
        inputs = seq[:, :-1]
        targets = np.where(inputs == 0, 0, seq[:, 1:])
        if s < max_len:  # overlapping windows: a target older than the newest s is trained by an older window
            oldest = j == per_user[user] - 1  # (W,)
            targets[~oldest, :max_len - s] = 0
        return inputs, targets, user

    def eval_inputs(self, split: str, max_len: int, cold: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user index (B,), left-padded history (B, max_len), target (B,)) for valid or test."""
        users = np.flatnonzero(self.role == (COLD if cold else EVAL))
        end = self.offsets[users] + self.lengths[users] - (2 if split == "valid" else 1)
        history = self._gather(end, self.offsets[users], max_len)
        return users, history, self.items[end]

    def seen_items(self, users: np.ndarray, split: str) -> np.ndarray:
        """(B, W) every item each user had before the `split` target (left-padded; W = longest such history)."""
        end = self.offsets[users] + self.lengths[users] - (2 if split == "valid" else 1)
        start = self.offsets[users]
        return self._gather(end, start, max(int((end - start).max(initial=1)), 1))

    def _gather(self, end: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
        # (B, width) tensors of a long-tailed log are mostly padding and can run to gigabytes: one index matrix
        # (int32 where it fits), one output, masked in place; no further full-size temporaries
        dtype = np.int32 if len(self.items) < 2**31 else np.int64
        idx = (end - width).astype(dtype)[:, None] + np.arange(width, dtype=dtype)  # (B, width)
        pad = idx < start.astype(dtype)[:, None]  # (B, width)
        np.putmask(idx, pad, 0)
        out = self.items.astype(np.int64, copy=False).take(idx)  # (B, width)
        np.putmask(out, pad, 0)
        return out

    def describe(self) -> str:
        r = self.report
        n_eval = int((self.role == EVAL).sum())
        return (
            f"{r['events']:,} events, {len(self.users):,} users, {self.n_items:,} items "
            f"(dropped: {r['null_rows']:,} rows with empty ids/time, {r['dropped_users']:,} users and "
            f"{r['dropped_items']:,} items under the minimum counts, {r['short_dropped']:,} users too short"
            + (f"; kept: {r['duplicate_rows']:,} repeated (user, item, time) rows" if r.get("duplicate_rows") else "")
            + "); "
            f"evaluated users {n_eval:,} (head {int((self.head & (self.role == EVAL)).sum()):,}, "
            f"head = ≥{self.head_threshold} training events), train-only {int((self.role == TRAIN_ONLY).sum()):,}, "
            f"cold {int((self.role == COLD).sum()):,}"
        )


# ---------------------------------------------------------------------------------------------------------
# Reading


def source_files(source: str, where: str = "data.source") -> tuple[list[str], str]:
    """Expand a path or glob; returns (files, format detected from the extension)."""
    path = os.path.expanduser(source)
    files = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
    if not files:
        raise UserError(f"{where}: no file matches {source!r} (relative paths start at the current directory)")
    for f in files:
        if not os.path.isfile(f):
            raise UserError(f"{where}: {f}: no such file (relative paths start at the current directory)")
        if not os.access(f, os.R_OK):
            raise UserError(f"{where}: {f}: not readable (permission denied)")
    exts = {Path(f).suffix.lower().lstrip(".") for f in files}
    fmt = {"csv": "csv", "tsv": "csv", "txt": "csv", "parquet": "parquet", "pq": "parquet", "json": "json",
           "jsonl": "json", "ndjson": "json"}
    kinds = {fmt.get(e, "csv") for e in exts}
    return files, kinds.pop() if len(kinds) == 1 else "mixed"


def connect(files: list[str], fmt: str, source: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding the table `source`, then locked: later SQL cannot touch the file system."""
    if fmt == "mixed":
        raise UserError(f"data.source: {source!r} matches files of different formats; set data.format")
    if fmt != "parquet" and all(os.path.getsize(f) == 0 for f in files):
        raise UserError(f"data.source: {source}: the file is empty (expected a header and one row per event)")
    if fmt == "csv":
        for f in files:
            _check_line_lengths(f)
    con = duckdb.connect(":memory:")
    # nothing is fetched from the network: csv, parquet and json are built in
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_progress_bar = false")  # on big files DuckDB would draw one into ltrec's stdout
    try:
        con.execute(f"CREATE TABLE source AS SELECT * FROM {READERS[fmt]}(?)", [files])  # reader name is ours
    except duckdb.Error as exc:
        con.close()
        raise UserError(f"data.source: {source}: cannot read as {fmt.upper()}: {reason(exc)}") from None
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def reason(exc: Exception) -> str:
    """DuckDB's first line and the line that says why: its messages run to dozens of lines, and some quote a
    whole row (which may be megabytes long)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    why = [line for line in lines[1:] if not line.startswith(("Original Line", "Possible", "file =", "LINE ", "^"))][:1]
    text = ": ".join(line[:200] for line in lines[:1] + why) or type(exc).__name__
    if "utf-8" in text.lower() or "unicode" in text.lower():
        text += " (convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 in.csv > out.csv)"
    return text


@contextmanager
def duckdb_errors(where: str):
    """Any DuckDB failure left (out of memory, an odd type) as a UserError naming `where`."""
    try:
        yield
    except duckdb.Error as exc:
        raise UserError(f"{where}: {reason(exc)}") from None


def _check_line_lengths(path: str, rows: int = 20_480) -> None:
    """Fail fast on a huge line among the rows DuckDB's CSV sniffer samples: the sniffer takes about half a
    second per megabyte of one such line before it gives up (minutes for a 1 GB line)."""
    seen, carry = 0, 0  # lines ended so far; bytes of the line still open
    with open(path, "rb") as f:
        while seen <= rows:
            chunk = f.read(1 << 22)
            if not chunk:
                return
            ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)  # newline positions
            lengths = np.diff(ends, prepend=-1 - carry) - 1  # the lines ending in this chunk
            carry = len(chunk) - 1 - ends[-1] if len(ends) else carry + len(chunk)
            too_long = np.flatnonzero(lengths > MAX_LINE_BYTES)
            if len(too_long) or carry > MAX_LINE_BYTES:
                line = seen + 1 + (int(too_long[0]) if len(too_long) else len(ends))
                raise UserError(f"data.source: {path}: line {line:,} is longer than {MAX_LINE_BYTES:,} bytes; "
                                "an events file has short lines (the wrong file, or a quote left open?)")
            seen += len(ends)


def read_events(data: Data, con: duckdb.DuckDBPyConnection, source: str) -> None:
    """Creates table `events(u, i, t, r)`: user and item ids (original values), time, and source row order."""
    if data.query:
        try:
            rel = con.sql(data.query)
            if rel is None:
                raise UserError("data.query: the query returned no table; write a SELECT over `source`")
            rel.create("picked")
        except duckdb.Error as exc:
            raise UserError(f"data.query: the query failed: {reason(exc)}") from None
        from_ = "picked"
    else:
        from_ = "source"
    described = {row[0]: row[1] for row in con.execute(f"DESCRIBE {from_}").fetchall()}
    for name in RESERVED:
        if name in described:
            raise UserError(f"data.source: {source}: a column is named {name!r}, which ltrec needs for the row "
                            f"order; drop or rename it (in the file, or with data.query: SELECT * EXCLUDE ({name}) "
                            "FROM source)")
    if not data.query:
        con.execute("CREATE VIEW picked AS SELECT *, rowid AS __row FROM source")
    cols = data.columns
    for key in ("user", "item", "time"):
        name = getattr(cols, key)
        if name not in described:
            raise UserError(f"data.columns.{key}: {source}: no column {name!r} (columns: {', '.join(described)})"
                            f"{_columns_hint(list(described))}; set data.columns.{key} to the right name")
    for key in ("user", "item"):
        kind = described[getattr(cols, key)]
        if kind.endswith("]") or kind.startswith(("STRUCT", "MAP", "UNION")):
            raise UserError(f"data.columns.{key}: {source}: column {getattr(cols, key)!r} holds nested values "
                            f"({kind}); expected plain ids (text or numbers)")
    u, i, t = (f'"{getattr(cols, k)}"' for k in ("user", "item", "time"))  # validated identifiers, quoted
    row = "__row" if not data.query else "rowid"
    ttype = described[cols.time].split("(")[0]
    if ttype in TIMESTAMPS:
        tsql = f"epoch({t})::DOUBLE"
    elif ttype in NUMERIC:
        tsql = f"{t}::DOUBLE"
    elif ttype == "VARCHAR":
        bad = con.execute(
            f"SELECT {t} FROM picked WHERE {t} IS NOT NULL AND TRY_CAST({t} AS DOUBLE) IS NULL LIMIT 1"
        ).fetchone()
        if bad is not None:
            raise UserError(
                f"data.columns.time: {source}: column {cols.time!r} holds non-numeric values such as {bad[0][:80]!r}; "
                "expected unix times or timestamps (convert it with data.query, e.g. epoch(strptime(...)))"
            )
        tsql = f"TRY_CAST({t} AS DOUBLE)"
    else:
        raise UserError(f"data.columns.time: {source}: column {cols.time!r} has type {described[cols.time]}; "
                        "expected unix times (numbers) or dates/timestamps")
    # A view, not a copy: DuckDB computes only the columns a query reads, so load() never turns every event's
    # ids into text (it maps the distinct raw ids instead), while predict reads the text columns directly.
    con.execute(
        f"""CREATE VIEW events AS SELECT
              {u} AS u_raw, {TEXT.format(u)} AS u, {i} AS i_raw, {TEXT.format(i)} AS i, {tsql} AS t, {row} AS r
            FROM picked"""
    )
    nan = con.execute("SELECT count(*) FROM events WHERE isnan(t) OR isinf(t)").fetchone()[0]
    if nan:
        raise UserError(f"data.columns.time: {source}: column {cols.time!r} has {nan:,} NaN or infinite values")
    numeric_ids = all(described[getattr(cols, k)].split("(")[0] in NUMERIC for k in ("user", "item"))
    nul = 0 if numeric_ids else con.execute(  # the text of a number holds no NUL: skip a scan of every id
        "SELECT count(*) FROM events WHERE contains(u, chr(0)) OR contains(i, chr(0))").fetchone()[0]
    if nul:
        raise UserError(f"data.source: {source}: {nul:,} user or item ids contain a NUL character (a binary file?); "
                        "clean the ids")


def _columns_hint(names: list[str]) -> str:
    if names and all(n.startswith("column") and n[6:].isdigit() for n in names):
        return "; the file seems to have no header row: add one"
    if len(names) == 1 and any(c in names[0] for c in ",;\t|"):
        return ("; every row was read as one column: some rows have a different number of fields, "
                "or a quote is left open")
    return ""


@contextmanager
def opened_events(data: Data):
    """A locked DuckDB connection holding the table `events` of the recipe's source, closed afterwards."""
    files, fmt = source_files(data.source)
    fmt = fmt if data.format == "auto" else data.format
    con = connect(files, fmt, data.source)
    try:
        with duckdb_errors(f"data.source: {data.source}"):
            read_events(data, con, data.source)
            yield con
    finally:
        con.close()


def load(data: Data, split: Split, head: Head, seed: int = 0) -> Sequences:
    """Read the recipe's data source into Sequences (see the module docstring for the conventions)."""
    with opened_events(data) as con:
        return _to_sequences(con, data, split, head, seed)


def _to_sequences(con, data: Data, split: Split, head: Head, seed: int) -> Sequences:
    total = con.execute("SELECT count(*) FROM events").fetchone()[0]
    if total == 0:
        raise UserError(f"data.source: {data.source}: no events (the file or query returned no rows)")
    # The text of each *distinct* raw id and a dense key in text order (users are ordered by it; item ids
    # follow the raw order, below): one text conversion per id instead of per event, and integer joins.
    for key, raw in (("uk", "u_raw"), ("ik", "i_raw")):
        con.execute(f"""CREATE TABLE {key}s AS SELECT {raw}, txt, dense_rank() OVER (ORDER BY txt) AS {key}
                        FROM (SELECT {raw}, {TEXT.format(raw)} AS txt FROM (SELECT DISTINCT {raw} FROM events))
                        WHERE txt IS NOT NULL""")
    # Every clean event (user, item and time present) as two integer keys, in the final order: by user text,
    # then time, then source row. Only this sort touches every event; the rest is numpy on these arrays.
    ev = con.execute("""SELECT uk::INTEGER AS uk, ik::INTEGER AS ik, t FROM events JOIN uks USING (u_raw)
                        JOIN iks USING (i_raw) WHERE t IS NOT NULL ORDER BY uk, t, r""").fetchnumpy()
    uk, ik, t = (np.asarray(ev[c]) for c in ("uk", "ik", "t"))
    del ev
    clean = len(uk)
    if clean == 0:
        raise UserError(f"data: {data.source}: all {total:,} rows have an empty user, item or time "
                        f"(columns {data.columns.user}, {data.columns.item}, {data.columns.time})")
    n_uk, n_ik = (con.execute(f"SELECT count(*) FROM {k}s").fetchone()[0] + 1 for k in ("uk", "ik"))
    per_user, per_item = np.bincount(uk, minlength=n_uk), np.bincount(ik, minlength=n_ik)  # keys start at 1
    users_before, items_before = int((per_user > 0).sum()), int((per_item > 0).sum())
    if data.min_user_events > 1 or data.min_item_events > 1:  # one pass, both on the raw counts
        keep = (per_user[uk] >= data.min_user_events) & (per_item[ik] >= data.min_item_events)
        uk, ik, t = uk[keep], ik[keep], t[keep]
    kept = len(uk)
    if kept == 0:
        raise UserError(
            f"data: no events left after min_user_events={data.min_user_events} and "
            f"min_item_events={data.min_item_events} ({clean:,} before); lower the thresholds"
        )
    # item ids 1..N in the order of the raw ids (then text), over the items left
    pairs = con.execute("SELECT ik, txt FROM iks ORDER BY i_raw, txt").fetchnumpy()
    present = np.bincount(ik, minlength=n_ik) > 0
    pair_kept = present[pairs["ik"]]
    vocab = np.asarray(pairs["txt"])[pair_kept]
    if len(vocab) != int(present.sum()):  # two raw ids with one text, e.g. 1 and '1' in a mixed-type JSON column
        raise UserError(f"data.columns.item: {data.source}: item ids differ in type but not in text; unify them")
    if len(vocab) < 2:
        raise UserError(f"data.columns.item: {data.source}: only {len(vocab)} distinct item; a recommender needs "
                        "at least 2 (check data.columns.item and the minimum counts)")
    item_of = np.zeros(n_ik, np.int64)
    item_of[np.asarray(pairs["ik"])[pair_kept]] = np.arange(1, len(vocab) + 1)
    items = item_of[ik]
    del ik
    change = np.flatnonzero(uk[1:] != uk[:-1]) + 1
    offsets = np.concatenate([[0], change, [len(items)]]).astype(np.int64)
    names = con.execute("SELECT uk, txt FROM uks").fetchnumpy()
    text_of = np.empty(n_uk, dtype=object)
    text_of[np.asarray(names["uk"])] = np.asarray(names["txt"])
    users = text_of[uk[offsets[:-1]]].astype(str)
    report = {
        "events": int(kept), "rows": int(total), "null_rows": int(total - clean),
        "dropped_users": int(users_before - len(users)), "dropped_items": int(items_before - len(vocab)),
        "duplicate_rows": _repeats(uk, items, t),  # kept: a repeat of the same item at the same time is still an event
    }
    return _assign_roles(items, offsets, users, vocab.astype(str), split, head, seed, report)


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


def check_source(data: Data) -> None:
    """Cheap check for `ltrec validate`: the source is readable and has the mapped columns."""
    with opened_events(data):
        pass
