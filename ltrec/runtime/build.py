"""From a recipe to what training, evaluation and export work on: the data, the model, the device; and a
saved run's recipe and data, checked to be what the run was trained on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ltrec import data as data_mod
from ltrec.files.errors import UserError
from ltrec.files.runs import DataInfo, check_run, read_json
from ltrec.models import BACKBONES
from ltrec.models.branched import Branched
from ltrec.recipe import Recipe, load_recipe
from ltrec.runtime.distributed import LOCAL, Dist


def pick_device(name: str, dist: Dist = LOCAL) -> torch.device:
    """auto: CUDA when torch sees a GPU (under torchrun, the GPU of this process's LOCAL_RANK), else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but torch sees no CUDA device; use auto or cpu")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank % torch.cuda.device_count()) if dist.world > 1 else torch.device("cuda")


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "bf16" and device.type != "cuda":
        raise UserError(
            "train.precision: bf16 autocast runs on CUDA only, and this run trains on the CPU "
            "(no CUDA device, or train.device: cpu); use precision: fp32"
        )


def build_model(recipe: Recipe, seqs: data_mod.Sequences, fit: bool = True) -> torch.nn.Module:
    """The recipe's backbone for `seqs`; a fitted (non-trainable) one is fitted unless `fit` is False (its
    checkpoint is loaded next)."""
    cfg = recipe.backbone.model_dump(exclude={"kind"})
    try:
        model = BACKBONES[recipe.backbone.kind](seqs.n_items, recipe.data.max_len, **cfg)
    except ValueError as exc:
        raise UserError(f"backbone: {exc}") from None
    except (MemoryError, RuntimeError) as exc:  # a size that passes validation but does not fit in memory
        raise UserError(
            f"backbone: the model does not fit in memory with {seqs.n_items:,} items "
            f"({type(exc).__name__}); lower backbone.dim or layers"
        ) from None
    if fit and not model.trainable:
        fit_fitted(model, f"backbone: {recipe.backbone.kind}", seqs)
    branch = recipe.transfer.user_branch
    if branch is not None:  # histories shorter than the head threshold (or max_len) get the head→tail map
        model = Branched(model, min(seqs.head_threshold, recipe.data.max_len), branch.hidden)
    return model


def fit_fitted(model: torch.nn.Module, where: str, seqs: data_mod.Sequences) -> torch.nn.Module:
    """`model` (a non-trainable kind) fitted on the training split of `seqs`; `where` names its recipe key."""
    try:
        return model.fit(seqs)
    except (MemoryError, RuntimeError) as exc:  # EASE's dense solve: a catalogue the memory cannot hold
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc):
            raise
        raise UserError(
            f"{where}: fitting on {seqs.n_items:,} items ran out of memory ({type(exc).__name__}); free "
            "memory, or keep fewer items (data.min_item_events)"
        ) from None


def fingerprint(seqs: data_mod.Sequences) -> str:
    h = hashlib.sha256()
    for arr in (seqs.items, seqs.offsets, seqs.role, seqs.head):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def load_data(recipe: Recipe) -> data_mod.Sequences:
    """The recipe's data; errors also name the recipe file (a data problem is fixed there)."""
    try:
        return data_mod.load(recipe.data, recipe.split, recipe.head, recipe.seed)
    except UserError as exc:
        where = recipe.file
        raise UserError(f"{where}: {exc}" if where and not str(exc).startswith(where) else str(exc)) from None


def load_run(run_dir: Path, overrides: list[str] | None = None) -> tuple[Recipe, data_mod.Sequences]:
    """The run's recipe (with `overrides`) and its data, checked to be the data the run was trained on."""
    check_run(run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml", list(overrides or []))
    info = read_json(run_dir / "data.json", DataInfo)
    seqs = load_data(recipe)
    if info.fingerprint != fingerprint(seqs):
        raise UserError(f"{run_dir}: the data at {recipe.data.source} changed since this run was trained")
    return recipe, seqs
