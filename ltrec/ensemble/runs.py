"""Another finished run's model as an ensemble member (`{kind: run, path: runs/x}`): its best checkpoint,
scored alone on the same histories. The member must have been trained on this run's data, split and head
settings (the two runs' data fingerprints agree), so its item ids are this run's. A fitted ensemble records
each member's checkpoint digest, and a member retrained since is refused, not silently scored.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ltrec.files.errors import UserError
from ltrec.files.runs import DataInfo, check_run, read_json
from ltrec.recipe import load_recipe
from ltrec.runtime.build import build_model, fingerprint
from ltrec.runtime.checkpoint import load_weights


class RunMember(nn.Module):
    """(B, L) history → (B, N) the member model's scores, on the newest items it was trained to see."""

    kind = "run"

    def __init__(self, model: nn.Module, max_len: int, digest: str):
        super().__init__()
        self.model, self.max_len, self.digest = model.eval(), max_len, digest
        # with a bias, F.linear exports as one Gemm on the table itself; without, as a MatMul whose transposed
        # table constant folding stores as a second copy
        self.register_buffer("bias", torch.zeros(model.n_items + 1), persistent=False)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        history = history[:, -self.max_len :]
        if self.model.tied:  # the whole table, which the input lookup holds: `[1:]` would put a copy in a graph
            return F.linear(self.model.encode(history), self.model.item_table, self.bias)[:, 1:].float()
        return self.model(history).float()


def digest(path: Path) -> str:
    """The checkpoint's sha256, 16 hex digits: what a fitted ensemble records of each run member."""
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()[:16]
    except OSError as exc:
        raise UserError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None


def load_member(path: str, seqs, run_dir: Path | None) -> RunMember:
    """The run at `path` as a member of the ensemble of `run_dir` (None: not yet known), whose data is `seqs`."""
    where = f"eval.ensemble.members: run {path}"
    folder = Path(path)
    try:
        check_run(folder)
        if run_dir is not None and folder.resolve() == run_dir.resolve():
            raise UserError("is this run itself, whose model the ensemble already holds; name another run")
        if not (folder / "best.pt").is_file():
            raise UserError("has no best.pt: it is not finished; let its training finish, or name another run")
        info = read_json(folder / "data.json", DataInfo)
        if info.fingerprint != fingerprint(seqs):
            raise UserError(
                "was trained on other data, another split or other head settings than this run (their "
                "data.json fingerprints differ); a member must be trained with this run's data, split and head keys"
            )
        recipe = load_recipe(folder / "recipe.yaml")
        model = build_model(recipe, seqs, fit=False)
        load_weights(model, folder / "best.pt")
        return RunMember(model, recipe.data.max_len, digest(folder / "best.pt"))
    except UserError as exc:
        text, own = str(exc), f"{folder}: "
        raise UserError(f"{where}: {text[len(own) :] if text.startswith(own) else text}") from None


def check_members(cfg, seqs, run_dir: Path) -> None:
    """Fail before training, not after it: every run member of the ensemble section `cfg` (None: no ensemble)
    loads and fits this run's data."""
    for member in cfg.members if cfg is not None else []:
        if member.kind == "run":
            load_member(member.path, seqs, run_dir)
