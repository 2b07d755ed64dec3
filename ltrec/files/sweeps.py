"""`sweep.json`, the state of a sweep folder, read back validated: by `ltrec sweep` (to resume and tabulate)
and by `ltrec report` (a sweep folder stands for its runs). A damaged file is one line naming it."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ltrec.files.errors import UserError
from ltrec.files.runs import RUN_FORMAT
from ltrec.files.safe import read_text

STATE = "sweep.json"


class _File(BaseModel):
    model_config = ConfigDict(extra="allow")


class RunState(_File):
    folder: str
    arm: str
    seed: int = Field(ge=0)
    status: str
    set: list[str] = []

    @field_validator("folder")
    @classmethod
    def _inside(cls, folder: str) -> str:
        # report and the table open these folders: they must be the sweep's own, below it
        parts = PurePosixPath(folder).parts
        if not parts or folder.startswith("/") or any(p in ("..", ".") for p in parts) or "\\" in folder:
            raise ValueError(f"{folder!r:.80} is not a folder of this sweep")
        return folder


class SweepState(_File):
    format: int = RUN_FORMAT
    plan: str
    recipe: str = ""
    baseline: str
    chosen: dict[str, list[str]] = {}
    grid: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    runs: list[RunState] = []


def read_state(folder: Path) -> SweepState | None:
    """The validated state of the sweep in `folder`, or None when `folder` holds no sweep."""
    path = folder / STATE
    if not path.is_file():
        return None
    text = read_text(path, "sweep state")
    try:
        return SweepState.model_validate_json(text)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            what = f"not valid JSON ({err['msg'].removeprefix('Invalid JSON: ')})"
        else:
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            what = f"{loc}: {err['msg'].removeprefix('Value error, ')}"
        raise UserError(
            f"{path}: {what}; the file is damaged (restore it, or run the sweep again into another --out)"
        ) from None
