"""Sequential recommender backbones and their losses, one file per backbone.

Conventions shared by every backbone:
- item ids are 1..N, 0 is padding; histories are LEFT-padded int64 tensors (B, L),
  so the user state is always the last position, and extra left pads never change it (tested per backbone);
- no user-id embeddings, so unseen (cold, long-tail) users work out of the box;
- item embeddings are tied: scores = state @ item_emb.weight[1:].T, score column j is item j+1;
- `training_loss(inputs, targets, ...)` → (loss, user state): next-item loss at every position by default,
  a backbone may override it with its own objective; the trainer and the transfer components only call this.

`BACKBONES` maps the recipe's `backbone.kind` tags to the classes (a test checks they are the same set).
"""

from .base import _Backbone
from .gru4rec import GRU4Rec
from .losses import LOSSES, loss_from_states, next_item_loss
from .pop import Pop
from .sasrec import SASRec, _Block

BACKBONES = {"gru4rec": GRU4Rec, "sasrec": SASRec, "pop": Pop}

__all__ = ["BACKBONES", "GRU4Rec", "LOSSES", "Pop", "SASRec", "_Backbone", "_Block", "loss_from_states", "next_item_loss"]
