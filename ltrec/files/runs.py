"""Run folders: what makes a folder a run, where a new one may go, and reading its files back, each validated
so that a damaged or foreign file is a one-line error naming it, never a traceback.

A run folder holds `.ltrec-run.json` (written first, before anything else), `recipe.yaml` (resolved),
`data.json`, `metrics.jsonl` (one line per epoch), `best.pt` / `last.pt`, and after training `metrics.json`
and `users_{valid,test}.csv` (+ `.json` with their protocol). Only a folder with that marker is ever deleted
(`--overwrite`), and never one that holds the working directory, the recipe or the data.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ltrec.files.errors import UserError
from ltrec.files.lock import LOCK, locked
from ltrec.files.records import problem
from ltrec.files.safe import atomic_write, read_bytes, read_text, remove_stale_temps, same_or_inside
from ltrec.files.version import __version__

MARKER = ".ltrec-run.json"
RUN_FORMAT = 2  # runs without the marker, or of another format, are refused: retrain them
SLICE_NAMES = ("head", "tail", "cold", "cold-adapted")  # as written per user; `all` = head + tail
SLICES = ("all", *SLICE_NAMES)


def is_run(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _only_marker_temps(folder: Path) -> bool:
    """What a run killed while writing its marker leaves: the marker's temp file (and the lock) alone."""
    return all(p.name == LOCK or p.name.startswith(f".{MARKER}.") and p.name.endswith(".tmp") for p in folder.iterdir())


def check_run(folder: Path) -> Path:
    """`folder` if it is a run of this ltrec; a clear error otherwise."""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such run directory; pass the folder `ltrec train` wrote")
    marker = folder / MARKER
    if not marker.is_file():
        if (folder / "recipe.yaml").is_file() and any((folder / f).is_file() for f in ("data.json", "last.pt")):
            raise UserError(f"{folder}: this run was written by an older ltrec (no {MARKER}); retrain it")
        raise UserError(f"{folder}: not a run directory (no {MARKER}); pass the folder `ltrec train` wrote")
    info = read_json(marker, RunMarker)
    if info.format != RUN_FORMAT:
        raise UserError(
            f"{folder}: run format {info.format} (written by ltrec {info.ltrec}); this ltrec reads "
            f"format {RUN_FORMAT}: retrain it"
        )
    return folder


def find_run(run_dir: str | None) -> Path:
    """The given run directory, or the most recently modified run under ./runs."""
    if run_dir is not None:
        return check_run(Path(run_dir))
    candidates = sorted(Path("runs").glob(f"*/{MARKER}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError("no run directory given and none found under ./runs; pass RUN_DIR")
    return check_run(candidates[-1].parent)


def prepare_run_dir(run_dir: Path, overwrite: bool, protected: dict[str, Path], held: ExitStack) -> None:
    """Make `run_dir` an empty new run, its lock held in `held` (another live trainer there is refused before
    anything is touched). With `overwrite`, an existing *run* there is emptied first; nothing else ever is:
    not a folder without the run marker, and not one holding any `protected` path (the working directory,
    the recipe, the data)."""
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"{run_dir}: exists and is not a directory; choose another --out")
        mine = run_dir.is_dir() and (is_run(run_dir) or _only_marker_temps(run_dir))
        if mine:  # a folder that is not a run gets no lock file: it is refused below, untouched
            held.enter_context(locked(run_dir))
        if run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir()):
            if not overwrite:
                raise UserError(f"{run_dir}: already exists; pass --overwrite to replace it or --resume to continue")
            for name, path in protected.items():
                if same_or_inside(path, run_dir):
                    raise UserError(
                        f"{run_dir}: holds {name} ({path}), so --overwrite will not delete it; "
                        "choose another --out or output.dir"
                    )
            if not mine:
                raise UserError(
                    f"{run_dir}: not an ltrec run (no {MARKER}), so --overwrite will not delete it; "
                    "choose another --out or output.dir"
                )
            if run_dir.is_symlink():
                raise UserError(
                    f"{run_dir}: is a link, so --overwrite will not delete through it; choose another "
                    "--out or output.dir"
                )
            _empty(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not mine:
            held.enter_context(locked(run_dir))
    except OSError as exc:
        raise UserError(f"{run_dir}: cannot prepare the run directory ({exc.strerror or exc})") from None
    atomic_write(run_dir / MARKER, json.dumps({"format": RUN_FORMAT, "ltrec": __version__}) + "\n")


def _empty(run_dir: Path) -> None:
    """Delete everything in a run folder but its lock (deleting that would let a second trainer in). The
    marker goes last: a folder left half emptied by a crash is still a run, which --overwrite may empty."""
    for path in sorted(run_dir.iterdir(), key=lambda p: p.name == MARKER):
        if path.name == LOCK:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def open_for_resume(run_dir: Path, held: ExitStack) -> None:
    check_run(run_dir)
    held.enter_context(locked(run_dir))
    if not (run_dir / "last.pt").exists():
        raise UserError(f"{run_dir}: nothing to resume (no last.pt); start without --resume")
    remove_stale_temps(run_dir)  # a killed run's half-written temp files; the real files are whole


# -- reading the files back --------------------------------------------------------------------------------


class _File(BaseModel):
    model_config = ConfigDict(extra="allow")


class RunMarker(_File):
    format: int
    ltrec: str = "?"


Table = dict[str, dict[str, float]]  # slice → metric → value (and "users")


class DataInfo(_File):
    fingerprint: str
    head_threshold: int


class Epoch(_File):
    epoch: int
    seconds: float
    loss: float
    valid: Table

    @model_validator(mode="after")
    def _slices(self) -> Epoch:
        if not {"all", "head", "tail"} <= set(self.valid):
            raise ValueError("valid: expected the slices all, head and tail")
        return self


class Summary(_File):
    best_epoch: int
    epochs: int
    seconds_per_epoch: float
    valid: Table
    test: Table
    protocol: str


class Protocol(_File):
    protocol: str


def _problem(path: Path, exc: ValidationError) -> UserError:
    return problem(path, exc, "the file is damaged or not ltrec's (retrain the run, or restore the file)")


def read_json(path: Path, model: type[BaseModel]) -> Any:
    text = read_text(path, "run file")
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise _problem(path, exc) from None


def read_epochs(path: Path, note: Callable[[str], None] | None = None) -> list[dict]:
    """metrics.jsonl: one validated record per epoch, numbered 1, 2, … A torn last line (what a writer killed
    mid-line leaves; ltrec's own writes are atomic, but the file may come from elsewhere) is left out, with a
    note through `note` (standard error by default); damage anywhere else is an error."""
    if not path.exists():
        return []
    lines = read_bytes(path, "run file").splitlines()
    records = []
    for n, raw in enumerate(lines, start=1):
        try:
            records.append(Epoch.model_validate_json(raw.decode("utf-8")).model_dump())
        except (UnicodeDecodeError, ValidationError) as exc:
            torn = isinstance(exc, UnicodeDecodeError) or exc.errors()[0]["type"] == "json_invalid"
            if torn and n == len(lines):
                message = f"note: {path}: line {n} is incomplete (a write was cut short); it is left out"
                (note or (lambda text: print(text, file=sys.stderr)))(message)
                break
            what = (
                "not UTF-8 text"
                if isinstance(exc, UnicodeDecodeError)
                else _problem(path, exc).args[0].split(": ", 1)[1]
            )
            raise UserError(f"{path}: line {n}: {what}") from None
    if [r["epoch"] for r in records] != list(range(1, len(records) + 1)):
        raise UserError(f"{path}: epochs are not numbered 1, 2, …; the file is damaged (retrain the run)")
    return records


def append_epoch(path: Path, record: dict) -> None:
    """One line per epoch, written as a whole new file (small), so a crash never leaves a torn line."""
    old = read_bytes(path, "run file") if path.exists() else b""
    old = old[: old.rfind(b"\n") + 1]  # a torn last line (see read_epochs) is not continued
    atomic_write(path, old + (json.dumps(record) + "\n").encode())


def read_per_user(run: Path, split: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """users_{split}.csv sorted by user id: (users, slices, metric → values, training events)."""
    path = run / f"users_{split}.csv"
    if not path.exists():
        raise UserError(f"{path}: missing; run `ltrec eval {run} --split {split}` first")
    rerun = f"re-run `ltrec eval {run} --split {split}`"
    try:
        rows = list(csv.reader(io.StringIO(read_text(path, "run file"), newline="")))
    except csv.Error as exc:
        raise UserError(f"{path}: cannot read ({exc}); the file is damaged ({rerun})") from None
    if not rows or rows[0][:3] != ["user_id", "slice", "train_events"] or len(rows[0]) < 4:
        raise UserError(
            f"{path}: expected the header user_id,slice,train_events,<metrics>; the file is damaged ({rerun})"
        )
    if len(rows) == 1:  # every evaluation has users: a file without any was cut short or emptied
        raise UserError(f"{path}: a header and no user; the file is damaged ({rerun})")
    header, body = rows[0], rows[1:]
    values = np.empty((len(body), len(header) - 2))
    for n, r in enumerate(body):
        try:
            if len(r) != len(header) or r[1] not in SLICE_NAMES:
                raise ValueError
            values[n] = [float(x) for x in r[2:]]
        except ValueError:
            raise UserError(
                f"{path}: line {n + 2}: expected {len(header)} fields, a slice "
                f"({', '.join(SLICE_NAMES)}) and numbers; the file is damaged ({rerun})"
            ) from None
    users, slices = np.array([r[0] for r in body]), np.array([r[1] for r in body])
    order = np.argsort(users, kind="stable")
    metrics = {name: values[order, j] for j, name in enumerate(header[3:], start=1)}
    return users[order], slices[order], metrics, values[order, 0]


ENSEMBLE = "; ensemble of the model and "


def ensemble_note(kinds: list[str]) -> str:
    """What an ensemble adds to the protocol line: it changes the scores, not how they are ranked."""
    return f"{ENSEMBLE}{', '.join(kinds)}, weighted per history length, fitted on validation"


def protocol_of(run: Path, split: str) -> str:
    return read_json(run / f"users_{split}.json", Protocol).protocol


def ranking_protocol(protocol: str) -> str:
    """The protocol without the ensemble's note: an ensemble changes the scores, not how they are ranked, so
    a run compares with its ensemble (that is the question an ensemble answers)."""
    return protocol.split(ENSEMBLE)[0]
