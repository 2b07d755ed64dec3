"""`ltrec predict`: an events file → top-K items per user, with onnxruntime only (torch is never imported).

Each user's events are read and ordered exactly as in training (ltrec.data: by time, ties in source order),
items the model does not know are skipped (counted once), and the last max_len known items form the history.
The columns and whether seen items are excluded default to what the run was trained and evaluated with
(stored in the bundle). Users with no known item get the training popularity ranking instead, with
`source` = popularity and the item's share of training events as its score.
The bundle format is described in ltrec/deploy/bundle.py.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ltrec.data import connect, distinct_items, duckdb_errors, read_events, source_files
from ltrec.deploy.bundle import PREDICT_BATCH, Bundle, length_batches, load_bundle
from ltrec.files.errors import UserError
from ltrec.files.safe import open_output, refuse_inputs
from ltrec.recipe import Columns, Data

CHUNK = 65536  # users per output chunk


@dataclass
class Histories:
    users: np.ndarray  # (U,) user ids as str, sorted
    items: np.ndarray  # (M,) known item ids 1..N, grouped by user, oldest first
    offsets: np.ndarray  # (U + 1,) user u's known items are items[offsets[u]:offsets[u + 1]]
    unknown: int = 0  # events skipped because the model does not know their item
    unknown_items: int = 0  # distinct such items
    null_rows: int = 0  # rows with an empty user, item or time (a file's; a server's queries have none)


def read_histories(input_path: Path, columns: dict, vocab: np.ndarray) -> Histories:
    """The events file through ltrec.data's reader; item ids mapped to the bundle's 1..N."""
    try:
        data = Data(source=str(input_path), columns=Columns(**columns))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = next((p for p in err["loc"] if p in ("user", "item", "time")), "")
        why = err["msg"].removeprefix("Value error, ").split(";")[0]
        raise UserError(f"--{key}-col {columns.get(key)!r}: {why}; rename the column in the file") from None
    source = str(input_path)
    try:
        files, fmt = source_files(source)
        con = connect(files, fmt, source, (data.columns.user, data.columns.item))
        try:
            with duckdb_errors(f"--input: {source}"):
                read_events(data, con, source)
                return _histories(con, vocab, source)
        finally:
            con.close()
    except UserError as exc:  # the shared reader speaks recipe keys; here they are command-line flags
        text = str(exc)
        for key in ("user", "item", "time"):
            text = text.replace(f"data.columns.{key}", f"--{key}-col")
        text = text.replace("convert it with data.query", "convert it in the file")
        raise UserError(text.replace("data.source", "--input")) from None


def _histories(con, vocab: np.ndarray, source: str) -> Histories:
    con.execute(
        "CREATE TABLE vocab AS SELECT unnest(v) AS i, generate_subscripts(v, 1) AS item "
        "FROM (SELECT ?::VARCHAR[] AS v)",
        [vocab.tolist()],
    )
    con.execute("""CREATE TABLE ev AS SELECT u, t, r, i, coalesce(vocab.item, 0)::BIGINT AS item
                   FROM events LEFT JOIN vocab USING (i)
                   WHERE u IS NOT NULL AND i IS NOT NULL AND t IS NOT NULL""")
    total, kept = con.execute("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM ev)").fetchone()
    if kept == 0:
        raise UserError(f"--input: {source}: no events ({total:,} rows, none with a user, item and time)")
    unknown, unknown_items = con.execute("SELECT count(*), count(DISTINCT i) FROM ev WHERE item = 0").fetchone()
    per_user = con.execute("SELECT u, count(*) FILTER (item > 0) AS n FROM ev GROUP BY u ORDER BY u").fetchnumpy()
    items = con.execute("SELECT item FROM ev WHERE item > 0 ORDER BY u, t, r").fetchnumpy()["item"]
    offsets = np.concatenate([[0], np.cumsum(per_user["n"])]).astype(np.int64)
    return Histories(
        np.asarray(per_user["u"], dtype=object),
        np.asarray(items, dtype=np.int64),
        offsets,
        int(unknown),
        int(unknown_items),
        int(total - kept),
    )


def last_items(h: Histories, users: np.ndarray, width: int) -> np.ndarray:
    """(B, width) left-padded histories: each user's last `width` known items, newest last."""
    end, start = h.offsets[users + 1], h.offsets[users]
    idx = end[:, None] - width + np.arange(width)  # (B, width)
    return np.where(idx >= start[:, None], h.items[np.maximum(idx, 0)], 0)


def seen_items(h: Histories, users: np.ndarray, n_items: int) -> np.ndarray:
    """(B, E) each user's distinct known items (whole history, not just max_len), 0-padded."""
    row, item = distinct_items(h.items, h.offsets[users], h.offsets[users + 1], n_items)
    count = np.bincount(row, minlength=len(users))
    out = np.zeros((len(users), max(int(count.max(initial=0)), 1)), np.int64)
    out[row, np.arange(len(row)) - np.repeat(np.cumsum(count) - count, count)] = item
    return out


def model_top_k(b: Bundle, h: Histories, users: np.ndarray, exclude_seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(items (B, K), scores (B, K)) from one onnxruntime call: each user's last max_len known items in, and
    their whole known history excluded where `exclude_seen` (B,) is True. Every user needs a known item."""
    width = min(int((h.offsets[users + 1] - h.offsets[users]).max()), b.meta.max_len)
    if exclude_seen.any():
        exclude = seen_items(h, users, len(b.vocab))
        exclude[~exclude_seen] = 0  # 0 = nothing: a row that keeps seen items
    else:
        exclude = np.zeros((len(users), 0), np.int64)
    return b.run(last_items(h, users, width), exclude)


def popular_items(popularity: list[float], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The fallback for a user with no known item: (k,) item ids by training popularity (ties: lower id first)
    and (k,) float32 scores, each item's share of training events."""
    counts = np.asarray(popularity, dtype=np.float64)
    popular = np.argsort(-counts, kind="stable")[:k] + 1
    return popular, (counts[popular - 1] / max(counts.sum(), 1.0)).astype(np.float32)


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def run_predict(
    bundle: Path,
    input_path: Path,
    output: str | Path,
    k: int | None = None,
    batch_size: int = PREDICT_BATCH,
    columns: dict | None = None,
    exclude_seen: bool | None = None,
) -> str:
    """Write `output` (<user column>,rank,item_id,score,source: Parquet where it ends in .parquet, else CSV;
    `-` = standard output); returns a summary.
    `columns` (any of user/item/time) and `exclude_seen` default to the bundle's."""
    t0 = time.perf_counter()
    console = Console(stderr=True, soft_wrap=True)
    refuse_inputs(output, {"the --input file": Path(input_path), "the bundle": Path(bundle)}, "--output")
    b = load_bundle(bundle)
    k = b.meta.k if k is None else k
    if not 1 <= k <= b.meta.k:
        raise UserError(
            f"--k {k}: this bundle computes the top {b.meta.k} inside its graph; pass --k ≤ "
            f"{b.meta.k} or re-export with `ltrec export --k {k}`"
        )
    columns = {**b.meta.columns.model_dump(), **{key: v for key, v in (columns or {}).items() if v}}
    exclude_seen = b.meta.exclude_seen if exclude_seen is None else exclude_seen
    h = read_histories(input_path, columns, b.vocab)
    if h.unknown:
        console.print(
            f"skipped {plural(h.unknown, 'event')} whose item the model does not know "
            f"({plural(h.unknown_items, 'distinct item')})"
        )
    popular, share = popular_items(b.meta.popularity, k)
    n_users = len(h.users)
    lengths = np.diff(h.offsets)  # (U,) known items per user
    known = lengths > 0  # (U,) False = popularity fallback
    rows = 0
    progress = Progress(
        TextColumn("predict"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("users"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    parquet = str(output).lower().endswith(".parquet")
    with progress, open_output(output, "--output", binary=parquet) as final, rows_file(final, parquet) as f:
        f.write(f"{csv_field(np.array([columns['user']]))[0]},rank,item_id,score,source\n")
        user_ids, item_ids = csv_field(h.users), csv_field(b.vocab)  # quoted once, not once per row
        task = progress.add_task("predict", total=n_users)
        for lo in range(0, n_users, CHUNK):  # chunks bound memory; the output stays in user order
            users = np.arange(lo, min(lo + CHUNK, n_users))
            items = np.broadcast_to(popular, (len(users), k)).copy()  # (C, k), fallback users keep these
            scores = np.broadcast_to(share, (len(users), k)).copy()  # (C, k)
            progress.advance(task, int((~known[users]).sum()))
            run = users[known[users]]
            for batch in length_batches(lengths[run], batch_size):
                who = run[batch]
                got_items, got_scores = model_top_k(b, h, who, np.full(len(who), exclude_seen))
                items[who - lo], scores[who - lo] = got_items[:, :k], got_scores[:, :k]
                progress.advance(task, len(who))
            rows += _write_rows(f, user_ids[users], items, scores, ~known[users], item_ids)
    seconds = time.perf_counter() - t0
    where = "standard output" if str(output) == "-" else str(output)
    return (
        f"{plural(n_users, 'user')}, {plural(rows, 'row')} written to {where} (seen items "
        f"{'excluded' if exclude_seen else 'allowed'}); {plural(h.unknown, 'event')} with unknown items "
        f"skipped; {plural(int((~known).sum()), 'user')} with no known item got popular items; "
        + (f"{plural(h.null_rows, 'row')} with an empty user, item or time ignored; " if h.null_rows else "")
        + f"{seconds:.2f}s, {n_users / seconds:,.0f} users/s"
    )


@contextmanager
def rows_file(final, parquet: bool):
    """Where the CSV rows go: `final` itself, or for Parquet a temporary CSV that DuckDB converts into `final`
    once every row is written (typed columns: ids as text, rank integer, score double)."""
    if not parquet:
        yield final
        return
    with tempfile.TemporaryDirectory(prefix="ltrec-predict-") as tmp:
        rows, table = Path(tmp) / "rows.csv", Path(tmp) / "rows.parquet"
        with open(rows, "w", encoding="utf-8", newline="") as f:
            yield f
        con = duckdb.connect()
        try:
            header = con.execute("SELECT * FROM read_csv(?, header=true, all_varchar=true) LIMIT 0", [str(rows)])
            user = '"' + header.description[0][0].replace('"', '""') + '"'
            types = {header.description[0][0]: "VARCHAR", "rank": "INTEGER", "item_id": "VARCHAR"}
            types |= {"score": "DOUBLE", "source": "VARCHAR"}
            con.execute(
                f"COPY (SELECT {user}, rank, item_id, score, source FROM read_csv(?, header=true, columns=?, "
                "quote='\"', escape='\"')) TO '" + str(table).replace("'", "''") + "' (FORMAT parquet)",
                [str(rows), types],
            )
        finally:
            con.close()
        with open(table, "rb") as src:
            shutil.copyfileobj(src, final)


def csv_field(values: np.ndarray) -> np.ndarray:
    """Ids as CSV fields: quoted (RFC 4180) only where they hold a comma, quote or line break."""
    out = np.asarray(values, dtype=object).copy()
    for j, v in enumerate(out):
        if any(c in v for c in ',"\r\n'):
            out[j] = '"' + v.replace('"', '""') + '"'
    return out


def _write_rows(f, user_ids, items, scores, fallback, item_ids) -> int:
    """The rows of a chunk of users, in one write: a csv.writer per row is the slowest part of predict."""
    B, k = items.shape
    keep = np.isfinite(scores).ravel()  # -inf: every remaining item was excluded
    prefix = np.repeat(user_ids, k)[keep]
    rank = np.array([f",{r}," for r in range(1, k + 1)], dtype=object)[np.tile(np.arange(k), B)[keep]]
    item = item_ids[np.maximum(items.ravel()[keep] - 1, 0)]
    score = [f",{s:.6g}," for s in scores.ravel()[keep].tolist()]
    flag = np.where(np.repeat(fallback, k)[keep], "popularity\n", "model\n").astype(object)
    f.write("".join(map("".join, zip(prefix.tolist(), rank.tolist(), item.tolist(), score, flag.tolist()))))
    return int(keep.sum())
