"""Full-ranking evaluation by user slice (all / head / tail / cold / cold-adapted), plus the sampled mode.

Protocol (printed with every table): chronological leave-one-out; the target is ranked against every item (padding
excluded), every item of the user's history (not only the last max_len) masked when `eval.mask_seen`; ties are
pessimistic (the target loses them). Sampled mode ranks the target against `eval.negatives` negatives drawn once
with the recipe's seed and stored in the run, so reruns compare like with like. With `eval.adapt`, cold users are
ranked a second time after a few SGD steps on their own history (slice `cold-adapted`, the same users as `cold`).

Seen items are held as (user, item) pairs, never as a batch × longest-history matrix, so one very long
history costs memory in proportion to itself only.

Under torchrun the batches are dealt to the ranks (batch b to rank b mod world) and the ranks' integer ranks
gathered; each batch is the batch one process would score, so the metrics are those of one process.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltrec.data import Sequences
from ltrec.ensemble.scores import Ensemble, item_moments, standardized_scores
from ltrec.evaluation.adapt import adapted_scores
from ltrec.evaluation.metrics import metrics_from_ranks, summarize
from ltrec.evaluation.ranks import (
    Seen,
    check_negatives,
    require_eligible,
    sample_negatives,
    sampled_ranks,
    state_ranks,
    target_ranks,
)
from ltrec.files.errors import UserError
from ltrec.files.runs import SLICES, ensemble_note
from ltrec.files.safe import MB, atomic_write, read_bytes
from ltrec.recipe import Eval
from ltrec.runtime.distributed import LOCAL, Dist

WARM = ("head", "tail")  # `all` = the evaluated users who trained; cold users are reported apart
FULL_SCORES_BATCH = 256  # users per batch where every item is scored at once (ensembles, sampled mode, pop)


@dataclass
class Result:
    split: str
    protocol: str
    users: np.ndarray  # (B,) user index into Sequences
    slice_of: np.ndarray  # (B,) "head" | "tail" | "cold" | "cold-adapted" (a cold user's second row)
    per_user: dict[str, np.ndarray]  # metric → (B,)
    ks: list[int]
    lengths: np.ndarray  # (B,) items of each history the model saw

    def mask(self, name: str) -> np.ndarray:
        return np.isin(self.slice_of, WARM) if name == "all" else self.slice_of == name

    def table(self, slices=SLICES) -> dict[str, dict[str, float]]:
        return {s: summarize(self.per_user, self.mask(s)) for s in slices if self.mask(s).any() or s in ("all", *WARM)}


def protocol(cfg: Eval, ensemble: Ensemble | None = None) -> str:
    note = ensemble_note(ensemble.kinds) if ensemble is not None else ""
    if cfg.mode == "sampled":
        return f"sampled: target vs {cfg.negatives} stored random negatives, pessimistic ties{note}"
    masked = "history masked" if cfg.mask_seen else "history not masked"
    return f"full ranking over all items, {masked}, pessimistic ties, leave-one-out{note}"


class Evaluator:
    """Evaluates one model on one dataset with one recipe's settings; `run(split)` ranks every evaluated (and
    cold) user's `split` target and returns the per-user metrics (on every rank under torchrun)."""

    def __init__(
        self,
        model,
        seqs: Sequences,
        cfg: Eval,
        max_len: int,
        device="cpu",
        run_dir: Path | None = None,
        seed: int = 0,
        dist: Dist = LOCAL,
    ):
        self.model, self.seqs, self.cfg, self.max_len, self.device = model, seqs, cfg, max_len, device
        self.run_dir, self.seed, self.dist = run_dir, seed, dist

    def run(self, split: str, ks=None, ensemble: Ensemble | None = None) -> Result:
        """Rank every evaluated (and cold) user's `split` target, by the model's scores or `ensemble`'s."""
        return self.run_many(split, [ensemble], ks)[0]

    @torch.no_grad()
    def run_many(self, split: str, variants: list[Ensemble | None], ks=None) -> list[Result]:
        """`run` once per ensemble variant (None: the model alone), sharing each batch's forward pass and each
        member's scores: fitting an ensemble ranks the same users under many weights."""
        model, seqs, cfg, dist, device = self.model, self.seqs, self.cfg, self.dist, self.device
        model.eval()
        parts = [seqs.eval_inputs(split, self.max_len, cold=c) for c in (False, True)]
        if cfg.adapt is not None and len(parts[1][0]):
            parts.append(parts[1])  # the cold users again, ranked after adaptation
        users = np.concatenate([p[0] for p in parts])
        history = np.concatenate([p[1] for p in parts])
        targets = np.concatenate([p[2] for p in parts])
        slice_of = np.where(seqs.head[users], "head", "tail").astype(object)
        n_warm, n_cold = len(parts[0][0]), len(parts[1][0])
        slice_of[n_warm : n_warm + n_cold] = "cold"
        slice_of[n_warm + n_cold :] = "cold-adapted"
        negs = self._negatives(split, history, targets) if cfg.mode == "sampled" else None
        # Users in order of history length, so each batch is only as wide as its longest history: most users
        # are short (the long tail) and every backbone ignores left padding (a tested property), so the encoder
        # skips the all-pad columns.
        lengths = (history > 0).sum(axis=1)
        order = np.argsort(seqs.lengths[users], kind="stable")
        # an ensemble standardises each user's scores over the catalogue: they are no longer made block by block
        blocks = negs is None and model.tied and all(v is None for v in variants)
        # a whole (batch × items) score matrix is then read several times over: small batches keep it near the
        # cache
        size = cfg.batch_size if blocks else min(cfg.batch_size, FULL_SCORES_BATCH)
        batches = [order[lo : lo + size] for lo in range(0, len(users), size)]
        # an ensemble over a state × item-table model: the scores' statistics come from the table's moments
        ensembles = negs is None and model.tied and any(v is not None for v in variants)
        items = model.item_table[1:].float() if ensembles else None  # (N, D)
        moments = item_moments(items) if items is not None else None
        mine = [[] for _ in variants]
        for b, sel in enumerate(batches):
            if b % dist.world != dist.rank:  # under torchrun batch b is rank b mod world's
                continue
            width = max(int(lengths[sel].max()), 1)
            hist = torch.from_numpy(np.ascontiguousarray(history[sel, -width:])).to(device)  # (B, width)
            tgt = torch.from_numpy(targets[sel]).to(device)
            seen = (
                Seen.of(*(torch.from_numpy(a) for a in seqs.seen(users[sel], split))).to(device)
                if cfg.mask_seen and negs is None
                else None
            )
            adapt = sel >= n_warm + n_cold  # the cold users' second rows: adapt, then rank
            if blocks and not adapt.any():
                state = model.encode(hist).float()  # (B, D); scores are made and ranked block by block
                items = model.item_table[1:].float()  # (N, D)
                ranks = state_ranks(state, items, tgt, seen).cpu()
                for out in mine:  # every variant is the model alone
                    out.append(ranks)
                continue
            standardized = moments is not None and not adapt.any()
            if standardized:  # made standardised: they rank as the raw scores do (a positive affine map per user)
                model_scores = standardized_scores(model.encode(hist).float(), items, moments)  # (B, N)
            else:
                model_scores = model(hist).float()  # (B, N)
            if adapt.any():
                model_scores[torch.from_numpy(adapt).to(device)] = adapted_scores(
                    model, history[sel[adapt]], cfg.adapt.steps, cfg.adapt.lr, device, cfg.adapt.params
                )
            parts = {}  # the standardised scores of this batch, whatever the variants' weights
            for out, variant in zip(mine, variants):
                scores = model_scores
                if variant is not None:
                    if id(variant.members) not in parts:
                        parts[id(variant.members)] = variant.parts(model_scores, hist, standardized)
                    scores = variant.scores(model_scores, hist, parts[id(variant.members)])
                if negs is None:
                    out.append(target_ranks(scores, tgt, seen).cpu())
                else:
                    out.append(sampled_ranks(scores, tgt, torch.from_numpy(negs[sel]).to(device)).cpu())
        results = []
        for ranks, variant in zip(mine, variants):
            gathered = dist.all_gather(ranks)  # rank r holds batches r, r + world, ...
            rank = np.zeros(len(users), dtype=np.int64)
            for b, sel in enumerate(batches):
                rank[sel] = gathered[b % dist.world][b // dist.world].numpy()
            per_user = metrics_from_ranks(rank, ks or cfg.ks)
            per_user["rank"] = rank.astype(np.float64)
            results.append(
                Result(
                    split, protocol(cfg, variant), users, slice_of.astype(str), per_user, list(ks or cfg.ks), lengths
                )
            )
        return results

    def _negatives(self, split: str, history: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Sampled mode's negatives: drawn once with the recipe's seed and stored with the run (rank 0)."""
        main = self.run_dir is not None and self.dist.main
        path = self.run_dir / f"negatives_{split}_{self.cfg.negatives}.npy" if main else None
        n = self.cfg.negatives
        if path is not None and path.exists():
            # int64 ids plus the .npy header: anything much larger is not this file
            data = read_bytes(path, "stored negatives file", max(len(targets) * n * 8 + 4096, MB))
            try:
                negs = np.load(io.BytesIO(data), allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise UserError(
                    f"{path}: not a stored negatives array ({' '.join(str(exc).split())[:200]}); delete "
                    "it to draw them again"
                ) from None
            return check_negatives(negs, targets, history, self.seqs.n_items, n, path)
        require_eligible(self.seqs.n_items, targets, history, n)
        negs = sample_negatives(self.seqs.n_items, targets, history, self.cfg.negatives, self.seed)
        if path is not None:
            buf = io.BytesIO()
            np.save(buf, negs, allow_pickle=False)
            atomic_write(path, buf.getvalue())
        return negs
