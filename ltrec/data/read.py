"""Reading an events source with DuckDB: files or a glob (CSV, Parquet, JSON), an optional SQL query over the
table `source`, the user / item / time columns checked and typed. The connection is locked once the table is
loaded, so a recipe's SQL cannot touch the file system or the network."""

from __future__ import annotations

import glob
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np

from ltrec.files.errors import UserError
from ltrec.recipe import IDENTIFIER, Data

READERS = {"csv": "read_csv", "parquet": "read_parquet", "json": "read_json"}
NUMERIC = tuple(
    "TINYINT SMALLINT INTEGER BIGINT HUGEINT UTINYINT USMALLINT UINTEGER UBIGINT FLOAT DOUBLE DECIMAL".split()
)
TIMESTAMPS = ("DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS")
RESERVED = ("rowid", "__row")  # ltrec orders ties by DuckDB's rowid; a column of that name would shadow it
MAX_LINE_BYTES = 2_000_000  # DuckDB's read_csv max_line_size
TEXT = "NULLIF(TRIM({}::VARCHAR), '')"  # an id as ltrec sees it: its text, trimmed; empty = missing


def source_files(source: str, where: str = "data.source") -> tuple[list[str], str]:
    """Expand a path or glob; returns (files, format detected from the extension)."""
    path = os.path.expanduser(source)
    # a path that exists is that file, brackets and all; only a pattern that names no file is a glob
    files = sorted(glob.glob(path)) if glob.has_magic(path) and not os.path.lexists(path) else [path]
    if not files:
        raise UserError(f"{where}: no file matches {source!r} (relative paths start at the current directory)")
    for f in files:
        if not os.path.isfile(f):
            raise UserError(f"{where}: {f}: no such file (relative paths start at the current directory)")
        if not os.access(f, os.R_OK):
            raise UserError(f"{where}: {f}: not readable (permission denied)")
    exts = {Path(f).suffix.lower().lstrip(".") for f in files}
    fmt = {
        "csv": "csv",
        "tsv": "csv",
        "txt": "csv",
        "parquet": "parquet",
        "pq": "parquet",
        "json": "json",
        "jsonl": "json",
        "ndjson": "json",
    }
    kinds = {fmt.get(e, "csv") for e in exts}
    return files, kinds.pop() if len(kinds) == 1 else "mixed"


def connect(files: list[str], fmt: str, source: str, text: tuple[str, ...] = ()) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding the table `source`, then locked: later SQL cannot touch the file system.
    CSV columns named in `text` (the user and item ids) are read as text whatever they look like: DuckDB types
    a column from a sample of rows, so ids that look numeric for thousands of rows (and `00123`, whose zeros
    are part of the id) would become numbers, and a later `u-17` a conversion error."""
    if fmt == "mixed":
        raise UserError(f"data.source: {source!r} matches files of different formats; set data.format")
    con = _opened(files, fmt, f"data.source: {source}")
    try:
        with _literal(files) as paths:
            types = ""
            if fmt == "csv" and text:
                header = [r[0] for r in con.execute("DESCRIBE SELECT * FROM read_csv(?)", [paths]).fetchall()]
                # column names come from the validated recipe (plain identifiers), never from the file
                types = (
                    ", types={"
                    + ", ".join(f"'{c}': 'VARCHAR'" for c in text if c in header and IDENTIFIER.match(c))
                    + "}"
                )
                types = types if "VARCHAR" in types else ""
            con.execute(
                f"CREATE TABLE source AS SELECT * FROM {READERS[fmt]}(?{types})", [paths]
            )  # reader name is ours
    except duckdb.Error as exc:
        con.close()
        raise UserError(f"data.source: {source}: cannot read as {fmt.upper()}: {reason(exc)}") from None
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _opened(files: list[str], fmt: str, where: str) -> duckdb.DuckDBPyConnection:
    """The checks that fail fast before DuckDB reads (an empty file, a huge line), then an in-memory DuckDB
    that fetches nothing from the network (csv, parquet and json are built in)."""
    if fmt != "parquet" and all(os.path.getsize(f) == 0 for f in files):
        raise UserError(f"{where}: the file is empty (expected a header and one row per event)")
    if fmt == "csv":
        for f in files:
            _check_line_lengths(f)
    con = duckdb.connect(":memory:")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_progress_bar = false")  # on big files DuckDB would draw one into ltrec's stdout
    return con


def read_header(path: Path, flag: str) -> list[str]:
    """The column names of an events file (CSV, Parquet or JSON), read without typing any column: DuckDB
    types a CSV column from a sample of rows, so ids that look numeric for the sampled rows and are not
    further down would fail the reading of a header that needs no types at all."""
    files, fmt = source_files(str(path), flag)
    if fmt not in READERS:
        raise UserError(f"{flag}: {path}: matches files of different formats; give one file")
    con = _opened(files, fmt, f"{flag}: {path}")
    try:
        with _literal(files) as paths:
            text = ", all_varchar = true" if fmt == "csv" else ""  # the reader's name and options are ours
            query = f"DESCRIBE SELECT * FROM {READERS[fmt]}(?{text})"
            return [row[0] for row in con.execute(query, [paths]).fetchall()]
    except duckdb.Error as exc:
        raise UserError(f"{flag}: {path}: cannot read as {fmt.upper()}: {reason(exc)}") from None
    finally:
        con.close()


@contextmanager
def _literal(files: list[str]):
    """The files under names DuckDB will not read as patterns: its readers glob every path they are given,
    so `events[1].csv` would read `events1.csv`. A file whose name has pattern characters is read through a
    link with a plain name, in a temp folder that is gone once the table is loaded."""
    if not any(c in f for f in files for c in "*?[]{}"):
        yield files
        return
    with tempfile.TemporaryDirectory(prefix="ltrec-read-") as tmp:
        paths = []
        for i, f in enumerate(files):
            link = Path(tmp) / f"{i}{Path(f).suffix}"
            link.symlink_to(os.path.abspath(f))
            paths.append(str(link))
        yield paths


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
                raise UserError(
                    f"data.source: {path}: line {line:,} is longer than {MAX_LINE_BYTES:,} bytes; "
                    "an events file has short lines (the wrong file, or a quote left open?)"
                )
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
            raise UserError(
                f"data.source: {source}: a column is named {name!r}, which ltrec needs for the row "
                f"order; drop or rename it (in the file, or with data.query: SELECT * EXCLUDE ({name}) "
                "FROM source)"
            )
    if not data.query:
        con.execute("CREATE VIEW picked AS SELECT *, rowid AS __row FROM source")
    cols = data.columns
    for key in ("user", "item", "time"):
        name = getattr(cols, key)
        if name not in described:
            raise UserError(
                f"data.columns.{key}: {source}: no column {name!r} (columns: {', '.join(described)})"
                f"{_columns_hint(list(described))}; set data.columns.{key} to the right name"
            )
    for key in ("user", "item"):
        kind = described[getattr(cols, key)]
        if kind.endswith("]") or kind.startswith(("STRUCT", "MAP", "UNION")):
            raise UserError(
                f"data.columns.{key}: {source}: column {getattr(cols, key)!r} holds nested values "
                f"({kind}); expected plain ids (text or numbers)"
            )
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
        raise UserError(
            f"data.columns.time: {source}: column {cols.time!r} has type {described[cols.time]}; "
            "expected unix times (numbers) or dates/timestamps"
        )
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
    nul = (
        0
        if numeric_ids
        else con.execute(  # the text of a number holds no NUL: skip a scan of every id
            # TRIM takes only spaces, so the raw text holds a NUL exactly when the id does, and costs no TRIM
            "SELECT count(*) FROM events WHERE contains(u_raw::VARCHAR, chr(0)) OR contains(i_raw::VARCHAR, chr(0))"
        ).fetchone()[0]
    )
    if nul:
        raise UserError(
            f"data.source: {source}: {nul:,} user or item ids contain a NUL character (a binary file?); clean the ids"
        )


def _columns_hint(names: list[str]) -> str:
    if names and all(n.startswith("column") and n[6:].isdigit() for n in names):
        return "; the file seems to have no header row: add one"
    if len(names) == 1 and any(c in names[0] for c in ",;\t|"):
        return (
            "; every row was read as one column: some rows have a different number of fields, or a quote is left open"
        )
    return ""


@contextmanager
def opened_events(data: Data):
    """A locked DuckDB connection holding the table `events` of the recipe's source, closed afterwards."""
    files, fmt = source_files(data.source)
    fmt = fmt if data.format == "auto" else data.format
    con = connect(files, fmt, data.source, (data.columns.user, data.columns.item))
    try:
        with duckdb_errors(f"data.source: {data.source}"):
            read_events(data, con, data.source)
            yield con
    finally:
        con.close()


def check_source(data: Data) -> None:
    """Cheap check for `ltrec validate`: the source is readable and has the mapped columns."""
    with opened_events(data):
        pass
