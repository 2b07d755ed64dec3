"""The recipe's backbone section: one config per `kind` (a discriminated union); the keys are the model
constructors' arguments."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ltrec.recipe.base import Dim, Heads, Layers, Strict


class _Recurrent(Strict):
    dim: Dim = 64
    layers: Layers = 1


class _Transformer(Strict):
    dim: Dim = 64
    layers: Layers = 2
    heads: Heads = 2
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout probability")

    @model_validator(mode="after")
    def _heads_divide_dim(self):
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        return self


class GRU4RecConfig(_Recurrent):
    """GRU4Rec: a bias-free GRU over the item embeddings."""

    kind: Literal["gru4rec"] = Field(description="selects this backbone")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout probability")


class NARMConfig(_Recurrent):
    """NARM: a GRU (global encoder) plus attention over its outputs (local encoder), bilinear decoder."""

    kind: Literal["narm"] = Field(description="selects this backbone")
    dropout: float = Field(0.25, ge=0, lt=1, description="dropout probability")


class SASRecConfig(_Transformer):
    """SASRec: a causal transformer."""

    kind: Literal["sasrec"] = Field(description="selects this backbone")
    input_norm: bool = Field(
        True,
        description="LayerNorm on item + position embedding before the first block, position embeddings "
        "initialised small; false: the original SASRec's input (item + position, no LayerNorm)",
    )
    item_scale: bool = Field(
        True,
        description="multiply the item embedding by sqrt(dim) before adding the position embedding (the "
        "SASRec paper's scaling); false: add them unscaled, which weighs order more",
    )
    positions: Literal["newest", "relative"] = Field(
        "newest",
        description="newest: a position embedding counted from the newest item; relative: none, each "
        "head adds a learned bias of the distance between query and key to its attention scores, so a short "
        "history is encoded exactly as the same items at the start of a long one",
    )


class BERT4RecConfig(_Transformer):
    """BERT4Rec: a bidirectional transformer trained on masked items (cloze); train.loss applies at the
    masked positions."""

    kind: Literal["bert4rec"] = Field(description="selects this backbone")
    mask_prob: float = Field(0.2, gt=0, le=1, description="chance that each item of a training window is masked")
    last_only: float = Field(
        0.1,
        ge=0,
        le=1,
        description="share of windows in which only the newest item is masked (what inference looks like)",
    )


class CaserConfig(Strict):
    """Caser: horizontal (heights 1..window) and vertical convolutions over the last `window` items."""

    kind: Literal["caser"] = Field(description="selects this backbone")
    dim: Dim = 64
    window: int = Field(5, ge=1, le=64, description="how many of the newest items the convolutions see (L')")
    n_h: int = Field(16, ge=1, le=1024, description="horizontal filters per height h = 1..window")
    n_v: int = Field(4, ge=1, le=1024, description="vertical filters")
    dropout: float = Field(0.4, ge=0, lt=1, description="dropout probability")


class PopConfig(Strict):
    """Popularity: every user gets the items ranked by training events."""

    kind: Literal["pop"] = Field(description="selects this backbone")


class TransitionsConfig(Strict):
    """Transitions: log(1 + Σ_j 2^-j·T[h_j, i]), T[a, i] how often item i followed item a within `window`
    events in the training histories (weighted 1 / distance), summed over the user's `last` newest items."""

    kind: Literal["transitions"] = Field(description="selects this backbone")
    window: int = Field(5, ge=1, le=50, description="events at most this far apart count, weighted 1 / distance")
    last: int = Field(5, ge=1, le=50, description="newest items summed, the newest weighted 1, each older half")
    direction: Literal["forward", "both"] = Field(
        "both", description="forward: a later event after an earlier one; both: each pair both ways"
    )
    neighbours: int = Field(100, ge=1, le=10_000, description="transitions kept per item (the strongest)")


class EASEConfig(Strict):
    """EASE (Steck 2019): the closed-form linear item-to-item model over the training users' item sets."""

    kind: Literal["ease"] = Field(description="selects this backbone")
    l2: float = Field(500.0, gt=0, le=1e9, description="λ, the L2 penalty on the item-to-item weights")
    neighbours: int = Field(
        200, ge=1, le=10_000, description="weights kept per item (largest magnitude); scored and exported"
    )
    max_items: int = Field(
        25_000,
        ge=1,
        le=200_000,
        description="the largest catalogue accepted: the solve holds two items² float32 matrices "
        "(25,000 items: 4.7 GB)",
    )


Backbone = Annotated[
    GRU4RecConfig
    | SASRecConfig
    | PopConfig
    | CaserConfig
    | NARMConfig
    | BERT4RecConfig
    | TransitionsConfig
    | EASEConfig,
    Field(discriminator="kind"),
]
BACKBONE_KINDS = {
    "gru4rec": GRU4RecConfig,
    "sasrec": SASRecConfig,
    "pop": PopConfig,
    "caser": CaserConfig,
    "narm": NARMConfig,
    "bert4rec": BERT4RecConfig,
    "transitions": TransitionsConfig,
    "ease": EASEConfig,
}
# fitted in closed form, without the training loop that the transfer components change
FITTED_KINDS = ("pop", "transitions", "ease")
