"""Run directories and atomic writes: a crash never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"{path}: cannot write here ({exc.strerror})") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs should be as readable as any other
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: Path, record: dict) -> None:
    """One line per record, written as a whole new file (one line per epoch: small), so a crash leaves the
    old file or the new one, never a torn line."""
    old = path.read_bytes() if path.exists() else b""
    atomic_write(path, old + (json.dumps(record) + "\n").encode())


def remove_stale_temps(folder: Path) -> list[str]:
    """Delete the temp files a killed process left behind (atomic_write's `.NAME.XXXX.tmp`); returns their names."""
    stale = sorted(p.name for p in Path(folder).glob(".*.tmp") if p.is_file())
    for name in stale:
        (Path(folder) / name).unlink(missing_ok=True)
    return stale


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def find_run(run_dir: str | None) -> Path:
    """The given run directory, or the most recently modified one under ./runs."""
    if run_dir is None:
        candidates = sorted(Path("runs").glob("*/recipe.yaml"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise UserError("no run directory given and none found under ./runs; pass RUN_DIR")
        return candidates[-1].parent
    path = Path(run_dir)
    if not (path / "recipe.yaml").is_file():
        raise UserError(f"{path}: not a run directory (no recipe.yaml); pass the folder `ltrec train` wrote")
    return path
