"""`ltrec predict`: an events file → top-K items per user, with onnxruntime only (torch is never imported).

Each user's events are read and ordered exactly as in training (ltrec.data: by time, ties in source order),
items the model does not know are skipped (counted once), and the last max_len known items form the history.
Users with no known item get the training popularity ranking instead (`fallback` = true).
The bundle format is described in ltrec/export.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .data import connect, duckdb_errors, read_events, source_files
from .errors import UserError
from .recipe import Columns, Data

FORMAT_VERSION = 1
CHUNK = 65536  # users per output chunk


@dataclass
class Bundle:
    meta: dict
    session: object  # onnxruntime.InferenceSession
    vocab: np.ndarray  # (N,) original item ids: item i is vocab[i - 1]
    fixed_len: int | None  # the graph's history length if it is not dynamic

    def width(self, longest: int) -> int:
        """History columns to feed: the batch's longest history, unless the graph fixes the length."""
        return self.fixed_len or min(longest, self.meta["max_len"])


def load_bundle(path: Path) -> Bundle:
    """bundle.json + model.onnx, checked to belong together."""
    import onnxruntime as ort

    path = Path(path)
    meta_path, model_path = path / "bundle.json", path / "model.onnx"
    for f in (meta_path, model_path):
        if not f.is_file():
            raise UserError(f"{path}: no {f.name}; pass a bundle folder written by `ltrec export`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{meta_path}: not valid JSON ({exc})") from None
    expected = {"format_version": int, "max_len": int, "k": int, "vocab": list, "popularity": list}
    for key, kind in expected.items():
        if not isinstance(meta, dict) or not isinstance(meta.get(key), kind):
            raise UserError(f"{meta_path}: {key}: missing or not a{'n' if kind is int else ''} {kind.__name__}")
    if meta["format_version"] != FORMAT_VERSION:
        raise UserError(f"{meta_path}: format_version {meta['format_version']} is not supported "
                        f"(this ltrec reads {FORMAT_VERSION}); re-export with this version")
    if len(meta["popularity"]) != len(meta["vocab"]):
        raise UserError(f"{meta_path}: popularity has {len(meta['popularity'])} entries, vocab {len(meta['vocab'])}")
    if not all(isinstance(v, str) for v in meta["vocab"]):
        raise UserError(f"{meta_path}: vocab: expected a list of item ids as strings")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in meta["popularity"]):
        raise UserError(f"{meta_path}: popularity: expected a list of numbers")
    opts = ort.SessionOptions()
    # a spinning thread pool burns the cores other work (or a torch in the same process) needs
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # truncated, not ONNX, unsupported ops: onnxruntime says which
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{model_path}: not a loadable ONNX model ({first[:300]})") from None
    length = _check_model(session, meta, model_path)
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    if meta.get("model_sha256", digest) != digest:  # same shapes, other weights: another export, or an edit
        raise UserError(f"{path}: model.onnx does not match bundle.json (its sha256 differs from model_sha256); "
                        "the two files come from different exports or were modified (re-run `ltrec export`)")
    return Bundle(meta, session, np.asarray(meta["vocab"], dtype=object), length if isinstance(length, int) else None)


def _check_model(session, meta: dict, model_path: Path):
    """The graph's shapes and the metadata stamped by export must match bundle.json; returns the history
    input's length (an int if fixed, else its symbolic name)."""
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    ranks = [len(inputs.get("history") or ()), len(outputs.get("items") or ())]
    if set(inputs) != {"history", "exclude"} or not {"items", "scores"} <= set(outputs) or ranks != [2, 2]:
        raise UserError(f"{model_path}: inputs {sorted(inputs)}, outputs {sorted(outputs)}; expected inputs "
                        "history, exclude and outputs items, scores (a model written by `ltrec export`)")
    stamped = session.get_modelmeta().custom_metadata_map  # written by export; the length axis is dynamic
    found = {"max_len": stamped.get("ltrec.max_len"), "k": outputs["items"][1],
             "vocab size": stamped.get("ltrec.n_items")}
    wanted = {"max_len": meta["max_len"], "k": meta["k"], "vocab size": len(meta["vocab"])}
    for key, value in wanted.items():
        if str(found[key]) != str(value):
            raise UserError(f"{model_path.parent}: bundle.json says {key} {value} but model.onnx has "
                            f"{found[key]}; the two files come from different exports (re-run `ltrec export`)")
    return inputs["history"][1]


@dataclass
class Histories:
    users: np.ndarray  # (U,) user ids as str, sorted
    items: np.ndarray  # (M,) known item ids 1..N, grouped by user, oldest first
    offsets: np.ndarray  # (U + 1,) user u's known items are items[offsets[u]:offsets[u + 1]]
    unknown: int  # events skipped because the model does not know their item
    unknown_items: int  # distinct such items
    null_rows: int  # rows with an empty user, item or time


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
        con = connect(files, fmt, source)
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
    con.execute("CREATE TABLE vocab AS SELECT unnest(v) AS i, generate_subscripts(v, 1) AS item "
                "FROM (SELECT ?::VARCHAR[] AS v)", [vocab.tolist()])
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
    return Histories(np.asarray(per_user["u"], dtype=object), np.asarray(items, dtype=np.int64), offsets,
                     int(unknown), int(unknown_items), int(total - kept))


def last_items(h: Histories, users: np.ndarray, width: int) -> np.ndarray:
    """(B, width) left-padded histories: each user's last `width` known items, newest last."""
    end, start = h.offsets[users + 1], h.offsets[users]
    idx = end[:, None] - width + np.arange(width)  # (B, width)
    return np.where(idx >= start[:, None], h.items[np.maximum(idx, 0)], 0)


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices grouped by history length, so each batch is only as wide as its longest history: most users
    are short (the long tail), and a model fed max_len columns of padding does up to max_len× the work."""
    order = np.argsort(lengths, kind="stable")
    return [order[lo:lo + batch_size] for lo in range(0, len(order), batch_size)]


def seen_items(h: Histories, users: np.ndarray, n_items: int) -> np.ndarray:
    """(B, E) each user's distinct known items (whole history, not just max_len), 0-padded."""
    start, lens = h.offsets[users], np.diff(h.offsets)[users]
    row = np.repeat(np.arange(len(users)), lens)  # (M,)
    idx = np.arange(lens.sum()) + np.repeat(start - (np.cumsum(lens) - lens), lens)  # (M,) into h.items
    keys = np.unique(row * (n_items + 1) + h.items[idx])  # sorted by row, then item; duplicates gone
    row, item = keys // (n_items + 1), keys % (n_items + 1)
    count = np.bincount(row, minlength=len(users))
    out = np.zeros((len(users), max(int(count.max(initial=0)), 1)), np.int64)
    out[row, np.arange(len(keys)) - np.repeat(np.cumsum(count) - count, count)] = item
    return out


def run_predict(bundle: Path, input_path: Path, output: Path, k: int | None, batch_size: int, columns: dict,
                exclude_seen: bool) -> str:
    """Write `output` (CSV user_id,rank,item_id,score,fallback); returns a one-line summary."""
    t0 = time.perf_counter()
    console = Console(stderr=True, soft_wrap=True)
    b = load_bundle(bundle)
    k = b.meta["k"] if k is None else k
    if not 1 <= k <= b.meta["k"]:
        raise UserError(f"--k {k}: this bundle computes the top {b.meta['k']} inside its graph; pass --k ≤ "
                        f"{b.meta['k']} or re-export with `ltrec export --k {k}`")
    h = read_histories(input_path, columns, b.vocab)
    if h.unknown:
        console.print(f"skipped {h.unknown:,} events whose item the model does not know "
                      f"({h.unknown_items:,} distinct items)")
    popularity = np.asarray(b.meta["popularity"], dtype=np.float64)
    popular = np.argsort(-popularity, kind="stable")[:k] + 1  # (k,) item ids; ties: lower id first
    n_users, n_items = len(h.users), len(b.vocab)
    lengths = np.diff(h.offsets)  # (U,) known items per user
    known = lengths > 0  # (U,) False = fallback user
    rows = 0
    progress = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("users"),
                        TimeRemainingColumn(), console=console, disable=not console.is_terminal)
    with progress, _atomic_text(Path(output)) as f:
        f.write("user_id,rank,item_id,score,fallback\n")
        user_ids, item_ids = csv_field(h.users), csv_field(b.vocab)  # quoted once, not once per row
        task = progress.add_task("predict", total=n_users)
        for lo in range(0, n_users, CHUNK):  # chunks bound memory; the output stays in user order
            users = np.arange(lo, min(lo + CHUNK, n_users))
            items = np.broadcast_to(popular, (len(users), k)).copy()  # (C, k), fallback users keep these
            scores = np.broadcast_to(popularity[popular - 1], (len(users), k)).astype(np.float32)  # (C, k)
            progress.advance(task, int((~known[users]).sum()))
            run = users[known[users]]
            for batch in length_batches(lengths[run], batch_size):
                who = run[batch]
                feed = {"history": last_items(h, who, b.width(int(lengths[who].max()))),
                        "exclude": seen_items(h, who, n_items) if exclude_seen else np.zeros((len(who), 0), np.int64)}
                got_items, got_scores = b.session.run(["items", "scores"], feed)
                items[who - lo], scores[who - lo] = got_items[:, :k], got_scores[:, :k]
                progress.advance(task, len(who))
            rows += _write_rows(f, user_ids[users], items, scores, ~known[users], item_ids)
    seconds = time.perf_counter() - t0
    return (f"{n_users:,} users, {rows:,} rows written to {output}; {h.unknown:,} events with unknown items "
            f"skipped; {int((~known).sum()):,} fallback users (popular items); "
            + (f"{h.null_rows:,} rows with an empty user, item or time ignored; " if h.null_rows else "")
            + f"{seconds:.2f}s, {n_users / seconds:,.0f} users/s")


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
    flag = np.where(np.repeat(fallback, k)[keep], "true\n", "false\n").astype(object)
    f.write("".join(map("".join, zip(prefix.tolist(), rank.tolist(), item.tolist(), score, flag.tolist()))))
    return int(keep.sum())


@contextmanager
def _atomic_text(path: Path):
    """A text file written next to `path` under a temp name, renamed over `path` only if the block succeeds."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"--output: {path}: cannot write here ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is too private for a results file
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"--output: {path}: cannot write ({exc.strerror})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
