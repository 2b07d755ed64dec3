"""The base of every recipe section: strict types, unknown keys refused, numbers written `1e-3` accepted."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    # strict: `epochs: true` or `epochs: "3"` is an error, not 1 or 3; numbers must be finite
    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_from_strings(cls, value: Any) -> Any:
        """PyYAML reads `1e-3` (no dot) as a string: a number key takes it as the number it spells."""
        if isinstance(value, dict):
            numbers = {n for n, f in cls.model_fields.items() if f.annotation in (float, float | None)}
            value = {k: _as_number(v) if k in numbers else v for k, v in value.items()}
        return value


def _as_number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _column_name(name: str) -> str:
    if not IDENTIFIER.match(name):
        raise ValueError(
            f"{name!r} is not a plain column name (letters, digits, _; not starting with a digit); "
            "rename the column in the file or select it under another name with data.query"
        )
    return name


ColumnName = Annotated[str, AfterValidator(_column_name)]


# Upper bounds on sizes: a value past them passes as a number but cannot be allocated or run (dim 10⁹, 10⁶
# threads), so it is a recipe error, stated in the schema, rather than a crash minutes later.
Dim = Annotated[int, Field(ge=1, le=4096, description="width of embeddings and states")]
Layers = Annotated[int, Field(ge=1, le=64, description="stacked layers (blocks)")]
Heads = Annotated[int, Field(ge=1, le=64, description="attention heads; must divide dim")]
Count = Annotated[int, Field(ge=1, le=1_000_000)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
