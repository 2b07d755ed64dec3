"""The recipe's `eval` section: the ranking protocol, cold users' adaptation, and the ensemble fitted on
validation after training."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ltrec.recipe.backbones import EASEConfig, PopConfig, TransitionsConfig
from ltrec.recipe.base import Count, Strict


class Adapt(Strict):
    """Few-step adaptation of cold users: `steps` SGD steps on the user's own history before scoring."""

    steps: int = Field(3, ge=1, le=1000, description="SGD steps on each cold user's own history")
    lr: float = Field(1.0e-2, gt=0, description="SGD learning rate of the adaptation steps")
    params: Literal["encoder", "all"] = Field(
        "encoder", description="what each user adapts: the encoder (item table shared) or every parameter"
    )


class RunConfig(Strict):
    """Another finished run's model: its best checkpoint, scored alone (not with that run's own ensemble)."""

    kind: Literal["run"] = Field(description="selects this member")
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="the run's folder, relative to the current directory; trained on this run's data, split and "
        "head settings (its data.json fingerprint must match)",
    )


Member = Annotated[PopConfig | TransitionsConfig | EASEConfig | RunConfig, Field(discriminator="kind")]


class Ensemble(Strict):
    """The run's model plus item-to-item members fitted on the training split, each one's scores standardised
    per user (mean 0, sd 1 over the catalogue) and summed with one weight per member and history-length bucket.
    The weights are chosen on validation by coordinate ascent over `weights`, the model's included (starting
    from the model alone): a short history can lean on popularity or transitions, a long one on the model."""

    members: list[Member] = Field(
        [{"kind": "pop"}, {"kind": "transitions"}],
        min_length=1,
        description="what is added to the model's scores: pop, transitions and ease, each with its backbone keys "
        "(see backbone), fitted on the run's training split, each kind at most once; and other finished runs "
        "({kind: run, path: runs/x}), each path at most once",
    )
    edges: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        [2, 3, 5, 8, 13, 21],
        min_length=1,
        description="history lengths (items the model sees) where a new bucket "
        "starts; the first bucket holds the histories shorter than the first edge",
    )
    weights: list[Annotated[float, Field(ge=0, le=1000)]] = Field(
        [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
        min_length=2,
        description="candidate weights of each member and of the model (0: left out); 0 and 1 are always tried",
    )
    rounds: int = Field(
        2, ge=1, le=10, description="coordinate-ascent passes over the model and the members (fewer once none moves)"
    )

    @model_validator(mode="after")
    def _well_formed(self) -> Ensemble:
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"edges must increase (got {self.edges})")
        kinds = [m.kind for m in self.members if m.kind != "run"]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"members: each kind at most once (got {kinds})")
        paths = [m.path for m in self.members if isinstance(m, RunConfig)]
        if len(set(paths)) != len(paths):
            raise ValueError(f"members: each run at most once (got {paths})")
        if len(set(self.weights)) != len(self.weights):
            raise ValueError(f"weights: each candidate once (got {self.weights})")
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
    ensemble: Ensemble | None = Field(
        None,
        description="add popularity, transitions, EASE and other runs' models to the model's scores per "
        "history-length bucket, weights fitted on validation; in the exported graph too",
    )

    @model_validator(mode="before")
    @classmethod
    def _blends_are_members_now(cls, value):
        for old, kind in (("pop_blend", "pop"), ("transition_blend", "transitions")):
            if isinstance(value, dict) and old in value:
                raise ValueError(
                    f"{old}: the blends are members of eval.ensemble now; write "
                    f"ensemble: {{members: [{{kind: {kind}}}]}} (docs/method.md)"
                )
        return value
