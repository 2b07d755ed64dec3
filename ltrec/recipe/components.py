"""The recipe's transfer section: the optional components that act on training (`null` = off)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ltrec.recipe.base import Count, Strict


class GradAlign(Strict):
    """Reptile/MER-style gradient alignment: k inner steps on different users, then θ ← θ₀ + β(θ_k − θ₀)."""

    k: int = Field(5, ge=1, le=1000, description="inner steps per outer step")
    inner_lr: float = Field(2.0e-3, gt=0, description="α, the inner step size (α·β is the effective step)")
    beta: float = Field(0.5, gt=0, le=1, description="β, the outer step")
    inner_optimizer: Literal["sgd", "adam"] = Field("adam", description="the inner steps' optimiser (sgd: the paper's)")
    outer: Literal["interpolate", "adam"] = Field(
        "interpolate", description="θ₀ + β(θ_k − θ₀), or Adam on the pseudo-gradient θ₀ − θ_k"
    )
    users_per_step: Count = Field(
        64,
        description="with sampling permuted / uniform / events / balanced, the "
        "users of one inner step; 1 is the paper's faithful mode",
    )
    sampling: Literal["windows", "permuted", "uniform", "events", "balanced"] = Field(
        "windows",
        description="windows: every training window once per epoch, as plain training sees them, each "
        "outer iteration's k batches of train.batch_size windows split so that no user is in two; permuted: every "
        "user once per epoch, in random order, each inner step users_per_step of them with up to "
        "train.batch_size / users_per_step windows each; uniform / events / balanced: each inner step draws "
        "users_per_step users (uniformly, in proportion to their windows, head and tail equally), fresh users "
        "every outer iteration, so some users are not seen in an epoch",
    )
    align_embeddings: bool = Field(True, description="also apply the outer step to the item embeddings")
    chains: int = Field(
        1,
        ge=1,
        le=1024,
        description="Reptile chains run side by side (torch.func.vmap), each on its "
        "own users, outer step toward their mean; 1 = one chain",
    )

    @model_validator(mode="after")
    def _users_per_step_needs_user_sampling(self) -> GradAlign:
        # by value, not by "was it written": a run's recipe.yaml holds every key resolved, the default included
        if self.sampling == "windows" and self.users_per_step != GradAlign.model_fields["users_per_step"].default:
            raise ValueError(
                "transfer.grad_align.users_per_step applies to sampling: permuted, uniform, events or balanced "
                "(each inner step takes that many users); with sampling: windows (the default) an inner step is "
                "train.batch_size windows. For the paper's faithful mode write sampling: permuted, users_per_step: 1"
            )
        return self


class Adversarial(Strict):
    """A head/tail discriminator on the user state, trained through gradient reversal of weight λ."""

    weight: float = Field(0.1, ge=0, description="λ, the gradient-reversal weight")
    hidden: int = Field(64, ge=0, le=65536, description="hidden units of the MLP discriminator (0 = linear)")
    lr: float = Field(1.0e-3, gt=0, description="the discriminator's learning rate")
    warmup_epochs: int = Field(
        0, ge=0, description="epochs before the reversal starts (the discriminator trains throughout)"
    )
    state: Literal["last", "matched"] = Field(
        "last",
        description="the user state the discriminator reads. last: each window's newest (the paper's). "
        "matched: a head window's state is encoded from only as many of its newest items as a random tail window "
        "holds, so the item count cannot give a user away (one extra encoder pass over those short sequences)",
    )


class CVaR(Strict):
    """Conditional value at risk over users: the loss is the mean of the worst α-fraction of the batch's users'
    mean next-item losses (mixed with the plain mean loss by `mix`)."""

    kind: Literal["cvar"] = Field(description="selects this objective")
    alpha: float = Field(
        0.2, gt=0, le=1, description="share of the batch's users whose losses count (1 = the mean over users)"
    )
    mix: float = Field(0.0, ge=0, le=1, description="weight of the plain mean loss: (1 − mix)·CVaR + mix·mean")


class GroupDRO(Strict):
    """Group DRO (Sagawa et al. 2020): users in groups by training-history length; each step moves the group
    weights q toward the groups with the higher loss, q_g ← q_g·exp(step·loss_g), and the loss is Σ_g q_g·loss_g."""

    kind: Literal["group_dro"] = Field(description="selects this objective")
    groups: Literal["length_quantiles", "head_tail"] = Field(
        "length_quantiles",
        description="length_quantiles: n_groups groups of about equally many users by "
        "training events; head_tail: the two slices",
    )
    n_groups: int = Field(4, ge=2, le=64, description="groups with groups: length_quantiles")
    step: float = Field(0.01, gt=0, le=10, description="η, the step of the exponentiated-gradient update of q")


class Balanced(Strict):
    """Every user weighed more alike: each next-item target weighs n^−power, n the number of training targets of
    its user (power 1: every user counts once, as in the test metrics; power 0: the plain mean over targets)."""

    kind: Literal["balanced"] = Field(description="selects this objective")
    power: float = Field(
        1.0,
        ge=0,
        le=2,
        description="how far a user's weight falls with its training targets "
        "(0 = the plain mean, 1 = every user equally)",
    )


Robust = Annotated[CVaR | GroupDRO | Balanced, Field(discriminator="kind")]
ROBUST_KINDS = {"cvar": CVaR, "group_dro": GroupDRO, "balanced": Balanced}


class UserBranch(Strict):
    """A head→tail map of user states (MELT's user branch): trained on head users, where the state of a short
    recent suffix of the history should map to the state of the whole window; applied at inference (inside the
    exported graph too) to every history shorter than the head threshold."""

    weight: float = Field(
        1.0, ge=0, description="weight of the branch loss, the mean squared difference of f(h_suffix) and h_full"
    )
    suffix_max: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="longest suffix drawn (default: the head threshold − 1, the longest tail history)",
    )
    hidden: int = Field(0, ge=0, le=65536, description="hidden units of the map (0 = linear)")


class Contrastive(Strict):
    """Contrastive regularisation of the user state (DuoRec-style): each window's state is pulled toward the
    state of another training window with the same next item (itself under another dropout mask where there is
    none) and pushed from the batch's other windows, by an InfoNCE loss."""

    weight: float = Field(0.1, ge=0, description="λ, the weight of the InfoNCE term")
    temperature: float = Field(
        1.0, gt=0, le=100, description="τ, the softmax temperature of the similarities (cosine similarity / τ)"
    )


class Transfer(Strict):
    grad_align: GradAlign | None = None
    adversarial: Adversarial | None = None
    robust: Robust | None = Field(
        None,
        description="how the batch's losses are weighed over users: "
        "{kind: cvar, alpha, mix}, {kind: group_dro, groups, n_groups, step} or "
        "{kind: balanced, power}",
    )
    user_branch: UserBranch | None = None
    contrastive: Contrastive | None = None
