"""Events → `Sequences`: DuckDB does the reading, filtering, id mapping and ordering; numpy the padding.

Conventions (see README "Data"):
- ids are text; items are mapped to 1..N in ascending order of their id (as numbers where they are numbers); 0 is
  padding;
- each user's events are ordered by time, ties kept in source order (file row order; a query's output order);
- chronological leave-one-out: last event = test target, second-to-last = validation target, the rest trains;
- head/tail is decided on the number of *training* events, once, and travels with the data.
No Python loop runs over events: everything below is SQL or vectorised numpy.
"""

from ltrec.data.load import load
from ltrec.data.read import check_source, connect, duckdb_errors, opened_events, read_events, reason, source_files
from ltrec.data.sequences import COLD, EVAL, TRAIN_ONLY, Sequences, distinct_items

__all__ = [
    "COLD",
    "EVAL",
    "TRAIN_ONLY",
    "Sequences",
    "check_source",
    "connect",
    "distinct_items",
    "duckdb_errors",
    "load",
    "opened_events",
    "read_events",
    "reason",
    "source_files",
]
