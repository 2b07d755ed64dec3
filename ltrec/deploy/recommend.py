"""A bundle from Python: top-K items for histories held in memory, as `ltrec predict` gives them for a file
(the model for a user with a known item, popularity otherwise; seen items excluded by the bundle's default).
onnxruntime and numpy only: torch is never imported."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltrec.deploy.bundle import PREDICT_BATCH, length_batches, load_bundle
from ltrec.deploy.predict import Histories, model_top_k, popular_items
from ltrec.files.errors import UserError, optional


@dataclass(frozen=True)
class Recommendations:
    users: list[str]
    items: list[list[str]]  # per user, best first
    scores: list[list[float]]
    source: list[str]  # per user: "model", or "popularity" for a user with no known item
    unknown: int  # history items the bundle does not know, skipped

    def to_dict(self) -> dict[str, list[str]]:
        return dict(zip(self.users, self.items))

    def to_pandas(self):
        """One row per (user, rank), as `ltrec predict` writes: user_id, rank, item_id, score, source."""
        rows = [
            (u, r + 1, item, score, src)
            for u, items, scores, src in zip(self.users, self.items, self.scores, self.source)
            for r, (item, score) in enumerate(zip(items, scores))
        ]
        return optional("pandas", "pandas").DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "source"])


class Bundle:
    """An exported bundle (model.onnx + bundle.json), validated as `predict` and `serve` validate it."""

    def __init__(self, path: Path, threads: int = 0):
        self._bundle = load_bundle(Path(path), threads)
        self._index = {item: i + 1 for i, item in enumerate(self._bundle.vocab.tolist())}

    @classmethod
    def open(cls, path: str | Path, threads: int = 0) -> Bundle:
        return cls(Path(path), threads)

    @property
    def path(self) -> Path:
        return self._bundle.path

    @property
    def k(self) -> int:
        return self._bundle.meta.k

    @property
    def meta(self) -> dict:
        """bundle.json, validated: backbone, max_len, parity, the fitted ensemble, metrics, versions..."""
        return self._bundle.meta.model_dump()

    def recommend(
        self,
        histories: Mapping[str, Sequence[str]] | Sequence[Sequence[str]],
        k: int | None = None,
        exclude_seen: bool | None = None,
        batch_size: int = PREDICT_BATCH,
    ) -> Recommendations:
        """Top-`k` item ids per history (oldest item first; a list of histories is keyed "0", "1", ...)."""
        meta = self._bundle.meta
        k = meta.k if k is None else k
        if not 1 <= k <= meta.k:
            raise UserError(f"k {k}: this bundle computes the top {meta.k}; re-export with a larger --k")
        exclude_seen = meta.exclude_seen if exclude_seen is None else exclude_seen
        named = histories if isinstance(histories, Mapping) else {str(j): h for j, h in enumerate(histories)}
        if any(isinstance(h, (str, bytes)) for h in named.values()):
            raise UserError("histories: each history is a list of item ids, not one string")
        users = [str(u) for u in named]
        known = [[self._index[str(i)] for i in h if str(i) in self._index] for h in named.values()]
        unknown = sum(len(h) for h in named.values()) - sum(len(h) for h in known)
        lengths = np.array([len(h) for h in known], dtype=np.int64)
        h = Histories(
            np.arange(len(users)),
            np.array([i for row in known for i in row], dtype=np.int64),
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        )
        popular, share = popular_items(meta.popularity, k)
        items = np.broadcast_to(popular, (len(users), k)).copy()
        scores = np.broadcast_to(share, (len(users), k)).copy()
        run = np.flatnonzero(lengths > 0)
        for batch in length_batches(lengths[run], batch_size):
            who = run[batch]
            got_items, got_scores = model_top_k(self._bundle, h, who, np.full(len(who), exclude_seen))
            items[who], scores[who] = got_items[:, :k], got_scores[:, :k]
        keep = np.isfinite(scores)  # -inf: fewer than k items were left after excluding the history
        vocab = self._bundle.vocab
        return Recommendations(
            users,
            [vocab[row[ok] - 1].tolist() for row, ok in zip(items, keep)],
            [row[ok].astype(float).tolist() for row, ok in zip(scores, keep)],
            ["model" if n else "popularity" for n in lengths],
            unknown,
        )
