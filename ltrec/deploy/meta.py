"""`bundle.json`, validated whenever it is read or written: export validates the file it writes with the
same model predict and serve read it with, and what `model.onnx` returns is checked against it at load and
on every call. numpy and pydantic only: predict and serve never load torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from ltrec.ensemble.records import FittedEnsemble
from ltrec.files.errors import UserError
from ltrec.files.records import Finite, Record, check_version, problem
from ltrec.files.runs import Summary

BUNDLE_FORMAT = 5  # bundle.json


class BundleColumns(Record):
    user: str
    item: str
    time: str


class Parity(Record):
    users: int = Field(ge=0)
    max_score_diff: Finite = Field(ge=0)  # max |onnx - torch| / max(1, |torch|)
    topk_agreement: Finite = Field(ge=0, le=1)  # share of identical top-K lists
    topk_overlap: Finite = Field(ge=0, le=1)  # share of torch's top-K items returned, in any order
    ndcg_torch: Finite = Field(ge=0, le=1)  # test NDCG@K of the parity users, predict's way, each side
    ndcg_onnx: Finite = Field(ge=0, le=1)


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class BundleMeta(Record):
    format_version: int
    model: Literal["model.onnx"]
    backbone: str
    run: str
    recipe_sha256: Sha256
    model_sha256: Sha256
    max_len: int = Field(ge=1, le=4096)
    pad_id: Literal[0]
    k: int = Field(ge=1)
    n_items: int = Field(ge=1)
    inputs: dict[str, str]
    outputs: dict[str, str]
    parity: Parity
    quantized: Literal["int8"] | None  # the item-table product's weights (ltrec/deploy/quantize.py)
    columns: BundleColumns
    exclude_seen: bool
    ensemble: FittedEnsemble | None  # in the graph; here for the record
    metrics: Summary | None  # as metrics.json: a slice without users has NaN metrics
    versions: dict[str, str | int]
    popularity: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]]  # training counts, item i + 1 at i
    vocab: list[Annotated[str, Field(min_length=1)]]  # original item ids, item i + 1 at i

    @model_validator(mode="before")
    @classmethod
    def _version_first(cls, value):
        return check_version(value, "format_version", BUNDLE_FORMAT, "no format_version")

    @model_validator(mode="after")
    def _sizes_agree(self) -> BundleMeta:
        if not len(self.vocab) == len(self.popularity) == self.n_items or self.k > self.n_items:
            raise ValueError(
                f"vocab ({len(self.vocab)}), popularity ({len(self.popularity)}), n_items "
                f"({self.n_items}) and k ({self.k}) do not agree"
            )
        if len(set(self.vocab)) != len(self.vocab):
            seen: set[str] = set()
            twice = next(v for v in self.vocab if v in seen or seen.add(v))
            raise ValueError(f"vocab holds {twice!r} twice; item ids must be distinct")
        return self


def read_meta(data: bytes | str, path: Path) -> BundleMeta:
    try:
        return BundleMeta.model_validate_json(data)
    except ValidationError as exc:
        raise problem(path, exc, "re-export the run with this ltrec (`ltrec export RUN`)") from None


def check_outputs(items, scores, rows: int, meta: BundleMeta, where: Path, probe: bool = False) -> None:
    """What the graph returned must be what bundle.py documents: int64 items and float32 scores, each (rows, K);
    wherever a score is finite, an item 1..N; no NaN or +inf score. On the probe batch (nothing excluded)
    every score is finite, best first, and no item comes twice."""
    shape = (rows, meta.k)
    bad = None
    if not (isinstance(items, np.ndarray) and isinstance(scores, np.ndarray)):
        bad = "outputs that are not tensors"
    elif items.dtype != np.int64 or scores.dtype != np.float32 or items.shape != shape or scores.shape != shape:
        bad = (
            f"items {items.dtype} {items.shape} and scores {scores.dtype} {scores.shape}, expected int64 and "
            f"float32 {shape}"
        )
    elif np.isnan(scores).any() or np.isposinf(scores).any() or (probe and not np.isfinite(scores).all()):
        bad = "non-finite scores"
    elif ((items < 1) | (items > meta.n_items))[np.isfinite(scores)].any():
        bad = f"item ids outside 1..{meta.n_items}"
    elif probe and ((np.diff(scores, axis=1) > 0).any() or (np.diff(np.sort(items, axis=1), axis=1) == 0).any()):
        bad = "items out of order or repeated"
    if bad:
        raise UserError(f"{where}: the graph returned {bad}; not a model written by `ltrec export` (re-export the run)")
