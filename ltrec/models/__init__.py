"""Sequential recommender backbones and their losses, one file per backbone.

Conventions shared by every backbone:
- item ids are 1..N, 0 is padding; histories are LEFT-padded int64 tensors (B, L),
  so the user state is always the last position, and extra left pads never change it (tested per backbone);
- no user-id embeddings, so unseen (cold, long-tail) users work out of the box;
- item embeddings are tied: scores = state @ item_emb.weight[1:].T, score column j is item j+1;
- `training_loss(inputs, targets, ...)` → (loss, states (B, L, D)): next-item loss at every position by default,
  BERT4Rec's own cloze objective; the trainer and the transfer components only call this.
- training encodes a batch in groups of similar length, each cut to its longest row (`base.encode_by_length`):
  pad invariance makes that exact, and a long-tailed log's batches are mostly padding otherwise.

`BACKBONES` maps the recipe's `backbone.kind` tags to the classes (a test checks they are the same set).
"""

from ltrec.models.base import NeuralBackbone
from ltrec.models.bert4rec import BERT4Rec
from ltrec.models.caser import Caser
from ltrec.models.ease import EASE
from ltrec.models.gru4rec import GRU4Rec
from ltrec.models.losses import LOSSES, loss_from_states
from ltrec.models.narm import NARM
from ltrec.models.pop import Pop
from ltrec.models.sasrec import Block, SASRec
from ltrec.models.transitions import Transitions

BACKBONES = {
    "gru4rec": GRU4Rec,
    "sasrec": SASRec,
    "pop": Pop,
    "caser": Caser,
    "narm": NARM,
    "bert4rec": BERT4Rec,
    "transitions": Transitions,
    "ease": EASE,
}

__all__ = [
    "BACKBONES",
    "BERT4Rec",
    "EASE",
    "Transitions",
    "Caser",
    "GRU4Rec",
    "LOSSES",
    "NARM",
    "Pop",
    "SASRec",
    "NeuralBackbone",
    "Block",
    "loss_from_states",
]
