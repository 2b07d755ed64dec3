"""What must hold before the first epoch, so that a recipe fails in a second instead of after training."""

from __future__ import annotations

from ltrec import data as data_mod
from ltrec.evaluation.ranks import require_eligible
from ltrec.files.errors import UserError
from ltrec.models import BACKBONES
from ltrec.recipe import Recipe


def check_eval(recipe: Recipe, seqs: data_mod.Sequences) -> None:
    """Fail before training, not after: the monitored slice must have users, adversarial training needs head
    and tail users to tell apart, and sampled evaluation needs eval.negatives items outside each user's target
    and history."""
    which = recipe.train.monitor.slice
    evaluated = seqs.role == data_mod.EVAL
    users = {"all": evaluated, "head": evaluated & seqs.head, "tail": evaluated & ~seqs.head}[which]
    if BACKBONES[recipe.backbone.kind].trainable and not users.any():
        raise UserError(
            f"train.monitor.slice: no evaluated user is {which} (head = at least "
            f"{seqs.head_threshold} training events), so no epoch could be picked; monitor another "
            "slice or change head.fraction / head.count"
        )
    trained = seqs.train_lengths >= 2  # users with a training window
    for name, present in (("head", seqs.head & trained), ("tail", ~seqs.head & trained)):
        if recipe.transfer.adversarial is not None and not present.any():
            raise UserError(
                f"transfer.adversarial: no {name} user has training windows (head = at least "
                f"{seqs.head_threshold} training events), so the discriminator would have nothing to "
                "tell apart; change head.fraction / head.count or set transfer.adversarial: null"
            )
    if recipe.eval.mode != "sampled":
        return
    for split in ("valid", "test"):
        for cold in (False, True):
            _, history, target = seqs.eval_inputs(split, recipe.data.max_len, cold)
            require_eligible(seqs.n_items, target, history, recipe.eval.negatives)
