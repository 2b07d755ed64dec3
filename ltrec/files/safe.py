"""Writing files without harming what is already there. Every file ltrec writes goes through here.

- A regular file (or a path where nothing is yet) is written to a temp file beside it, fsynced and renamed
  over it, so a crash leaves the old file or the new one, never half of one. A symbolic link keeps being a
  link: its target is replaced, not the link.
- Anything else at the path (a FIFO, /dev/null, /dev/stdout, a terminal) is opened and written to as a
  stream: renaming over it would swap a device for a regular file.
- `-` is standard output, for outputs that are tables or pages.
- An output may never be one of the command's inputs, nor lie inside an input folder (`refuse_inputs`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from pathlib import Path

from ltrec.files.errors import UserError

STDOUT = "-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _kind(path: Path) -> str:
    """'absent', 'file', 'dir' or 'special' (FIFO, device, socket), following symbolic links."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        raise UserError(f"{path}: cannot write here ({exc.strerror})") from None
    if stat.S_ISREG(mode):
        return "file"
    return "dir" if stat.S_ISDIR(mode) else "special"


def _target(path: Path) -> Path:
    """Where a rename must land: the file a symbolic link points to (the link itself stays)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextlib.contextmanager
def open_output(path: str | Path, what: str = "", binary: bool = False):
    """A file object for `path`, to be written in one go: atomic for regular files, streamed for devices and
    FIFOs, standard output for `-`. Nothing is left at `path` if the block fails."""
    where = f"{what}: {path}" if what else str(path)
    mode = "wb" if binary else "w"
    if str(path) == STDOUT:
        stream = sys.stdout.buffer if binary else sys.stdout
        yield stream
        stream.flush()
        return
    path = Path(path)
    kind = _kind(path)
    if kind == "dir":
        raise UserError(f"{where}: is a directory; give a file name")
    if kind == "special":
        try:
            with open(path, mode, **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
                yield f
        except OSError as exc:
            raise UserError(f"{where}: cannot write ({exc.strerror})") from None
        return
    target = _target(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except FileNotFoundError:
        raise UserError(f"{where}: the folder {target.parent} does not exist") from None
    except OSError as exc:
        raise UserError(f"{where}: cannot write here ({exc.strerror})") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs are as readable as any other
        with os.fdopen(fd, mode, **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise UserError(f"{where}: cannot write ({exc.strerror})") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, data: str | bytes, what: str = "") -> None:
    """Write `data` to `path` as a whole (see the module docstring for what each kind of path gets)."""
    with open_output(path, what, binary=True) as f:
        f.write(data.encode() if isinstance(data, str) else data)


# What ltrec parses is small: a recipe or plan is a few kB, a fitted ensemble or bundle.json at most a few MB
# (vocabulary and popularity of a 1M-item catalogue). A file past its limit is refused before it is read,
# so a hostile file cannot spend minutes and gigabytes in a parser. docs/reliability.md lists the limits.
MB = 1 << 20
LIMITS = {"recipe": 1 * MB, "plan": 1 * MB, "run file": 64 * MB, "bundle": 256 * MB, "fitted file": 256 * MB}


def read_bytes(path: Path, what: str = "file", limit: int | None = None) -> bytes:
    """A file's bytes, refused (one line naming it and the limit) when larger than `limit`, which defaults to
    the limit of the first LIMITS key found in `what`; a missing or unreadable file is a one-line error too."""
    if limit is None:
        limit = next((v for k, v in LIMITS.items() if k in what), 64 * MB)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected a {what}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise UserError(
            f"{path}: the {what} is larger than {limit // MB} MB, the most ltrec reads for one; is this the right file?"
        )
    return data


def read_text(path: Path, what: str = "file", limit: int | None = None) -> str:
    """A UTF-8 text file's content, size-limited as `read_bytes`; errors are one line naming the file."""
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc})") from None


def same_or_inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies below it, after resolving links (and the same file by inode)."""
    p, f = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    if p == f or f in p.parents:
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(path, folder)
    return False


def refuse_inputs(output: str | Path, inputs: dict[str, Path], flag: str) -> None:
    """An output may not be one of the inputs, or a file inside an input folder (a bundle, a run)."""
    if str(output) == STDOUT:
        return
    for name, path in inputs.items():
        if same_or_inside(Path(output), path):
            raise UserError(
                f"{flag} {output}: is {name} ({path}) or inside it; writing there would destroy "
                "the input: choose another path"
            )


def remove_stale_temps(folder: Path) -> list[str]:
    """Delete the temp files a killed process left behind (`.NAME.XXXX.tmp`); returns their names."""
    stale = sorted(p.name for p in Path(folder).glob(".*.tmp") if p.is_file() and not p.is_symlink())
    for name in stale:
        (Path(folder) / name).unlink(missing_ok=True)
    return stale
