"""Property tests (hypothesis): the recipe loader, --set parsing and predict's events reader, fed random bytes
and structured garbage, only ever return a result or raise the documented UserError.

Derandomized, so CI sees the same examples every run; LTREC_FUZZ_EXAMPLES=5000 pytest tests/test_reliability_fuzz.py
explores more (and randomly).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ltrec.deploy.predict import Histories, read_histories
from ltrec.files.errors import UserError
from ltrec.recipe import Recipe, apply_overrides, load_recipe, parse_override, validate_dict

EXPLORE = int(os.environ.get("LTREC_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int):
    return settings(
        max_examples=EXPLORE or examples,
        derandomize=not EXPLORE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


KEYS = [
    "name",
    "seed",
    "data",
    "source",
    "format",
    "query",
    "columns",
    "user",
    "item",
    "time",
    "min_user_events",
    "max_len",
    "split",
    "short_users",
    "cold_users",
    "head",
    "fraction",
    "count",
    "backbone",
    "kind",
    "dim",
    "layers",
    "heads",
    "dropout",
    "transfer",
    "grad_align",
    "k",
    "beta",
    "adversarial",
    "weight",
    "train",
    "epochs",
    "lr",
    "monitor",
    "metric",
    "eval",
    "ks",
    "mask_seen",
    "mode",
    "output",
    "dir",
    "dimm",
    "x",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["sasrec", "gru4rec", "pop", "ndcg@10", "events.csv", "1e-3", "", "*.csv", "all"])
    | st.text(max_size=20)
)
GARBAGE = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
YAMLISH = st.text(
    alphabet=st.sampled_from(list("abcdekmnrst01239.-_:,[]{}!&*#|>'\"\n \t@%`?<=~\\") + ["\x00", "é"]), max_size=300
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def loads_or_user_error(folder: Path, text: bytes) -> None:
    path = folder / "recipe.yaml"
    path.write_bytes(text)
    try:
        assert isinstance(load_recipe(path), Recipe)
    except UserError as exc:
        lines = str(exc).splitlines()
        assert lines and all(line.startswith(f"{path}: ") for line in lines), lines


@fuzz(150)
@given(st.binary(max_size=2000))
def test_recipe_loader_random_bytes(folder, data):
    loads_or_user_error(folder, data)


@fuzz(200)
@given(YAMLISH)
def test_recipe_loader_yaml_like_text(folder, text):
    loads_or_user_error(folder, text.encode("utf-8", "surrogatepass"))


@fuzz(100)
@given(st.dictionaries(st.sampled_from(KEYS), GARBAGE, max_size=8))
@example({"eval": {"ks": [5, "x"]}, "split": {"\r": None}})  # list positions and odd keys in error locations
def test_recipe_loader_structured_garbage(folder, raw):
    loads_or_user_error(folder, yaml.safe_dump(raw, allow_unicode=True).encode("utf-8", "surrogatepass"))


BASE = {"name": "t", "data": {"source": "events.csv"}, "backbone": {"kind": "sasrec"}}
DOTTED = st.lists(st.sampled_from(KEYS), min_size=1, max_size=3).map(".".join)


@fuzz(200)
@given(st.text(max_size=80) | st.tuples(DOTTED, YAMLISH).map("=".join))
def test_set_parsing(text):
    try:
        parts, value = parse_override(text)
    except UserError as exc:
        assert str(exc).startswith(f"--set {text}: ")
        return
    assert parts and all(parts)
    try:
        validate_dict(apply_overrides(yaml.safe_load(yaml.safe_dump(BASE)), [text]), "r.yaml")
    except UserError as exc:
        assert all(line.startswith("r.yaml: ") for line in str(exc).splitlines())


VOCAB = np.array(["i1", "i2", "i3", "x,y"], dtype=object)
COLUMNS = {"user": "user_id", "item": "item_id", "time": "timestamp"}


def reads_or_user_error(folder: Path, data: bytes, name: str = "events.csv") -> None:
    path = folder / name
    path.write_bytes(data)
    try:
        h = read_histories(path, COLUMNS, VOCAB)
    except UserError as exc:
        assert str(exc).startswith(("--input: ", "--user-col", "--item-col", "--time-col")), str(exc)
        assert "\n" not in str(exc)
        return
    assert isinstance(h, Histories) and len(h.offsets) == len(h.users) + 1
    assert ((h.items >= 1) & (h.items <= len(VOCAB))).all()  # only known items, as 1..N
    assert h.offsets[-1] == len(h.items) and (np.diff(h.offsets) >= 0).all()


@fuzz(25)
@given(st.binary(max_size=1500))
def test_predict_reader_random_bytes(folder, data):
    reads_or_user_error(folder, data)


FIELD = (
    st.sampled_from(["i1", "i2", "i3", "x,y", "", " ", "nan", "inf", "-1", "1e308", "NULL", '"', "a\nb"])
    | st.integers(-10, 10).map(str)
    | st.floats().map(repr)
    | st.text(max_size=6)
)
HEADERS = st.sampled_from(
    [
        ["user_id", "item_id", "timestamp"],
        ["user_id", "item_id"],
        ["timestamp", "user_id", "item_id", "extra"],
        ["user_id", "item_id", "timestamp", "rowid"],
    ]
)


@fuzz(25)
@given(HEADERS, st.lists(st.lists(FIELD, min_size=1, max_size=5), max_size=12), st.booleans())
def test_predict_reader_structured_csv(folder, header, rows, crlf):
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n" if crlf else "\n").writerows([header, *rows])
    reads_or_user_error(folder, out.getvalue().encode("utf-8", "surrogatepass"))


def test_floats_in_recipes_are_finite():
    """What the property tests rely on for numbers: NaN and infinity never reach a Recipe."""
    for value in (math.nan, math.inf, "nan", "-inf"):
        try:
            validate_dict({**BASE, "train": {"lr": value}}, "r.yaml")
        except UserError as exc:
            assert "train.lr: Input should be a finite number" in str(exc)
        else:
            raise AssertionError(value)
