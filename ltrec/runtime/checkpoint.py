"""Run folders opened for training, checkpoints and resume: `best.pt` (weights of the best epoch) and `last.pt`
(everything an exact resume needs: weights, optimiser state, random streams, the early-stopping state and whether
training is over).

Checkpoints hold only tensors and primitives and are read with `torch.load(weights_only=True)`: a file with
pickled Python objects in it is refused, never run.
"""

from __future__ import annotations

import io
import json
import math
import re
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from rich.console import Console

from ltrec.data import source_files
from ltrec.files.errors import UserError
from ltrec.files.runs import open_for_resume, prepare_run_dir, read_epochs
from ltrec.files.safe import atomic_write
from ltrec.models.neighbours import DamagedTable
from ltrec.recipe import Recipe, dump_recipe, load_recipe
from ltrec.runtime.distributed import LOCAL, Dist, rank_seed, to_cpu

FORMAT = 2
DAMAGED = "the file is damaged (retrain the run, or restore the file)"
RESUME_MAY_CHANGE = ("epochs", "patience", "threads", "device", "precision")


@dataclass
class TrainState:
    """Where training stands after `epoch` epochs; `stopped` is set once early stopping ends the run."""

    epoch: int = 0
    best: float = -math.inf
    best_epoch: int = 0
    bad: int = 0  # epochs since the last improvement
    stopped: bool = False

    def update(self, score: float, patience: int) -> bool:
        """Record one more epoch's validation score; returns whether it improved on the best."""
        improved = score > self.best
        self.epoch += 1
        self.bad = 0 if improved else self.bad + 1
        if improved:
            self.best, self.best_epoch = score, self.epoch
        self.stopped = self.bad >= patience
        return improved


def save_torch(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def _reason(exc: Exception) -> str:
    """torch's reason in one whole sentence: for a refused pickle, the global it would have had to run."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())  # one line, colour codes gone
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it holds a Python object ({found.group(1)}), which ltrec never unpickles"
    first = re.split(r"(?<=\.)\s", text.strip(), maxsplit=1)[0] if text.strip() else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


def load_torch(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: missing; the run has no checkpoint (train it first)") from None
    except Exception as exc:  # a truncated, foreign or unsafe file: say which and why, no traceback
        raise UserError(f"{path}: not a readable ltrec checkpoint ({_reason(exc)})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise UserError(f"{path}: not an ltrec checkpoint (no model weights in it); retrain the run")
    if "epoch" in obj and not _whole(obj["epoch"]):  # best.pt's epoch
        raise UserError(f"{path}: epoch: expected a whole number ≥ 0 (got {obj['epoch']!r:.60}); {DAMAGED}")
    if "state" in obj:  # last.pt's: where training continues
        check_state(obj["state"], path)
    return obj


def load_weights(model: torch.nn.Module, path: Path) -> dict:
    """Load a checkpoint's model weights into `model`; a checkpoint of another model is a clear error."""
    ckpt = load_torch(path)
    try:
        model.load_state_dict(ckpt["model"])
    except DamagedTable as exc:  # a fitted model's table that no fit writes
        raise UserError(f"{path}: {exc}; {DAMAGED}") from None
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"{path}: does not hold this run's model ({type(exc).__name__}: {_reason(exc)}); was it "
            "copied from another run?"
        ) from None
    return ckpt


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_state(state, path: Path) -> TrainState:
    """last.pt's training state, each field checked: a damaged one would otherwise resume at a wrong epoch."""
    if not isinstance(state, dict) or set(state) != {f.name for f in fields(TrainState)}:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise UserError(
            f"{path}: state: expected the fields {', '.join(f.name for f in fields(TrainState))} "
            f"(got {keys}); {DAMAGED}"
        )
    epoch = state["epoch"]
    problems = {
        "epoch": (_whole(epoch), "a whole number ≥ 0"),
        "best_epoch": (
            _whole(state["best_epoch"]) and _whole(epoch) and state["best_epoch"] <= epoch,
            "a whole number from 0 to the epoch",
        ),
        "bad": (_whole(state["bad"]) and _whole(epoch) and state["bad"] <= epoch, "a whole number from 0 to the epoch"),
        "best": (
            isinstance(state["best"], (int, float))
            and not isinstance(state["best"], bool)
            and not math.isnan(state["best"])
            and state["best"] != math.inf,
            "a number or -inf",
        ),
        "stopped": (isinstance(state["stopped"], bool), "true or false"),
    }
    for key, (good, expected) in problems.items():
        if not good:
            raise UserError(f"{path}: state.{key}: expected {expected} (got {state[key]!r:.60}); {DAMAGED}")
    return TrainState(**state)


def resumable(given: Recipe, saved: Recipe, run_dir: Path) -> Recipe:
    """The saved recipe, with only the train settings that do not change the experiment taken from `given`."""
    changes = {k: getattr(given.train, k) for k in RESUME_MAY_CHANGE}
    merged = saved.model_copy(update={"train": saved.train.model_copy(update=changes)})
    a = given.model_dump(exclude={"train": set(RESUME_MAY_CHANGE)})
    b = merged.model_dump(exclude={"train": set(RESUME_MAY_CHANGE)})
    diff = sorted(f"{section}" for section in a if a[section] != b[section])
    if diff:
        raise UserError(
            f"{run_dir}: --resume continues the same experiment, but the recipe differs in "
            f"{', '.join(diff)} (only train.{'/'.join(RESUME_MAY_CHANGE)} may change); "
            "start a new run instead"
        )
    return merged


def save_last(run_dir: Path, model, runner, state: TrainState, gen: torch.Generator, dist: Dist = LOCAL) -> None:
    """last.pt. Under torchrun every rank's random streams (and per-rank optimiser state) go in too, so a
    resume on as many processes continues exactly; rank 0 writes."""
    ranks = None
    if dist.world > 1:
        ranks = dist.gather(
            to_cpu({"rng": torch.get_rng_state(), "gen": gen.get_state(), "state": runner.rank_state()})
        )
    with dist.together():
        if dist.main:
            extra = {"world": dist.world, "ranks": ranks} if dist.world > 1 else {}
            save_torch(
                run_dir / "last.pt",
                {
                    "format": FORMAT,
                    "model": model.state_dict(),
                    "optim": runner.state_dict(),
                    "rng": torch.get_rng_state(),
                    "gen": gen.get_state(),
                    "state": asdict(state),
                    **extra,
                },
            )


def restore(
    run_dir: Path, model, runner, gen: torch.Generator, seed: int, dist: Dist = LOCAL
) -> tuple[TrainState, int]:
    """Load last.pt into model, runner and random streams; returns (state, world size it was trained with)."""
    ckpt = None
    with dist.together():
        if dist.main:
            ckpt = load_torch(run_dir / "last.pt")
            if ckpt.get("format") != FORMAT:
                raise UserError(
                    f"{run_dir}/last.pt: checkpoint format {ckpt.get('format')!r:.60} is not {FORMAT} "
                    "(written by another ltrec version); retrain the run"
                )
            check_state(ckpt.get("state"), run_dir / "last.pt")  # a last.pt without one, too
    ckpt = dist.broadcast(ckpt)  # rank 0's file: other machines need not see the run directory
    saved_world = ckpt.get("world", 1)
    with dist.together():
        try:
            state = TrainState(**ckpt["state"])  # checked by rank 0
            model.load_state_dict(ckpt["model"])
            runner.load_state_dict(ckpt["optim"])
            if saved_world != dist.world:  # other shards: no way to continue the old streams; reseed
                reseed = rank_seed(seed + 1 + state.epoch, dist.rank)
                torch.manual_seed(reseed)
                gen.manual_seed(reseed)
            else:  # each rank continues its own random streams (and per-rank optimiser state)
                mine = ckpt["ranks"][dist.rank] if dist.world > 1 else ckpt
                torch.set_rng_state(mine["rng"])
                gen.set_state(mine["gen"])
                if dist.world > 1:
                    runner.load_rank_state(mine["state"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise UserError(
                f"{run_dir}/last.pt: does not match this run ({type(exc).__name__}: {_reason(exc)}); start a new run"
            ) from None
    return state, saved_world


def open_run(recipe: Recipe, run_dir: Path, overwrite: bool, resume: bool, held: ExitStack) -> Recipe:
    """Rank 0: a new run folder with its recipe written first (a crashed run is still explained), or the
    saved recipe of the run to resume; either way the folder's lock is held in `held` until training ends."""
    if resume:
        open_for_resume(run_dir, held)
        recipe = resumable(recipe, load_recipe(run_dir / "recipe.yaml"), run_dir)
    else:
        protected = {
            "the working directory": Path.cwd(),
            "the recipe": Path(recipe.file or "."),
            **{f"the data ({f})": Path(f) for f in source_files(recipe.data.source)[0]},  # every file of a glob
        }
        prepare_run_dir(run_dir, overwrite, protected, held)
    atomic_write(run_dir / "recipe.yaml", dump_recipe(recipe))
    return recipe


def resume(recipe, model, runner, gen, run_dir: Path, console: Console, dist: Dist) -> TrainState:
    state, saved_world = restore(run_dir, model, runner, gen, recipe.seed, dist)
    with dist.together():
        if dist.main:  # epochs after the checkpoint were never saved whole: forget them
            records = read_epochs(run_dir / "metrics.jsonl", console.print)
            if len(records) < state.epoch:  # each epoch's line is written before its checkpoint
                raise UserError(
                    f"{run_dir}/last.pt: holds epoch {state.epoch}, but metrics.jsonl only "
                    f"{len(records)}; the two files are not of one run (retrain the run, or restore "
                    "the files)"
                )
            kept = [r for r in records if r["epoch"] <= state.epoch]
            atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
    if state.stopped or state.epoch >= recipe.train.epochs:
        why = "early stopping" if state.stopped else f"all {recipe.train.epochs} epochs"
        console.print(
            f"{run_dir}: training is finished ({why} after epoch {state.epoch}; best epoch "
            f"{state.best_epoch}); nothing left to resume, evaluating the best checkpoint"
        )
        return state
    console.print(f"resuming {run_dir} after epoch {state.epoch}")
    if saved_world != dist.world:
        console.print(
            f"note: the run was trained by {saved_world} process(es) and continues with {dist.world}: "
            "users are re-sharded and random streams reseeded, so it will not end with exactly "
            "the numbers of an uninterrupted run"
        )
    return state
