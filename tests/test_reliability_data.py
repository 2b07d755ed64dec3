"""Bad data files: each is a clear error naming the key and the file, or a documented handling that is
reported (counts in Sequences.report and the `data:` line) and checked here tensor by tensor.

Complements tests/test_data.py (no case of its BAD_DATA table is repeated). docs/reliability.md lists them.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from typer.testing import CliRunner

from ltrec.cli import app
from ltrec.data import load
from ltrec.data.read import MAX_LINE_BYTES
from ltrec.files.errors import UserError
from ltrec.recipe import Data, Head, Split

HEADER = "user_id,item_id,timestamp\n"
GOOD = "".join(f"u{u},{i},{i}\n" for u in range(3) for i in range(1, 5))  # 3 users × items 1..4


def csv(body: str | bytes, name: str = "events.csv"):
    def write(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
        return path

    return write


def parquet(select: str, name: str = "events.parquet", where: str = ""):
    """A Parquet file from a DuckDB SELECT over range(12) t(i): the exact column types we want."""

    def write(folder: Path) -> Path:
        path = folder / name
        duckdb.connect().execute(f"COPY ({select} FROM range(12) t(i) {where}) TO '{path}' (FORMAT parquet)")
        return path

    return write


def raw(body: bytes, name: str):
    return csv(body, name)


def glob_of_two(folder: Path) -> str:
    csv(HEADER + GOOD, "a.csv")(folder)
    parquet("SELECT 'u' || i % 3 AS user_id, i AS item_id, i AS timestamp", "b.parquet")(folder)
    return str(folder / "*.*")


def long_line(folder: Path) -> Path:
    """50 MB in one line (a stand-in for a 1 GB one): rejected before DuckDB's sniffer spends ~30 s on it."""
    path = folder / "events.csv"
    with open(path, "wb") as f:
        f.write(HEADER.encode() + b"u1,1,1\nu2,")
        f.write(b"x" * 50_000_000)
        f.write(b",2\n")
    return path


# (id, writer, Data/Split options, the error's text (after "{f}" → the file) — or a check of what is loaded)
ERRORS = [
    (
        "missing-user-column",
        csv("customer,item_id,timestamp\na,1,1\n"),
        {},
        "data.columns.user: {f}: no column 'user_id' (columns: customer, item_id, timestamp)",
    ),
    (
        "missing-time-column",
        csv("user_id,item_id,when\na,1,1\n"),
        {},
        "data.columns.time: {f}: no column 'timestamp' (columns: user_id, item_id, when)",
    ),
    ("empty-file", csv(""), {}, "data.source: {f}: the file is empty (expected a header and one row per event)"),
    ("header-only-crlf", csv(HEADER.replace("\n", "\r\n") + "\r\n"), {}, "data.source: {f}: no events"),
    (
        "header-only-parquet",
        parquet("SELECT 'u' AS user_id, i AS item_id, i AS timestamp", where="WHERE i < 0"),
        {},
        "data.source: {f}: no events",
    ),
    (
        "every-row-empty",
        csv(HEADER + "a,1,\nb,,2\n,3,3\n"),
        {},
        "data: {f}: all 3 rows have an empty user, item or time (columns user_id, item_id, timestamp)",
    ),
    (
        "nan-time",
        csv(HEADER + GOOD + "u1,3,nan\n"),
        {},
        "data.columns.time: {f}: column 'timestamp' has 1 NaN or infinite values",
    ),
    (
        "inf-time-parquet",
        parquet(
            "SELECT 'u' || i % 3 AS user_id, i AS item_id, CASE WHEN i = 5 THEN 'inf'::DOUBLE ELSE i END AS timestamp"
        ),
        {},
        "data.columns.time: {f}: column 'timestamp' has 1 NaN or infinite values",
    ),
    (
        "text-time-parquet",
        parquet(
            "SELECT 'u' || i % 3 AS user_id, i AS item_id, "
            "CASE WHEN i = 5 THEN 'yesterday' ELSE i::VARCHAR END AS timestamp"
        ),
        {},
        "data.columns.time: {f}: column 'timestamp' holds non-numeric values such as 'yesterday'",
    ),
    (
        "boolean-time",
        csv(HEADER + "a,1,true\na,2,false\na,3,true\n"),
        {},
        "data.columns.time: {f}: column 'timestamp' has type BOOLEAN; expected unix times",
    ),
    (
        "time-of-day",
        csv(HEADER + "a,1,10:00:00\na,2,11:00:00\na,3,12:00:00\n"),
        {},
        "data.columns.time: {f}: column 'timestamp' has type TIME; expected unix times",
    ),
    (
        "blob-time-parquet",
        parquet("SELECT 'u' || i % 3 AS user_id, i AS item_id, 'x'::BLOB AS timestamp"),
        {},
        "data.columns.time: {f}: column 'timestamp' has type BLOB",
    ),
    (
        "struct-user-parquet",
        parquet("SELECT {'id': i % 3} AS user_id, i AS item_id, i AS timestamp"),
        {},
        "data.columns.user: {f}: column 'user_id' holds nested values (STRUCT(id BIGINT)); expected plain ids",
    ),
    (
        "list-item-parquet",
        parquet("SELECT 'u' || i % 3 AS user_id, [i, 1] AS item_id, i AS timestamp"),
        {},
        "data.columns.item: {f}: column 'item_id' holds nested values (BIGINT[])",
    ),
    (
        "single-item",
        csv(HEADER + "".join(f"u{u},7,{t}\n" for u in range(4) for t in range(3))),
        {},
        "data.columns.item: {f}: only 1 distinct item; a recommender needs at least 2",
    ),
    (
        "all-users-too-short",
        csv(HEADER + "a,1,1\na,2,2\nb,1,1\nb,3,2\n"),
        {"split": {"short_users": "drop"}},
        "data: no user has the 3 events leave-one-out needs",
    ),
    (
        "latin-1",
        csv(HEADER.encode() + GOOD.encode() + "Zoë,1,1\n".encode("latin-1")),
        {},
        "data.source: {f}: cannot read as CSV: Invalid Input Error: CSV Error on Line: 14: Invalid unicode",
    ),
    ("fifty-mb-line", long_line, {}, f"data.source: {{f}}: line 3 is longer than {MAX_LINE_BYTES:,} bytes"),
    (
        "corrupt-parquet",
        raw(b"PAR1 this is not parquet", "events.parquet"),
        {},
        "data.source: {f}: cannot read as PARQUET: Invalid Input Error",
    ),
    (
        "random-bytes",
        raw(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes(), "events.csv"),
        {},
        "data.source: {f}: cannot read as CSV",
    ),
    (
        "malformed-json",
        raw(b'{"user_id": "a", "item_id": 1, "timestamp": ', "events.json"),
        {},
        "data.source: {f}: cannot read as JSON",
    ),
    (
        "ragged-rows",
        csv(HEADER + GOOD[:40] + "u1,2\n" + GOOD[40:]),
        {},
        "every row was read as one column: some rows have a different number of fields",
    ),
    ("no-header", csv(GOOD), {}, "the file seems to have no header row"),
    (
        "nul-in-id",
        csv(HEADER.encode() + GOOD.encode() + b"u1,\x00,5\n"),
        {},
        "data.source: {f}: 1 user or item ids contain a NUL character",
    ),
    (
        "rowid-column",
        csv("user_id,item_id,timestamp,rowid\n" + GOOD.replace("\n", ",9\n")),
        {},
        "data.source: {f}: a column is named 'rowid', which ltrec needs for the row order",
    ),
    ("mixed-formats", glob_of_two, {}, "data.source: '{f}' matches files of different formats; set data.format"),
]


def build(tmp_path, writer):
    where = writer(tmp_path)
    return str(where)


@pytest.mark.parametrize("writer, options, message", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_bad_data_is_a_clear_error(tmp_path, writer, options, message):
    source = build(tmp_path, writer)
    options = dict(options)
    split = Split(**options.pop("split", {}))
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        load(Data(source=source, **options), split, Head())
    assert message.format(f=source) in str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    assert time.perf_counter() - t0 < 10  # the 50 MB line included: no pathological slow path


def loaded(tmp_path, body: str | bytes, **data):
    return load(Data(source=build(tmp_path, csv(body)), **data), Split(), Head(count=2))


def test_null_and_blank_ids_dropped_and_counted(tmp_path):
    path = parquet(
        "SELECT CASE WHEN i = 0 THEN NULL ELSE 'u' || i % 3 END AS user_id, "
        "CASE WHEN i = 1 THEN NULL ELSE i END AS item_id, i AS timestamp"
    )(tmp_path)
    s = load(Data(source=str(path)), Split(), Head(count=2))
    assert s.report["null_rows"] == 2 and len(s.items) == 10
    s = loaded(tmp_path, HEADER + GOOD + "   ,1,1\nu1,  ,2\n")  # blank after trimming = empty
    assert s.report["null_rows"] == 2 and s.report["events"] == 12 and list(s.users) == ["u0", "u1", "u2"]
    assert "dropped: 2 rows with empty ids/time" in s.describe()


def test_duplicate_rows_kept_and_reported(tmp_path):
    s = loaded(tmp_path, HEADER + GOOD + "u1,3,3\nu1,3,3\n")
    assert s.report["duplicate_rows"] == 2 and s.report["events"] == 14
    assert s.items[s.offsets[1] : s.offsets[2]].tolist() == [1, 2, 3, 3, 3, 4]  # a repeat is an event, in time order
    assert "kept: 2 repeated (user, item, time) rows" in s.describe()
    assert "repeated" not in loaded(tmp_path, HEADER + GOOD).describe()


def test_quotes_and_commas_in_ids_survive(tmp_path):
    body = HEADER + '"a,b",1,1\n"a,b","i,2",2\n"a,b",3,3\n"q""x",1,1\n"q""x","i,2",2\n"q""x",3,3\n'
    s = loaded(tmp_path, body)
    assert list(s.users) == ["a,b", 'q"x'] and list(s.vocab) == ["1", "3", "i,2"]
    assert s.items.tolist() == [1, 3, 2, 1, 3, 2]


def test_huge_numeric_ids_keep_every_digit(tmp_path):
    big = 12345678901234567890123  # beyond int64 and exact doubles: must not round into one id
    s = loaded(tmp_path, HEADER + "".join(f"{big + u},{i},{i}\n" for u in range(3) for i in range(1, 4)))
    assert list(s.users) == [str(big), str(big + 1), str(big + 2)]


def test_single_user_trains_end_to_end(tmp_path, monkeypatch):
    """One user is enough to train and evaluate (head is empty: at most 20% of one user)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.csv").write_text(HEADER + "".join(f"solo,{i % 7 + 1},{i}\n" for i in range(30)))
    (tmp_path / "r.yaml").write_text(
        "name: solo\ndata: {source: events.csv, max_len: 8}\nbackbone: {kind: gru4rec, dim: 8}\ntrain: {epochs: 1}\n"
    )
    r = CliRunner().invoke(app, ["train", "r.yaml"])
    assert r.exit_code == 0, r.output
    assert "1 users, 7 items" in r.output and "evaluated users 1 (head 0" in r.output


def test_bad_data_through_the_cli_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.csv").write_bytes(HEADER.encode() + "Zoë,1,1\n".encode("latin-1"))
    (tmp_path / "r.yaml").write_text("name: t\ndata: {source: events.csv}\nbackbone: {kind: pop}\n")
    for command in ("validate", "train"):
        r = CliRunner().invoke(app, [command, "r.yaml"])
        assert r.exit_code == 2 and "Traceback" not in r.output
        assert r.output.startswith("r.yaml: data.source: ") and "iconv -f latin1 -t utf-8" in r.output


def test_catalogue_size():
    handled = [
        n
        for n in globals()
        if n.startswith("test_")
        and n not in ("test_bad_data_is_a_clear_error", "test_catalogue_size", "test_bad_data_through_the_cli_exits_2")
    ]
    assert len(ERRORS) + len(handled) >= 20
