"""The training loop: seeding, device, progress, validation every epoch, early stopping, checkpoints, resume."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import data as data_mod
from .distributed import LOCAL, Dist, rank_seed, shard_users, to_cpu
from .errors import UserError
from .evaluate import evaluate, format_table, write_per_user
from .models import BACKBONES
from .recipe import Recipe, dump_recipe, load_recipe
from .runs import append_jsonl, atomic_write, read_jsonl, remove_stale_temps
from .transfer import make_epoch


def pick_device(name: str, dist: Dist = LOCAL) -> torch.device:
    """auto: CUDA when torch sees a GPU (under torchrun, the GPU of this process's LOCAL_RANK), else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but torch sees no CUDA device; use auto or cpu")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank % torch.cuda.device_count()) if dist.world > 1 else torch.device("cuda")


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "bf16" and device.type != "cuda":
        raise UserError("train.precision: bf16 autocast runs on CUDA only, and this run trains on the CPU "
                        "(no CUDA device, or train.device: cpu); use precision: fp32")


def build_model(recipe: Recipe, seqs: data_mod.Sequences) -> torch.nn.Module:
    cfg = recipe.backbone.model_dump(exclude={"kind"})
    try:
        model = BACKBONES[recipe.backbone.kind](seqs.n_items, recipe.data.max_len, **cfg)
    except ValueError as exc:
        raise UserError(f"backbone: {exc}") from None
    if recipe.backbone.kind == "pop":
        model.fit(torch.from_numpy(seqs.item_counts()).float())
    return model


def fingerprint(seqs: data_mod.Sequences) -> str:
    h = hashlib.sha256()
    for arr in (seqs.items, seqs.offsets, seqs.role, seqs.head):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


# Keys added after runs were already saved, with the value that those runs used (their recipe.yaml, written
# resolved, simply lacks the key): an old run must load the model it was trained as.
LEGACY = {("backbone", "input_norm", "sasrec"): "false", ("train", "length_buckets", None): "true"}


def _legacy_overrides(path: Path) -> list[str]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []  # load_recipe reports the problem
    out = []
    for (section, key, kind), value in LEGACY.items():
        part = raw.get(section) if isinstance(raw, dict) else None
        if isinstance(part, dict) and key not in part and (kind is None or part.get("kind") == kind):
            out.append(f"{section}.{key}={value}")
    return out


def load_run(run_dir: Path, overrides: list[str] | None = None) -> tuple[Recipe, data_mod.Sequences]:
    """The run's recipe (with `overrides`) and its data, checked to be the data the run was trained on."""
    recipe = load_recipe(run_dir / "recipe.yaml", _legacy_overrides(run_dir / "recipe.yaml") + list(overrides or []))
    seqs = load_data(recipe)
    try:
        saved = json.loads((run_dir / "data.json").read_text()) if (run_dir / "data.json").exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict):
        raise UserError(f"{run_dir}/data.json: not the JSON object `ltrec train` writes; retrain the run")
    if saved.get("fingerprint") not in (None, fingerprint(seqs)):
        raise UserError(f"{run_dir}: the data at {recipe.data.source} changed since this run was trained")
    return recipe, seqs


def load_data(recipe: Recipe) -> data_mod.Sequences:
    """The recipe's data; errors also name the recipe file (a data problem is fixed there)."""
    try:
        return data_mod.load(recipe.data, recipe.split, recipe.head, recipe.seed)
    except UserError as exc:
        where = recipe._file
        raise UserError(f"{where}: {exc}" if where and not str(exc).startswith(where) else str(exc)) from None


def check_eval(recipe: Recipe, seqs: data_mod.Sequences) -> None:
    """Fail before training, not after: the monitored slice must have users, and sampled evaluation needs
    eval.negatives items outside each user's target and history."""
    which = recipe.train.monitor.slice
    evaluated = seqs.role == data_mod.EVAL
    users = {"all": evaluated, "head": evaluated & seqs.head, "tail": evaluated & ~seqs.head}[which]
    if recipe.backbone.kind != "pop" and not users.any():
        raise UserError(f"train.monitor.slice: no evaluated user is {which} (head = at least "
                        f"{seqs.head_threshold} training events), so no epoch could be picked; monitor another "
                        "slice or change head.fraction / head.count")
    if recipe.eval.mode != "sampled":
        return
    for split in ("valid", "test"):
        for cold in (False, True):
            _, history, target = seqs.eval_inputs(split, recipe.data.max_len, cold)
            items = np.sort(np.concatenate([target[:, None], history], axis=1), axis=1)  # (B, L + 1)
            new = np.ones(items.shape, bool)
            new[:, 1:] = items[:, 1:] != items[:, :-1]
            eligible = seqs.n_items - (new & (items > 0)).sum(axis=1)  # (B,)
            if len(eligible) and eligible.min() < recipe.eval.negatives:
                raise UserError(f"eval.negatives: {recipe.eval.negatives} negatives per user, but some user has "
                                f"only {eligible.min()} items besides the target and history ({seqs.n_items} "
                                "items in all); lower eval.negatives")


def save_torch(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def load_torch(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and why, no traceback
        raise UserError(f"{path}: not a readable ltrec checkpoint ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from None


def load_weights(model: torch.nn.Module, path: Path) -> dict:
    """Load a checkpoint's model weights into `model`; a checkpoint of another model is a clear error."""
    ckpt = load_torch(path)
    try:
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UserError(f"{path}: does not hold this run's model ({type(exc).__name__}: {first}); "
                        "was it copied from another run?") from None
    return ckpt


def prepare_run_dir(recipe: Recipe, out: Path | None, overwrite: bool, resume: bool) -> Path:
    run_dir = out or Path(recipe.output.dir) / recipe.name
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"{run_dir}: exists and is not a directory; choose another --out")
        if resume:
            if not (run_dir / "last.pt").exists():
                raise UserError(f"{run_dir}: nothing to resume (no last.pt); start without --resume")
            remove_stale_temps(run_dir)  # a killed run's half-written temp files; the real files are whole
            return run_dir
        if run_dir.exists() and any(run_dir.iterdir()):
            if not overwrite:
                raise UserError(f"{run_dir}: already exists; pass --overwrite to replace it or --resume to continue")
            if not _is_run(run_dir):  # --overwrite deletes the folder: only ever a run
                raise UserError(f"{run_dir}: not an ltrec run (no recipe.yaml), so --overwrite will not delete it; "
                                "choose another --out or output.dir")
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{run_dir}: cannot prepare the run directory ({exc.strerror or exc})") from None
    return run_dir


def _is_run(folder: Path) -> bool:
    """A run (its recipe.yaml is written first), or what a run killed at once left: atomic_write's temp files."""
    return (folder / "recipe.yaml").is_file() or all(p.name.startswith(".") and p.name.endswith(".tmp")
                                                     for p in folder.iterdir())


CHECKPOINT_FORMAT = 1
RESUME_MAY_CHANGE = ("epochs", "patience", "threads", "device", "precision")


def _resumable(given: Recipe, saved: Recipe, run_dir: Path) -> Recipe:
    """The saved recipe, with only the train settings that do not change the experiment taken from `given`."""
    changes = {k: getattr(given.train, k) for k in RESUME_MAY_CHANGE}
    merged = saved.model_copy(update={"train": saved.train.model_copy(update=changes)})
    a = given.model_dump(exclude={"train": set(RESUME_MAY_CHANGE)})
    b = merged.model_dump(exclude={"train": set(RESUME_MAY_CHANGE)})
    diff = sorted(f"{section}" for section in a if a[section] != b[section])
    if diff:
        raise UserError(f"{run_dir}: --resume continues the same experiment, but the recipe differs in "
                        f"{', '.join(diff)} (only train.{'/'.join(RESUME_MAY_CHANGE)} may change); "
                        "start a new run instead")
    return merged


def train(recipe: Recipe, out: Path | None = None, overwrite: bool = False, resume: bool = False,
          console: Console | None = None, dist: Dist = LOCAL) -> Path:
    """Train a recipe into a run directory. Under torchrun (`dist.world > 1`) every rank calls this: rank 0
    alone writes the run directory and prints; the others train on their shard and evaluate theirs."""
    console = console or Console(stderr=True, soft_wrap=True)
    if not dist.main:
        console = Console(stderr=True, quiet=True)
    recipe = recipe.model_copy(deep=True)
    recipe.data.source = str(Path(recipe.data.source).expanduser().absolute())
    device = pick_device(recipe.train.device, dist)  # before anything is written: a wrong device is a recipe error
    check_precision(recipe.train.precision, device)
    run_dir = None
    with dist.together():
        if dist.main:
            run_dir = prepare_run_dir(recipe, out, overwrite, resume)
            if resume:
                saved = run_dir / "recipe.yaml"
                recipe = _resumable(recipe, load_recipe(saved, _legacy_overrides(saved)), run_dir)
                atomic_write(run_dir / "recipe.yaml", dump_recipe(recipe))
            else:
                atomic_write(run_dir / "recipe.yaml", dump_recipe(recipe))  # first: a crashed run is still explained
    run_dir, recipe = dist.broadcast((run_dir, recipe))
    with dist.together():
        seqs = load_data(recipe)
        check_eval(recipe, seqs)
    console.print(f"data: {seqs.describe()}")
    with dist.together():
        if dist.main:
            atomic_write(run_dir / "data.json", json.dumps({"fingerprint": fingerprint(seqs), **seqs.report,
                                                             "head_threshold": seqs.head_threshold}, indent=2))
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    torch.manual_seed(recipe.seed)
    with dist.together():
        model = build_model(recipe, seqs).to(device)
    if recipe.backbone.kind != "pop":
        _fit(recipe, seqs, model, run_dir, device, resume, console, dist)
    return finish(recipe, seqs, model, run_dir, device, console, dist)


def _everywhere(message: str, dist: Dist) -> UserError:
    """An error every rank raises at the same point (from synchronised values): printed once, by rank 0."""
    exc = UserError(message)
    exc.echo = dist.main
    return exc


def _fit(recipe, seqs, model, run_dir: Path, device, resume: bool, console: Console, dist: Dist = LOCAL) -> None:
    cfg = recipe.train
    windows = seqs.train_windows(recipe.data.max_len, recipe.data.stride)
    if dist.world > 1:  # each rank trains on its own users' windows
        mine = shard_users(windows[2], dist.rank, dist.world, recipe.seed)
        windows = tuple(a[mine] for a in windows)
    inputs, targets, owner = (torch.from_numpy(a) for a in windows)
    gen = torch.Generator().manual_seed(rank_seed(recipe.seed, dist.rank))
    epoch_fn = make_epoch(recipe, model, seqs, inputs, targets, owner, device, gen, dist)
    if dist.world > 1:
        dist.broadcast_params_(epoch_fn.step.parameters())  # one start for all (the seed makes it so already)
        if dist.rank > 0:  # dropout masks of different ranks must differ
            torch.manual_seed(rank_seed(recipe.seed, dist.rank))
    state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad": 0}
    if resume:
        ckpt = None
        with dist.together():
            if dist.main:
                ckpt = load_torch(run_dir / "last.pt")
                if ckpt.get("format") != CHECKPOINT_FORMAT:
                    raise UserError(f"{run_dir}/last.pt: checkpoint format {ckpt.get('format')} is not "
                                    f"{CHECKPOINT_FORMAT} (written by another ltrec version); start a new run")
        ckpt = dist.broadcast(ckpt)  # rank 0's file: other machines need not see the run directory
        saved_world = ckpt.get("world", 1) if isinstance(ckpt, dict) else 1
        with dist.together():
            try:
                model.load_state_dict(ckpt["model"])
                epoch_fn.load_state_dict(ckpt["optim"])
                if saved_world != dist.world:  # other shards: no way to continue the old streams; reseed
                    reseed = rank_seed(recipe.seed + 1 + int(ckpt["epoch"]), dist.rank)
                    torch.manual_seed(reseed)
                    gen.manual_seed(reseed)
                elif dist.world == 1:
                    torch.set_rng_state(ckpt["rng"])
                    gen.set_state(ckpt["gen"])
                else:  # each rank continues its own random streams and inner optimiser
                    mine = ckpt["ranks"][dist.rank]
                    torch.set_rng_state(mine["rng"])
                    gen.set_state(mine["gen"])
                    epoch_fn.load_rank_state(mine["state"])
                state = {k: ckpt[k] for k in state}
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
                raise UserError(f"{run_dir}/last.pt: does not match this run ({type(exc).__name__}); "
                                "start a new run") from None
        with dist.together():
            if dist.main:
                kept = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["epoch"] <= state["epoch"]]
                atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
        console.print(f"resuming {run_dir} after epoch {state['epoch']}")
        if saved_world != dist.world:
            console.print(f"note: the run was trained by {saved_world} process(es) and continues with {dist.world}: "
                          "users are re-sharded and random streams reseeded, so it will not end with exactly "
                          "the numbers of an uninterrupted run")
    metric, which = cfg.monitor.metric, cfg.monitor.slice
    with _progress(console) as progress:
        task = progress.add_task("train", total=cfg.epochs * len(inputs), completed=state["epoch"] * len(inputs),
                                 loss=float("nan"), rate=0.0)
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            progress.update(task, description=f"epoch {epoch}/{cfg.epochs}")
            t0, seen = time.perf_counter(), 0

            def on_batch(n: int, loss: float) -> None:
                nonlocal seen
                seen += n
                progress.update(task, advance=n, loss=loss, rate=seen / max(time.perf_counter() - t0, 1e-9))

            stats = epoch_fn(on_batch)
            seconds = time.perf_counter() - t0
            finite = all(bool(torch.isfinite(p).all()) for p in epoch_fn.step.parameters())
            if not math.isfinite(stats["loss"]) or not finite:  # last.pt is not overwritten: it stays good
                kept = (f"{run_dir}/last.pt holds epoch {state['epoch']}, the last good one" if state["epoch"]
                        else "no checkpoint was written")
                # loss and weights are the same on every rank (summed stats, averaged updates): all stop here
                raise _everywhere(f"training diverged at epoch {epoch} (loss {stats['loss']:.4g}, "
                                  f"{'finite' if finite else 'non-finite'} weights, {stats['skipped']} batches "
                                  f"skipped for a non-finite loss); {kept}; lower train.lr and rerun with "
                                  "--overwrite", dist)
            adv = recipe.transfer.adversarial
            if adv is not None:  # a discriminator that is always right: the states still tell head from tail
                stats["disc_wins"] = epoch > adv.warmup_epochs and stats["disc_acc"] >= DISC_WINS
            valid = evaluate(model, seqs, "valid", recipe.eval, recipe.data.max_len, device,
                             run_dir / "negatives_valid.npy" if dist.main else None, recipe.seed,
                             dist=dist).table(("all", "head", "tail"))
            score = valid[which][metric]  # gathered: the same on every rank, so is every decision below
            improved = score > state["best"]
            state.update(epoch=epoch, bad=0 if improved else state["bad"] + 1)
            if improved:
                state.update(best=score, best_epoch=epoch)
            ranks = None
            if dist.world > 1:  # every rank's random streams (and GA's inner optimiser), for an exact resume
                ranks = dist.gather(to_cpu({"rng": torch.get_rng_state(), "gen": gen.get_state(),
                                            "state": epoch_fn.rank_state()}))
            with dist.together():
                if dist.main:
                    if improved:
                        save_torch(run_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch})
                    append_jsonl(run_dir / "metrics.jsonl", {"epoch": epoch, "seconds": round(seconds, 3), **stats,
                                                             "valid": valid})
                    extra = {"world": dist.world, "ranks": ranks} if dist.world > 1 else {}
                    save_torch(run_dir / "last.pt", {"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                                                     "optim": epoch_fn.state_dict(),
                                                     "rng": torch.get_rng_state(), "gen": gen.get_state(),
                                                     **state, **extra})
            progress.console.print(
                f"epoch {epoch}: loss {stats['loss']:.4f}, {seconds:.1f}s, valid {metric} "
                + ", ".join(f"{s} {valid[s][metric]:.4f}" for s in ("all", "head", "tail"))
                + (" *" if improved else "") + _extra(stats)
                + (f", skipped {stats['skipped']} batches with a non-finite loss" if stats["skipped"] else ""))
            if stats.get("disc_wins"):
                progress.console.print(
                    f"warning: epoch {epoch}: the discriminator separates head from tail users almost perfectly "
                    f"(balanced accuracy {stats['disc_acc']:.3f} ≥ {DISC_WINS}), so the adversarial term no longer "
                    "makes user states frequency-agnostic; try another transfer.adversarial.weight (λ) or lr")
            if state["bad"] >= cfg.patience:
                progress.console.print(f"early stop: no better valid {which} {metric} for {cfg.patience} epochs")
                break


DISC_WINS = 0.99  # balanced accuracy from which the discriminator is said to win (0.5 = chance)


def _extra(stats: dict) -> str:
    return "".join(f", {k} {v:.3f}" for k, v in stats.items() if k not in ("loss", "skipped", "disc_wins"))


def finish(recipe, seqs, model, run_dir: Path, device, console: Console, dist: Dist = LOCAL) -> Path:
    history = []
    with dist.together():
        if dist.main:
            if (run_dir / "best.pt").exists():
                load_weights(model, run_dir / "best.pt")
            else:  # pop: nothing trained, but export and eval need a checkpoint all the same
                save_torch(run_dir / "best.pt", {"model": model.state_dict(), "epoch": 0})
            history = read_jsonl(run_dir / "metrics.jsonl")
    if dist.world > 1:  # rank 0 read best.pt; the others get its weights
        model.load_state_dict(dist.broadcast(to_cpu(model.state_dict()) if dist.main else None))
    summary = {"best_epoch": max(history, key=lambda r: r["valid"][recipe.train.monitor.slice]
                                 [recipe.train.monitor.metric])["epoch"] if history else 0,
               "epochs": len(history),
               "seconds_per_epoch": float(np.mean([r["seconds"] for r in history])) if history else 0.0}
    for split in ("valid", "test"):
        result = evaluate(model, seqs, split, recipe.eval, recipe.data.max_len, device,
                          run_dir / f"negatives_{split}.npy" if dist.main else None, recipe.seed, dist=dist)
        summary[split] = result.table()
        summary["protocol"] = result.protocol
        with dist.together():
            if dist.main:
                write_per_user(result, seqs, run_dir / f"users_{split}.csv")
    with dist.together():
        if dist.main:
            atomic_write(run_dir / "metrics.json", json.dumps(summary, indent=2))
    console.print(format_table(summary["test"], summary["protocol"], "test", recipe.eval.ks))
    console.print(f"run: {run_dir}  (next: ltrec eval {run_dir} --slice tail; pictures: ltrec report {run_dir})")
    return run_dir


def _progress(console: Console) -> Progress:
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
               TextColumn("{task.fields[rate]:,.0f} seq/s"), TimeElapsedColumn(), TimeRemainingColumn()]
    # not a terminal (CI, a log file): no bar, the per-epoch lines printed above are the progress
    return Progress(*columns, console=console, disable=not console.is_terminal)
