"""What every backbone offers (`Recommender`), and what the neural ones share (`NeuralBackbone`): tied item
scoring, the (B, L) → (B, D) API, the default objective."""

from collections.abc import Callable
from typing import ClassVar, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ltrec.models.losses import loss_from_states


class Dropout(nn.Module):
    """Dropout drawing two masks from each 32-bit random number, each half compared with p at a resolution of
    1/65536. On CPU the draws are serial: nn.Dropout's bernoulli_ draws one element at a time, and one uniform
    float per element still cost a SASRec epoch on ML-1M about a quarter of its output layer's time at two
    threads; two masks per number took about a quarter of that away (BENCHMARKS.md). Identity in eval, so
    exported graphs hold nothing of it."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.cut = round(p * 65536) - 32768  # an int16 half below this is dropped: P = p to within 1/65536

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=x.device).random_(-(2**31), None)  # 32 bits
        keep = bits.view(torch.int16)[:n].view(x.shape) >= self.cut
        return x * (keep * (1.0 / (1.0 - self.p)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Recommender(Protocol):
    """What evaluation, export and training ask of every backbone, neural or fitted. Code dispatches on the
    two declared capabilities, never on the kind's name or on attributes it happens to have."""

    n_items: int
    max_len: int
    trainable: ClassVar[bool]  # trained by the loop (neural); False: fitted in closed form by `fit(seqs)`

    @property
    def tied(self) -> bool:
        """Scores are `encode(history) @ item_table[1:].T`: rankable block by block, exported as one matmul."""

    def encode(self, history: torch.Tensor) -> torch.Tensor: ...  # (B, L) → (B, D)

    def forward(self, history: torch.Tensor) -> torch.Tensor: ...  # (B, L) → (B, N), column j is item j+1


class NeuralBackbone(nn.Module):
    """Shared API: encode_all (B, L, D) -> encode (B, D) -> score (..., N) -> forward (B, N)."""

    trainable: ClassVar[bool] = True

    def _init_items(self) -> None:
        # nn.Embedding's N(0, 1) makes tied logits of size ~sqrt(D): softmax starts saturated and the loss
        # far above log N. A small init (as SASRec/RecBole) starts near uniform scores.
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode_all(self, history: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        return self.encode_all(history)[:, -1]  # (B, D): left padding puts the newest item last

    @property
    def tied(self) -> bool:
        """Scores are the state times the item table, so they can be made and ranked block by block."""
        return type(self).score is NeuralBackbone.score

    @property
    def item_table(self) -> torch.Tensor:
        """(N + 1, D) the tied item embeddings, row 0 padding."""
        return self.item_emb.weight

    @property
    def encoder(self) -> "NeuralBackbone":
        """The model whose states training sees (a user branch wraps it and acts at inference only)."""
        return self

    def score(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item_emb.weight[1:].T  # (..., N), row 0 is padding and never scored

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(history))  # (B, N); this is what gets exported to ONNX

    def training_loss(self, inputs, targets, loss="ce", negatives=1, generator=None, per_target=False, weights=None):
        """The training objective on windows inputs/targets (B, L) → (scalar loss, states (B, L, D)); with
        `per_target`, ((losses (M,), window row of each (M,)), states); with `weights` (B,), each window's
        targets weigh its weight in the mean.

        Default: the next-item loss at every position (targets[:, t] follows inputs[:, t]). A backbone with
        another objective (BERT4Rec's cloze) overrides this; the trainer and both transfer components only
        see the returned loss and the states, of which the adversarial discriminator reads one per window
        (the newest, states[:, -1], by default).
        """
        states = encode_by_length(self.encode_all, inputs)  # (B, L, D)
        return loss_from_states(self, states, targets, loss, negatives, generator, per_target, weights), states


# A group costs as if it had this many more rows: one more encoder call's fixed cost (a GRU pays it per step,
# so it is counted per column). bench/bench_epoch.py sets it huge to time one group per batch.
GROUP_ROWS = 16
# Groups are used only where they cut that cost by at least this share: smaller calls run less efficiently, and
# on MovieLens-1M, whose batches are nearly all full windows, splitting off a few short ones made epochs slower.
MIN_SAVING = 0.25


def group_cost(rows: int, width: int) -> int:
    return (rows + GROUP_ROWS) * width


def length_groups(lengths: list[int]) -> list[tuple[int, int, int]]:
    """Contiguous groups (start, stop, width) of rows sorted by length that minimise Σ (rows + GROUP_ROWS) ·
    width, a group's width being its longest row's: an exact search over the cuts between distinct lengths."""
    cuts = [i for i in range(1, len(lengths)) if lengths[i] != lengths[i - 1]] + [len(lengths)]
    best, back = [0.0], [0]  # best[j]: cost of rows before cuts[j - 1] (cut 0 is row 0)
    starts = [0, *cuts]
    for j, stop in enumerate(cuts, 1):
        width = max(1, lengths[stop - 1])
        cost, arg = min((best[i] + group_cost(stop - starts[i], width), i) for i in range(j))
        best.append(cost)
        back.append(arg)
    groups, j = [], len(cuts)
    while j:
        i = back[j]
        groups.append((starts[i], starts[j], max(1, lengths[starts[j] - 1])))
        j = i
    return groups[::-1]


def encode_by_length(encode_all: Callable[[torch.Tensor], torch.Tensor], history: torch.Tensor) -> torch.Tensor:
    """encode_all(history) (B, L, D) at every real position, computed on groups of rows of similar length,
    each cut to its own longest row (a pad position's state is zero or the backbone's: no loss reads it). A
    random batch of a long-tailed log is mostly short histories padded to one long one (on Amazon Music 89% of
    a batch's positions are padding), and the encoder's cost follows the padded width. Backbones are
    pad-invariant, so real positions get the states a single call would give them. On CPU only: GROUP_ROWS is
    a CPU call's fixed cost, and a GPU's (kernel launches against far faster arithmetic) is another, unmeasured
    one."""
    if history.device.type != "cpu":
        return encode_all(history)
    lengths = (history > 0).sum(1)
    order = None
    if bool((lengths[1:] < lengths[:-1]).any()):
        order = torch.argsort(lengths, stable=True)
        history, lengths = history[order], lengths[order]
    groups = length_groups(lengths.tolist())
    one = group_cost(len(history), groups[-1][2])
    if sum(group_cost(b - a, w) for a, b, w in groups) > (1 - MIN_SAVING) * one:
        states = encode_all(history)
    else:
        width = history.shape[1]
        parts = [F.pad(encode_all(history[a:b, -w:]), (0, 0, width - w, 0)) for a, b, w in groups]
        states = torch.cat(parts)
    return states if order is None else states[torch.argsort(order)]
