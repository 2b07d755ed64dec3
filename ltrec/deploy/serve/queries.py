"""Request bodies → checked queries. Every mistake a client can make is a `BadRequest` with a one-line
message; nothing here trusts a size, a type or a nesting depth it has not checked."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ltrec.deploy.bundle import Bundle

MAX_BODY = 1 << 20  # bytes of one request body
MAX_HISTORY = 10_000  # events in one history
MAX_USERS = 1_000  # histories in one /recommend/batch body
KEYS = ("history", "k", "exclude_seen")


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Query:
    known: np.ndarray  # (n,) int64 item ids 1..N of the history's known items, oldest first
    unknown: int  # events skipped because the model does not know their item
    k: int
    exclude_seen: bool


def parse_json(body: bytes) -> dict:
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest("body: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
        raise BadRequest(f"body is not valid JSON ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(value, dict):
        raise BadRequest(f"body: expected a JSON object, got {_kind(value)}")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


class QueryReader:
    """Checks bodies against one bundle: its vocabulary, its K and its exclude_seen default."""

    def __init__(self, bundle: Bundle, max_users: int = MAX_USERS):
        self.index = {item: i + 1 for i, item in enumerate(bundle.meta.vocab)}
        self.k, self.exclude_seen, self.max_users = bundle.meta.k, bundle.meta.exclude_seen, max_users

    def one(self, body: bytes) -> Query:
        return self.query(parse_json(body), "")

    def batch(self, body: bytes) -> list[Query]:
        value = parse_json(body)
        _only_keys(value, ("users",), "")
        users = value.get("users")
        if not isinstance(users, list):
            raise BadRequest(f'users: expected a list of {{"history": [...]}} objects, got {_kind(users)}')
        if len(users) > self.max_users:
            raise BadRequest(
                f"users: {len(users):,} histories, over this server's limit of {self.max_users:,} "
                "per request; split the batch",
                413,
            )
        return [self.query(u, f"users[{j}].") for j, u in enumerate(users)]

    def query(self, value, where: str) -> Query:
        if not isinstance(value, dict):
            raise BadRequest(f"{where.rstrip('.') or 'body'}: expected an object with a history, got {_kind(value)}")
        _only_keys(value, KEYS, where)
        k = value.get("k", self.k)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.k:
            raise BadRequest(
                f"{where}k: expected an integer 1..{self.k} (this bundle computes the top {self.k} "
                f"inside its graph), got {k if _number(k) else _kind(k)}"
            )
        exclude_seen = value.get("exclude_seen", self.exclude_seen)
        if not isinstance(exclude_seen, bool):
            raise BadRequest(f"{where}exclude_seen: expected true or false, got {_kind(exclude_seen)}")
        ids = [self.index.get(item, 0) for item in _items(value.get("history"), f"{where}history")]
        known = np.fromiter((i for i in ids if i), np.int64)
        return Query(known, len(ids) - len(known), k, exclude_seen)


def _items(history, where: str) -> list[str]:
    """The history's item ids as text, oldest first: plain ids in the order given, or events ordered by
    time (ties keep their order, as training and `ltrec predict` read them)."""
    if not isinstance(history, list):
        raise BadRequest(
            f'{where}: expected a list of item ids or of {{"item": ..., "time": ...}} events, got {_kind(history)}'
        )
    if len(history) > MAX_HISTORY:
        raise BadRequest(
            f"{where}: {len(history):,} events, over the limit of {MAX_HISTORY:,}; send the most recent ones", 413
        )
    if not any(isinstance(e, dict) for e in history):
        return [_item_text(e, f"{where}[{j}]") for j, e in enumerate(history)]
    times, items = [], []
    for j, event in enumerate(history):
        missing = [key for key in ("item", "time") if key not in event] if isinstance(event, dict) else ["item"]
        if missing:
            raise BadRequest(
                f'{where}[{j}]: expected an event {{"item": ..., "time": ...}} like the others, '
                f"got {_kind(event)}" + (f" without {missing[0]}" if isinstance(event, dict) else "")
            )
        items.append(_item_text(event["item"], f"{where}[{j}].item"))
        times.append(event["time"])
    kinds = {str if isinstance(t, str) else float if _number(t) else None for t in times}
    if None in kinds or len(kinds) > 1:
        raise BadRequest(
            f"{where}: every time must be a number, or every time a string (e.g. ISO 8601), so that they can be ordered"
        )
    return [items[j] for j in sorted(range(len(times)), key=times.__getitem__)]


def _item_text(value, where: str) -> str:
    if isinstance(value, str):
        return value
    if _number(value):  # ids are text in the bundle, as `ltrec predict` reads them: 42 is "42"
        return str(value)
    raise BadRequest(f"{where}: expected an item id (a string or a number), got {_kind(value)}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _only_keys(value: dict, keys: tuple[str, ...], where: str) -> None:
    extra = [key for key in value if key not in keys]
    if extra:
        raise BadRequest(f"{where}{json.dumps(extra[0])[:50]}: unknown key (expected {', '.join(keys)})")


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
