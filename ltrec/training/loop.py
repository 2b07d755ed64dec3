"""The training loop: one epoch after another, validation after each, early stopping, checkpoints.

How an epoch updates the model (plain training, gradient alignment, adversarial training, ...) is the
business of `ltrec.training.transfer`; saving and resuming, of `ltrec.runtime.checkpoint`. Under torchrun every rank
runs this same code on its own users (`distributed.shard_users`); rank 0 alone writes the run folder and prints.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ltrec.ensemble.runs import check_members
from ltrec.evaluation.engine import Evaluator
from ltrec.files.errors import UserError
from ltrec.files.runs import append_epoch
from ltrec.files.safe import atomic_write
from ltrec.recipe import Recipe
from ltrec.runtime import checkpoint
from ltrec.runtime.allocator import keep_freed_memory, release_freed_memory
from ltrec.runtime.build import build_model, check_precision, fingerprint, load_data, pick_device
from ltrec.runtime.distributed import LOCAL, Dist, rank_seed, shard_users
from ltrec.training.checks import check_eval
from ltrec.training.finish import finish
from ltrec.training.transfer import make_runner

DISC_WINS = 0.99  # balanced accuracy from which the discriminator is said to win (0.5 = chance)


def train(
    recipe: Recipe,
    out: Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    console: Console | None = None,
    dist: Dist = LOCAL,
) -> Path:
    """Train a recipe into a run directory; returns it."""
    console = console or Console(stderr=True, soft_wrap=True, quiet=not dist.main)
    recipe = recipe.model_copy(deep=True)
    recipe.data.source = os.path.abspath(os.path.expanduser(recipe.data.source))
    device = pick_device(recipe.train.device, dist)  # before anything is written: a wrong device is a recipe error
    check_precision(recipe.train.precision, device)
    run_dir = out or Path(recipe.output.dir) / recipe.name
    with ExitStack() as held:  # rank 0 holds the run folder's lock until the run is written
        with dist.together():
            if dist.main:
                recipe = checkpoint.open_run(recipe, run_dir, overwrite, resume, held)
        return _train(recipe, run_dir, device, resume, console, dist)


def _train(recipe: Recipe, run_dir: Path, device, resume: bool, console: Console, dist: Dist) -> Path:
    recipe = dist.broadcast(recipe)
    with dist.together():
        seqs = load_data(recipe)
        check_eval(recipe, seqs)
        check_members(recipe.eval.ensemble, seqs, run_dir)
    console.print(f"data: {seqs.describe()}")
    with dist.together():
        if dist.main:
            atomic_write(
                run_dir / "data.json",
                json.dumps(
                    {"fingerprint": fingerprint(seqs), **seqs.report, "head_threshold": seqs.head_threshold}, indent=2
                ),
            )
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    keep_freed_memory()
    torch.manual_seed(recipe.seed)
    with dist.together():
        model = build_model(recipe, seqs).to(device)
    evaluator = Evaluator(model, seqs, recipe.eval, recipe.data.max_len, device, run_dir, recipe.seed, dist)
    if model.trainable:
        fit(recipe, seqs, model, evaluator, run_dir, resume, console, dist)
    return finish(recipe, seqs, model, evaluator, run_dir, console, dist)


def fit(
    recipe: Recipe, seqs, model, evaluator: Evaluator, run_dir: Path, resume: bool, console: Console, dist: Dist = LOCAL
) -> None:
    cfg, metric, which = recipe.train, recipe.train.monitor.metric, recipe.train.monitor.slice
    windows = seqs.train_windows(recipe.data.max_len, recipe.data.stride)
    if dist.world > 1:  # each rank trains on its own users' windows
        mine = shard_users(windows[2], dist.rank, dist.world, recipe.seed)
        windows = tuple(a[mine] for a in windows)
    gen = torch.Generator().manual_seed(rank_seed(recipe.seed, dist.rank))
    runner = make_runner(recipe, model, seqs, windows, evaluator.device, gen, dist)
    dist.broadcast_params_(runner.parameters())  # one start for all ranks (the seed makes it so already)
    if dist.rank > 0:  # dropout masks of different ranks must differ
        torch.manual_seed(rank_seed(recipe.seed, dist.rank))
    state = checkpoint.TrainState()
    if resume:
        state = checkpoint.resume(recipe, model, runner, gen, run_dir, console, dist)
    n_windows = len(windows[0])
    with _progress(console) as progress:
        task = progress.add_task("train", total=cfg.epochs * n_windows, completed=state.epoch * n_windows, status="")
        while state.epoch < cfg.epochs and not state.stopped:
            epoch = state.epoch + 1
            progress.update(task, description=f"epoch {epoch}/{cfg.epochs}")
            t0, seen = time.perf_counter(), 0

            def on_batch(n: int, loss: float) -> None:
                nonlocal seen
                seen += n
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                progress.update(task, advance=n, status=f"loss {loss:.4f}, {rate:,.0f} seq/s")

            stats = runner(on_batch)
            release_freed_memory()
            seconds = time.perf_counter() - t0
            adv = recipe.transfer.adversarial
            if adv is not None:  # a discriminator that is always right: the states still tell head from tail
                stats["disc_wins"] = epoch > adv.warmup_epochs and stats["disc_acc"] >= DISC_WINS
            _check_finite(stats, runner, state, epoch, run_dir, dist)
            valid = evaluator.run("valid").table(("all", "head", "tail"))
            improved = state.update(valid[which][metric], cfg.patience)  # gathered: the same on every rank
            with dist.together():
                if dist.main:
                    if improved:
                        checkpoint.save_torch(run_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch})
                    append_epoch(
                        run_dir / "metrics.jsonl",
                        {"epoch": epoch, "seconds": round(seconds, 3), **stats, "valid": valid},
                    )
            checkpoint.save_last(run_dir, model, runner, state, gen, dist)
            progress.console.print(
                f"epoch {epoch}: loss {stats['loss']:.4f}, {seconds:.1f}s, valid {metric} "
                + ", ".join(f"{s} {valid[s][metric]:.4f}" for s in ("all", "head", "tail"))
                + (" *" if improved else "")
                + "".join(f", {k} {v:.3f}" for k, v in stats.items() if isinstance(v, float) and k != "loss")
                + (f", skipped {stats['skipped']} batches with a non-finite loss" if stats["skipped"] else "")
            )
            if stats.get("disc_wins"):
                progress.console.print(
                    f"warning: epoch {epoch}: the discriminator separates head from tail users almost perfectly "
                    f"(balanced accuracy {stats['disc_acc']:.3f} ≥ {DISC_WINS}), so the adversarial term no longer "
                    "makes user states frequency-agnostic; try another transfer.adversarial.weight (λ) or lr"
                )
            if state.stopped:
                progress.console.print(f"early stop: no better valid {which} {metric} for {cfg.patience} epochs")


def _check_finite(stats: dict, runner, state, epoch: int, run_dir: Path, dist: Dist) -> None:
    """A diverged epoch ends the run; last.pt is not overwritten, so it keeps the last good epoch. Loss and
    weights are the same on every rank (summed stats, averaged updates): every rank stops here together."""
    finite = all(bool(torch.isfinite(p).all()) for p in runner.parameters())
    if math.isfinite(stats["loss"]) and finite:
        return
    kept = (
        f"{run_dir}/last.pt holds epoch {state.epoch}, the last good one"
        if state.epoch
        else "no checkpoint was written"
    )
    exc = UserError(
        f"training diverged at epoch {epoch} (loss {stats['loss']:.4g}, "
        f"{'finite' if finite else 'non-finite'} weights, {stats['skipped']} batches skipped for a "
        f"non-finite loss); {kept}; lower train.lr and rerun with --overwrite"
    )
    exc.echo = dist.main  # printed once
    raise exc


def _progress(console: Console) -> Progress:
    # loss and speed appear once the first batch is done (not `nan` / `0 seq/s` before it)
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    # not a terminal (CI, a log file): no bar, the per-epoch lines are the progress
    return Progress(*columns, console=console, disable=not console.is_terminal)
