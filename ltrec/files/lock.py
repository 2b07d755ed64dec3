"""One ltrec process per run folder (and per sweep folder): `FOLDER/.ltrec-lock`, held with `flock`.

Two trainers on one folder would interleave their epochs in one `metrics.jsonl` and overwrite each other's
checkpoints, losing both runs. The kernel releases a `flock` when its process ends, however it ends, so a
lock file left by a killed process never blocks anyone: only a live holder does. The file holds the
holder's pid, for the message of whoever is refused. A holder that ends normally deletes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

from ltrec.files.errors import UserError

try:
    import fcntl
except ImportError:  # not a POSIX system: no flock, so no lock (as before locking existed)
    fcntl = None

LOCK = ".ltrec-lock"


def _holder(fd: int) -> int | None:
    """The pid written in an open lock file; None while its holder has not written it yet."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return int(os.read(fd, 64).decode("ascii", "replace").strip())
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _refusal(folder: Path, fd: int, who: str, what: str) -> UserError:
    # a holder writes its pid just after taking the lock: a refused process may read the file before that
    # (empty, or the pid of a previous holder that has ended), so it looks again for a moment
    pid = _holder(fd)
    for _ in range(20):
        if pid is not None and _alive(pid):
            break
        time.sleep(0.05)
        pid = _holder(fd)
    other = f"another {who} (pid {pid})" if pid is not None else f"another {who}"
    return UserError(f"{folder}: {other} is using this {what}; wait for it or stop it")


def holder(folder: Path, who: str = "ltrec train", what: str = "run folder") -> UserError | None:
    """The refusal a process starting in `folder` would get now, or None when no live process holds it.
    Takes nothing: for a process about to start another (the sweep, before each run)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:  # no lock file, or none readable: nobody to wait for
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _refusal(folder, fd, who, what)
        return None
    finally:
        os.close(fd)
    return None


@contextlib.contextmanager
def locked(folder: Path, who: str = "ltrec train", what: str = "run folder"):
    """Hold `folder`'s lock for the block; a live holder already there is a one-line UserError."""
    if fcntl is None:
        yield
        return
    path = folder / LOCK
    fd = None
    while fd is None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"{path}: cannot write here ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                refusal = _refusal(folder, fd, who, what)
                os.close(fd)
                raise refusal from None
            # a file system without flock (some network mounts): run unlocked rather than not at all
            os.close(fd)
            yield
            return
        try:  # a holder that ended deletes the file: the one locked must still be the one at the path
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            fd = None
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None
        yield
    finally:
        with contextlib.suppress(OSError):  # deleted before it is released, so nobody locks a file going away
            os.unlink(path)
        os.close(fd)
