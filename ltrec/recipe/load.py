"""Loading a recipe: YAML → dict → `--set` overrides → `Recipe`, with every problem reported at once as
`file: dotted.key: message`."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ltrec.files.errors import UserError
from ltrec.files.safe import read_text
from ltrec.recipe.backbones import BACKBONE_KINDS
from ltrec.recipe.base import IDENTIFIER
from ltrec.recipe.components import ROBUST_KINDS
from ltrec.recipe.sections import Recipe


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader (plain data only, no Python objects), except that a key given twice in one
    mapping is an error: PyYAML would silently keep the last one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """Plain data from YAML text; raises ValueError("line N: invalid YAML: problem") on any bad input."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: !!python/... tags are errors
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{where}invalid YAML: {what}") from None
    except RecursionError:
        raise ValueError("invalid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a date like 2020-13-45 that PyYAML parses
        raise ValueError(f"invalid YAML: {str(exc)[:200]}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(IDENTIFIER.match(p) for p in parts):
        raise UserError(f"--set {text}: expected KEY=VALUE with a dotted key, e.g. --set train.epochs=5")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except ValueError as exc:
        raise UserError(f"--set {text}: the value is not valid YAML ({exc})") from None
    return parts, value


def apply_overrides(raw: dict, overrides: list[str], notes: list[str] | None = None) -> dict:
    """Set each `a.b=value`. Switching `backbone.kind` drops the file's backbone keys the new kind does not
    have (each named in `notes`): `--set backbone.kind=gru4rec` on a SASRec recipe must not fail on `heads`."""
    given = set()
    for text in overrides:
        parts, value = parse_override(text)
        given.add(tuple(parts))
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    head = raw.get("head")
    for key, other in (("count", "fraction"), ("fraction", "count")):  # one replaces the other
        if ("head", key) in given and ("head", other) not in given and isinstance(head, dict):
            head.pop(other, None)
    backbone = raw.get("backbone")
    if ("backbone", "kind") in given and isinstance(backbone, dict) and backbone.get("kind") in BACKBONE_KINDS:
        kind = backbone["kind"]
        fields = BACKBONE_KINDS[kind].model_fields
        dropped = [k for k in backbone if k not in fields and ("backbone", k) not in given]
        for key in dropped:
            del backbone[key]
        if dropped and notes is not None:
            notes.append(
                f"note: backbone.kind {kind}: the recipe's {', '.join(dropped)} "
                f"{'does' if len(dropped) == 1 else 'do'} not apply to {kind} and "
                f"{'is' if len(dropped) == 1 else 'are'} left out"
            )
    return raw


def read_yaml(path: Path, what: str = "recipe") -> dict:
    text = read_text(path, f"{what} file")
    try:
        raw = parse_yaml(text)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    if raw is None:
        raise UserError(f"{path}: the {what} is empty (start from `ltrec init`)")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a {what} must be a mapping of sections, got {type(raw).__name__}")
    return raw


UNIONS = {"backbone": BACKBONE_KINDS, "robust": ROBUST_KINDS}  # the sections picked by a `kind:` tag
TAGGED = {tag: model for kinds in UNIONS.values() for tag, model in kinds.items()}


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc`, to suggest close spellings of an unknown key."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list: the list's model stays
            continue
        field = model.model_fields.get(part)
        if field is None:
            if part in TAGGED:
                model = TAGGED[part]
                continue
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", (annotation,))
        args = [b for a in args for b in getattr(a, "__args__", (a,))]  # list[Model] → Model
        candidates = [a for a in args if isinstance(a, type)]
        models = [a for a in candidates if issubclass(a, BaseModel)]
        if not models:
            return None
        model = models[0]
    return model


def _message(err: dict, root: type[BaseModel] = Recipe) -> tuple[str, str]:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in TAGGED))
    # a key that is not a plain name (a line break, a quote) is quoted, so each problem stays one line
    dotted = ".".join(str(p) if isinstance(p, int) or IDENTIFIER.match(p) else repr(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(err["loc"], root)
        close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields) if model else [], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return dotted, f"unknown key{hint}"
    if kind == "missing":
        return dotted, "required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = list(UNIONS.get(str(loc[-1]) if loc else "", {}))
        what = "unknown kind" if kind == "union_tag_invalid" else "required key is missing"
        return dotted + ".kind", f"{what}; expected one of {', '.join(tags)}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc and re.match(r"^[a-z_.]+: ", msg):  # a check across sections names its own key
        return tuple(msg.split(": ", 1))
    value = err.get("input")
    if isinstance(value, (list, set, tuple)):  # never print a whole structure (YAML aliases can make it huge)
        msg += f" (got a {type(value).__name__})"
    elif not isinstance(value, dict) and "input" in err and repr(value)[:80] not in msg:
        text = repr(value)
        msg += f" (got {text if len(text) <= 80 else text[:77] + '...'})"
    return dotted, msg


def validate_dict(raw: dict, where: str, model: type[BaseModel] = Recipe) -> Any:
    """`model` from `raw`, or a UserError listing every problem as `where: dotted.key: message`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{where}: {key}: {msg}" for key, msg in (_message(e, model) for e in exc.errors())]
        raise UserError("\n".join(lines)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise UserError listing every problem found."""
    path = Path(path)
    notes: list[str] = []
    raw = apply_overrides(read_yaml(path), overrides or [], notes)
    recipe = validate_dict(raw, path.name if path.parent == Path(".") else str(path))
    return recipe.loaded_from(str(path), notes)


def recipe_schema() -> dict:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ltrec recipe"
    return schema


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe (every default filled in), as saved first in each run directory."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
