"""How an ensemble scores: z(model) + Σ_m w_{b,m}·z(member_m), with z a user's scores standardised over the
catalogue (mean 0, sd 1) and b the bucket of the user's history length (the items the model sees).

Standardising puts a log count, a transition sum and an EASE score on one scale, so one grid of candidate
weights serves every member, and a bucket's weights say how far it leans on each. z is a positive affine map
per user, so the model alone (weights 0) ranks exactly as without the ensemble. Written in plain tensor ops
(ReduceMean, MatMul, a comparison count for the bucket), so the exported graph computes what evaluation does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from ltrec.ensemble.records import FILE, fitted_record, read, refit_command
from ltrec.ensemble.runs import RunMember, load_member
from ltrec.files.errors import UserError
from ltrec.models import BACKBONES
from ltrec.runtime.build import fit_fitted

EPS = 1e-6  # a member with one score for every item (no transitions from this history) contributes 0


def standardizer(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (B, 1), with scores·scale + shift each row's scores at mean 0 and sd 1 (an all-zero
    row: all 0), from two reading passes over the (B, N) scores and no second matrix."""
    # the variance as mean square − mean², the two in float64; torch's var_mean takes 50× as long on CPU
    mean = scores.mean(dim=1, keepdim=True)
    square = torch.linalg.vector_norm(scores, dim=1, keepdim=True).double().square() / scores.shape[1]
    var = (square - mean.double().square()).clamp(min=0)
    scale = (1.0 / (var.sqrt() + EPS)).float()
    return scale, -mean * scale


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """(B, N) → (B, N), each row mean 0 and sd 1 (an all-zero row: all 0)."""
    scale, shift = standardizer(scores)
    return torch.addcmul(shift, scale, scores)


def item_moments(items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (N, D) item table's mean row (D,) and second moment WᵀW / N (D, D), in float64: with them a user
    state's score statistics over the catalogue need no pass over its scores."""
    w = items.double()
    return w.mean(dim=0), w.T @ w / w.shape[0]


def standardized_scores(state: torch.Tensor, items: torch.Tensor, moments) -> torch.Tensor:
    """`standardize(state · itemsᵀ)`, (B, N), from one matrix product: a row's mean is h·w̄ and its mean square
    h·(WᵀW / N)·h, so the scores are made already standardised and never read again for their statistics."""
    mean_row, second = moments
    h = state.double()  # (B, D); float64, as the variance is a difference of two moments
    mean = h @ mean_row  # (B,)
    var = ((h @ second) * h).sum(dim=1) - mean.square()  # (B,)
    scale = 1.0 / (var.clamp(min=0).sqrt() + EPS)  # (B,)
    return torch.addmm((-mean * scale).float().unsqueeze(1), (h * scale.unsqueeze(1)).float(), items.T)


def bucket_weights(history: torch.Tensor, edges: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, M + 1) the weights of each left-padded history's length bucket: the bucket is how many `edges` (E,)
    the length reaches; `weights` is (E + 1, M + 1), column 0 the model's."""
    lengths = (history > 0).sum(dim=1, keepdim=True)  # (B, 1)
    return weights[(lengths >= edges.unsqueeze(0)).sum(dim=1)]


def member_scores(members, history: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each fitted member's scores of `history` (B, L) with their `standardizer`: (scores, scale, shift), the
    scores (B, N), or (1, N) for a member whose scores do not depend on the history (popularity), which
    broadcasts in `combine`. They are standardised only inside `combine`, which reads them once."""
    out = []
    for m in members:
        scores = m(history if getattr(m, "per_user", True) else history[:1]).float()
        out.append((scores, *standardizer(scores)))
    return out


def combine(
    model: torch.Tensor, members: list, history: torch.Tensor, edges: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """(B, N) the ensemble's scores from the model's standardised (B, N) scores and `member_scores`."""
    w = bucket_weights(history, edges, weights)  # (B, M + 1)
    out = w[:, :1] * model
    shift = torch.zeros_like(w[:, :1])  # (B, 1)
    for j, (scores, scale, offset) in enumerate(members, start=1):
        # w·z = (w·scale)·scores + w·offset: one in-place pass over the scores, the offsets added once at the end
        out.addcmul_(w[:, j : j + 1] * scale, scores)
        shift = shift + w[:, j : j + 1] * offset
    return out.add_(shift)


@dataclass
class Ensemble:
    members: list[nn.Module]  # fitted, each (B, L) history → (B, N) scores
    kinds: list[str]  # the members' kinds, in order
    edges: torch.Tensor  # (E,) int64, history lengths where a bucket starts
    weights: torch.Tensor  # (E + 1, M + 1) float32, one row per bucket, column 0 the model's
    settings: dict | None = None  # what it was fitted with (ltrec.ensemble.records.fit_settings)
    valid: float = 0.0  # the mean validation metric of the fitted weights

    def parts(
        self, model: torch.Tensor, history: torch.Tensor, standardized: bool = False
    ) -> tuple[torch.Tensor, list]:
        """The model's and each member's standardised scores, shared by every weighting of one batch; `model`
        is the model's (B, N) scores, already standardised where `standardized`; the members as `member_scores`
        gives them."""
        return (model if standardized else standardize(model.float())), member_scores(self.members, history)

    def scores(self, model: torch.Tensor, history: torch.Tensor, parts=None) -> torch.Tensor:
        """(B, N) the ensemble's scores given the model's; `parts` as `parts` gave them, if at hand."""
        z, members = self.parts(model, history) if parts is None else parts
        w = self.weights.to(history.device)
        return combine(z, members, history, self.edges.to(history.device), w)

    def with_weights(self, weights: torch.Tensor) -> Ensemble:
        return replace(self, weights=weights)


def fit_members(cfg, seqs, max_len: int, run_dir: Path | None = None) -> list[nn.Module]:
    """The recipe's `eval.ensemble.members`, each fitted on the training split of `seqs`, or for a run member,
    that run's model (`run_dir`: the ensemble's own run, which cannot be one)."""
    models: list[nn.Module] = []
    for member in cfg.members:
        if member.kind == "run":
            models.append(load_member(member.path, seqs, run_dir))
            continue
        where = f"eval.ensemble.members: {member.kind}"
        try:
            model = BACKBONES[member.kind](seqs.n_items, max_len, **member.model_dump(exclude={"kind"}))
        except ValueError as exc:  # EASE's catalogue bound
            raise UserError(f"{where}: {exc}") from None
        models.append(fit_fitted(model, where, seqs).eval())
    return models


def start(cfg, members: list[nn.Module]) -> Ensemble:
    """The model alone (weight 1, members 0) in every bucket: where coordinate ascent begins."""
    weights = torch.zeros(len(cfg.edges) + 1, len(members) + 1)
    weights[:, 0] = 1.0
    return Ensemble(members, [m.kind for m in cfg.members], torch.tensor(cfg.edges), weights)


def load(run_dir, recipe, seqs, overrides=()) -> Ensemble:
    """The ensemble fitted for a run (by training or `ltrec eval`) under the run's recipe with `overrides`: its
    weights read and checked, its members fitted again on the training split (deterministic)."""
    fitted = read(run_dir, recipe, overrides)
    cfg = fitted.section
    ensemble = start(cfg, fit_members(cfg, seqs, recipe.data.max_len, run_dir))
    for path, was, now in zip(
        (m.path for m in cfg.members if m.kind == "run"), fitted.checkpoints, checkpoints(ensemble.members)
    ):
        if was != now:
            raise UserError(
                f"{run_dir / FILE}: eval.ensemble.members: run {path}: its best.pt changed since the ensemble was "
                f"fitted (sha256 {now}, fitted with {was}); refit it with `{refit_command(run_dir, overrides)}`"
            )
    weights = torch.tensor(fitted.weights, dtype=torch.float32)
    return replace(ensemble, weights=weights, settings=fitted.settings.model_dump(), valid=fitted.valid)


def record(ensemble: Ensemble) -> dict:
    """ensemble.json's content (the bundle records it too)."""
    members = ["model", *ensemble.kinds]
    weights = ensemble.weights.tolist()
    return fitted_record(
        ensemble.settings, members, ensemble.edges.tolist(), weights, ensemble.valid, checkpoints(ensemble.members)
    )


def checkpoints(members: list[nn.Module]) -> list[str]:
    """The checkpoint digest of each run member, in the members' order."""
    return [m.digest for m in members if isinstance(m, RunMember)]
