"""The recipe's `eval` section: the ranking protocol, cold users' adaptation, and the score blends fitted on
validation after training."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ltrec.recipe.base import Count, Strict


class Adapt(Strict):
    """Few-step adaptation of cold users: `steps` SGD steps on the user's own history before scoring."""

    steps: int = Field(3, ge=1, le=1000, description="SGD steps on each cold user's own history")
    lr: float = Field(1.0e-2, gt=0, description="SGD learning rate of the adaptation steps")
    params: Literal["encoder", "all"] = Field(
        "encoder", description="what each user adapts: the encoder (item table shared) or every parameter"
    )


class BucketBlend(Strict):
    """What every score blend shares: the history-length buckets, one weight each."""

    edges: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        [2, 3, 5, 8, 13, 21],
        min_length=1,
        description="history lengths (items the model sees) where a new bucket "
        "starts; the first bucket holds the histories shorter than the first edge",
    )

    @model_validator(mode="after")
    def _increasing(self) -> BucketBlend:
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"edges must increase (got {self.edges})")
        return self


class PopBlend(BucketBlend):
    """Scores plus w·log(1 + the item's training count), one weight w per history-length bucket, each chosen
    on the validation split from `weights`: a short history can lean on popularity, a long one on the model."""

    weights: list[Annotated[float, Field(ge=0, le=1000)]] = Field(
        [0.0, 0.03, 0.1, 0.3, 1.0, 3.0], min_length=1, description="candidate weights (0: the model alone)"
    )


class TransitionBlend(BucketBlend):
    """Scores plus w·log(1 + the transitions from the user's newest items to the item), one weight w per
    history-length bucket chosen on the validation split: a short history's next item is often a neighbour of
    its last one in other users' histories, a relation the model learns least from the tail."""

    weights: list[Annotated[float, Field(ge=0, le=1000)]] = Field(
        [0.0, 0.3, 1.0, 2.0, 4.0, 8.0], min_length=1, description="candidate weights (0: the model alone)"
    )
    window: int = Field(
        5,
        ge=1,
        le=50,
        description="two training events of one user at most this many apart "
        "count as a transition, weighted 1 / distance",
    )
    last: int = Field(
        5,
        ge=1,
        le=50,
        description="the user's newest items whose transitions are summed, the "
        "newest weighted 1, each older one half the next",
    )
    neighbours: int = Field(
        100,
        ge=1,
        le=10_000,
        description="transitions kept per item (the strongest); the exported graph stores items × neighbours of them",
    )
    directions: list[Literal["forward", "both"]] = Field(
        ["forward", "both"],
        min_length=1,
        description="candidates, chosen on validation: forward counts only "
        "a later event after an earlier one, both counts each pair both ways",
    )

    @model_validator(mode="after")
    def _once_each(self) -> TransitionBlend:
        if len(set(self.directions)) != len(self.directions):
            raise ValueError(f"directions: each candidate once (got {self.directions})")
        return self


class Eval(Strict):
    ks: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        [5, 10, 20], min_length=1, description="cut-offs of HR, NDCG and MRR"
    )
    mask_seen: bool = Field(True, description="exclude the user's history items from the ranking (as RecBole)")
    mode: Literal["full", "sampled"] = Field(
        "full",
        description="full: rank the target among all items; "
        "sampled: among `negatives` stored random items (for comparison "
        "with papers only)",
    )
    negatives: int = Field(100, ge=1, le=1_000_000, description="negatives per user in sampled mode")
    batch_size: Count = Field(1024, description="users scored at once")
    adapt: Adapt | None = Field(
        None,
        description="also rank cold users after a few SGD steps on their own "
        "history (slice cold-adapted); null = zero-shot only",
    )
    pop_blend: PopBlend | None = Field(
        None,
        description="blend scores with item popularity per history-length "
        "bucket, fitted on validation; in the exported graph too",
    )
    transition_blend: TransitionBlend | None = Field(
        None,
        description="blend scores with the item-to-item transitions of the user's newest items per "
        "history-length bucket, fitted on validation (after pop_blend); in the exported graph too",
    )
