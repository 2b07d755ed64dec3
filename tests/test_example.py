"""Tests for ltrec.data.example: fetching MovieLens-100K into a user cache.

Network is touched twice at most (one real end-to-end fetch, one wheel download shared by
the other tests); every test writes only under pytest's tmp dirs.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import types
import zipfile
from pathlib import Path

import pytest

from ltrec.data import example
from ltrec.files.errors import UserError

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k" / "interactions.csv"


def _no_network(msg: str) -> bool:
    return "pip download" in msg and "failed" in msg


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Never let a test fall back on the real ~/.cache.
    monkeypatch.setenv("LTREC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The recbole wheel, downloaded once for the tests that should not hit the network."""
    try:
        return example._download_wheel(tmp_path_factory.mktemp("wheel"), log=lambda m: None)
    except UserError as e:
        if _no_network(str(e)):
            pytest.skip(f"pip cannot download {example.RECBOLE} here: {e}")
        raise


def _refuse(*args, **kwargs):
    raise AssertionError("subprocess.run called although the cache should have been used")


def test_real_fetch_then_cache(tmp_path, monkeypatch):
    logs: list[str] = []
    try:
        path = example.fetch_movielens_100k(log=logs.append)
    except UserError as e:
        if _no_network(str(e)):
            pytest.skip(f"no network for pip: {e}")
        raise
    assert path == tmp_path / "cache" / "movielens-100k" / "interactions.csv"
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == example.CSV_SHA256
    lines = data.decode().splitlines()
    assert lines[0] == "user_id,item_id,rating,timestamp"
    assert lines[1] == "196,242,3,881250949"
    assert len(lines) == 1 + 100_000
    assert any("recbole==1.2.1" in m for m in logs)
    assert [p.name for p in path.parent.iterdir()] == ["interactions.csv"]  # no leftover temp files

    monkeypatch.setattr(example.subprocess, "run", _refuse)
    assert example.fetch_movielens_100k(log=logs.append) == path


def test_corrupt_cache_is_refetched(tmp_path, monkeypatch, wheel):
    path = tmp_path / "cache" / "movielens-100k" / "interactions.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"user_id,item_id,rating,timestamp\r\n1,2,3,4\r\n")  # truncated / wrong
    calls = []
    monkeypatch.setattr(example, "_download_wheel", lambda dest, log: calls.append(dest) or wheel)
    logs: list[str] = []
    assert example.fetch_movielens_100k(log=logs.append) == path
    assert len(calls) == 1
    assert any("corrupt" in m for m in logs)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == example.CSV_SHA256


@pytest.mark.skipif(not SHARED_CSV.is_file(), reason=f"{SHARED_CSV} not present")
def test_conversion_matches_shared_reference(wheel):
    raw = zipfile.ZipFile(wheel).read(example.RECBOLE_MEMBER)
    assert hashlib.sha256(raw).hexdigest() == example.RECBOLE_MEMBER_SHA256
    rows = [line.split("\t") for line in raw.decode().splitlines()[1:]]
    assert example._to_csv(rows) == SHARED_CSV.read_bytes()
    assert hashlib.sha256(SHARED_CSV.read_bytes()).hexdigest() == example.CSV_SHA256


def test_grouplens_path_offline(tmp_path, monkeypatch, wheel):
    # Rebuild u.data (no header, tab-separated) from the wheel's copy and serve it as the zip.
    inter = zipfile.ZipFile(wheel).read(example.RECBOLE_MEMBER)
    u_data = b"".join(line + b"\n" for line in inter.splitlines()[1:])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(example.GROUPLENS_MEMBER, u_data)
    blob = buf.getvalue()

    class Resp(io.BytesIO):
        def __enter__(self):
            return self

    seen = {}

    def fake_urlopen(url, timeout):
        seen.update(url=url, timeout=timeout)
        return Resp(blob)

    monkeypatch.setattr(example.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(UserError, match="sha256 mismatch"):  # our zip is not GroupLens's zip
        example.fetch_movielens_100k("grouplens", log=lambda m: None)
    monkeypatch.setattr(example, "GROUPLENS_ZIP_SHA256", hashlib.sha256(blob).hexdigest())
    path = example.fetch_movielens_100k("grouplens", log=lambda m: None)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == example.CSV_SHA256
    assert seen == {"url": example.GROUPLENS_URL, "timeout": 60}


def test_pip_failure_is_user_error(monkeypatch):
    def failing_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "recbole==1.2.1" in cmd
        return types.SimpleNamespace(
            returncode=1, stdout="", stderr="Looking in indexes...\nERROR: No matching distribution"
        )

    monkeypatch.setattr(example.subprocess, "run", failing_run)
    with pytest.raises(UserError) as info:
        example.fetch_movielens_100k(log=lambda m: None)
    msg = str(info.value)
    assert "--data" in msg and "No matching distribution" in msg
    assert not (Path(example.default_cache_dir()) / "movielens-100k").exists()


def test_pip_missing_or_hanging_is_user_error(monkeypatch):
    def hanging_run(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))

    monkeypatch.setattr(example.subprocess, "run", hanging_run)
    with pytest.raises(UserError, match="--data"):
        example.fetch_movielens_100k(log=lambda m: None)


def test_unknown_source():
    with pytest.raises(UserError, match="unknown"):
        example.fetch_movielens_100k("kaggle")
    assert example.SOURCES == ("pypi", "grouplens")


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("LTREC_CACHE_DIR", str(tmp_path / "a"))
    assert example.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("LTREC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert example.default_cache_dir() == tmp_path / "xdg" / "ltrec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert example.default_cache_dir() == tmp_path / "home" / ".cache" / "ltrec"
