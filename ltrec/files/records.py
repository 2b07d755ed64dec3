"""Validated records: the one way a JSON file ltrec wrote is read back (fitted ensembles, bundles). A file of
another format is refused before its fields are read, and the first problem is one line naming the file,
the key, the value and the fix. pydantic only, no torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from ltrec.files.errors import UserError

Finite = Annotated[float, Field(allow_inf_nan=False)]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def check_version(value, key: str, reads: int, legacy: str):
    """A file of another format is refused before its fields are read: they may mean something else."""
    if not isinstance(value, dict):
        return value
    found = value.get(key)
    if found is None:
        raise PydanticCustomError("ltrec_version", legacy)
    if found != reads:
        newer = isinstance(found, int) and found > reads
        age = "a newer" if newer else "an older" if isinstance(found, int) else "another"
        raise PydanticCustomError(
            "ltrec_version",
            "written by {age} ltrec (format {found}, this ltrec reads "
            "{reads})" + ("; upgrade ltrec or" if newer else ""),
            {"age": age, "found": json.dumps(found)[:40], "reads": reads},
        )
    return value


def problem(path: Path, exc: ValidationError, fix: str) -> UserError:
    """The first problem pydantic found, as one line: `path: key: what (got value); fix`."""
    err = exc.errors()[0]
    if err["type"] == "json_invalid":
        return UserError(f"{path}: not valid JSON ({err['msg'].removeprefix('Invalid JSON: ')}); {fix}")
    msg = " ".join(err["msg"].removeprefix("Value error, ").split())
    if err["type"] == "ltrec_version":
        return UserError(f"{path}: {msg} {fix}" if msg.endswith(" or") else f"{path}: {msg}; {fix}")
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    got = err.get("input")
    shown = f" (got {got!r:.40})" if isinstance(got, (int, float, str)) and not isinstance(got, bool) else ""
    return UserError(f"{path}: {key}: {msg}{shown}; {fix}")
