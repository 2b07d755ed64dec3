"""Fetch MovieLens-100K at run time for the `ltrec init` example recipe.

The project must not ship the data, so it is downloaded once into a user cache and
checked against hard-coded sha256 digests. The default source is the recbole wheel on
PyPI (it bundles ml-100k and PyPI is reachable wherever `pip install` works); GroupLens,
the original publisher, is the alternative. Both convert to the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from ltrec.files.errors import UserError

SOURCES = ("pypi", "grouplens")

RECBOLE = "recbole==1.2.1"
RECBOLE_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
# sha256 of RECBOLE_MEMBER as extracted from recbole-1.2.1-py3-none-any.whl.
RECBOLE_MEMBER_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_MEMBER = "ml-100k/u.data"
# sha256 of ml-100k.zip (4924029 bytes) as pinned by tensorflow/datasets
# (url_checksums/movielens.txt); GroupLens itself only publishes an md5.
GROUPLENS_ZIP_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"

# sha256 of the converted CSV; whichever source it came from, it must end up as these bytes.
CSV_SHA256 = "ff8ecf3b80823ffa57f060334a671fde0df2a4c9d3760d1101e5e3ee19c1810c"
CSV_HEADER = ("user_id", "item_id", "rating", "timestamp")

_HINT = "to train on your own interactions instead, run `ltrec init --data my.csv`"


def default_cache_dir() -> Path:
    if os.environ.get("LTREC_CACHE_DIR"):
        return Path(os.environ["LTREC_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ltrec"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check(what: str, data: bytes, expected: str) -> None:
    got = _sha256(data)
    if got != expected:
        raise UserError(
            f"{what}: sha256 mismatch (got {got[:16]}…, expected {expected[:16]}…; "
            f"the download is corrupt or the source changed; {_HINT})"
        )


def _download_wheel(dest: Path, log) -> Path:
    """Let pip fetch the wheel: it already knows the user's index, proxy and certificates."""
    log(f"downloading {RECBOLE} wheel from PyPI (about 2.1 MB)…")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        RECBOLE,
        "-d",
        str(dest),
        "--disable-pip-version-check",
    ]
    try:
        # stdin closed so a private index cannot stall on a password prompt.
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
        err, ok = (proc.stderr or proc.stdout or "").strip(), proc.returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        err, ok = str(e), False
    wheels = sorted(dest.glob("recbole-1.2.1-*.whl"))
    if not ok or not wheels:
        tail = "\n  ".join(err.splitlines()[-3:]) or "(no output)"
        raise UserError(f"pip download {RECBOLE} failed (needed for the MovieLens-100K example):\n  {tail}\n{_HINT}")
    return wheels[0]


def _rows_from_pypi(tmp: Path, log) -> list[list[str]]:
    wheel = _download_wheel(tmp, log)
    try:
        raw = zipfile.ZipFile(wheel).read(RECBOLE_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{wheel.name}: cannot read {RECBOLE_MEMBER} ({e}; {_HINT})") from None
    _check(f"{wheel.name}:{RECBOLE_MEMBER}", raw, RECBOLE_MEMBER_SHA256)
    return [line.split("\t") for line in raw.decode("ascii").splitlines()[1:]]  # drop typed header


def _rows_from_grouplens(tmp: Path, log) -> list[list[str]]:
    log(f"downloading {GROUPLENS_URL} (about 4.9 MB)…")
    try:
        with urllib.request.urlopen(GROUPLENS_URL, timeout=60) as resp:
            blob = resp.read()
    except OSError as e:  # URLError, HTTPError and socket timeouts are all OSErrors
        raise UserError(f"{GROUPLENS_URL}: download failed ({e}; {_HINT})") from None
    _check(GROUPLENS_URL, blob, GROUPLENS_ZIP_SHA256)
    raw = zipfile.ZipFile(io.BytesIO(blob)).read(GROUPLENS_MEMBER)
    return [line.split("\t") for line in raw.decode("ascii").splitlines()]  # u.data has no header


def _to_csv(rows: list[list[str]]) -> bytes:
    # csv's default "\r\n" line ending is kept on purpose: it is what CSV_SHA256 pins.
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    try:
        writer.writerows([int(v) for v in row] for row in rows)  # e.g. 196,242,3,881250949
    except ValueError as e:
        raise UserError(f"MovieLens-100K: unexpected value in the source file ({e}; {_HINT})") from None
    return out.getvalue().encode("ascii")


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file + os.replace, so an interrupted fetch never leaves a half-written CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_movielens_100k(source: str = "pypi", cache_dir: Path | None = None, log=print) -> Path:
    """Return the path of the cached MovieLens-100K CSV (user_id,item_id,rating,timestamp), fetching it if needed."""
    if source not in SOURCES:
        raise UserError(f"example source {source!r}: unknown (expected one of {', '.join(SOURCES)})")
    path = Path(cache_dir or default_cache_dir()) / "movielens-100k" / "interactions.csv"
    if path.is_file():
        if _sha256(path.read_bytes()) == CSV_SHA256:
            return path
        log(f"{path}: cached copy is corrupt, fetching it again…")
    with tempfile.TemporaryDirectory(prefix="ltrec-ml100k-") as tmp:
        reader = _rows_from_pypi if source == "pypi" else _rows_from_grouplens
        data = _to_csv(reader(Path(tmp), log))
    _check("MovieLens-100K converted CSV", data, CSV_SHA256)
    try:
        _write_atomic(path, data)
    except OSError as e:
        raise UserError(f"{path}: cannot write the cache ({e}; set LTREC_CACHE_DIR to a writable folder)") from None
    log(f"MovieLens-100K ready: {path} (100000 interactions)")
    return path
