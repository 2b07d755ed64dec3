"""Running a sweep: every run is a real `ltrec train` process, `--jobs` at a time with the cores split between
them. A grid is trained first (its arm's combinations at the first seed); the combination best on the
validation split then runs at every seed. The sweep's state is written after every change to `sweep.json`,
so a killed sweep continues where it stopped (`--resume`): finished runs are kept, interrupted ones resume
from their last checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ltrec.files.errors import UserError
from ltrec.files.lock import LOCK, holder
from ltrec.files.runs import MARKER, Summary, read_json
from ltrec.files.safe import atomic_write, read_bytes
from ltrec.files.sweeps import STATE, RunState, SweepState, read_state
from ltrec.recipe import load_recipe
from ltrec.runtime.lifeline import child_env
from ltrec.sweep.plan import Plan, overrides, point_names, points


@dataclass
class Job:
    arm: str
    seed: int
    sets: list[str]
    folder: str  # relative to the sweep folder
    point: list[str] = field(default_factory=list)
    status: str = "pending"  # pending | running | done | failed
    proc: subprocess.Popen | None = None
    started: float = 0.0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def finished(run: Path) -> bool:
    return (run / "metrics.json").is_file() and (run / MARKER).is_file()


class Sweep:
    def __init__(
        self, plan: Plan, base: Path, plan_path: Path, out: Path, jobs: int, fail_fast: bool, console: Console
    ):
        self.plan, self.base, self.out, self.jobs, self.fail_fast = plan, base, out, jobs, fail_fast
        self.console, self.plan_path = console, plan_path
        self.threads = max(1, (os.cpu_count() or 1) // jobs)
        self.recipe = load_recipe(base)
        self.state = SweepState(plan=str(plan_path.resolve()), recipe=str(base), baseline=plan.baseline)
        self.queue: list[Job] = []
        for arm in plan.arms:
            if not arm.at_baseline:  # the others wait for the baseline's choice (_grid_done)
                self._queue_arm(arm)

    def _queue_arm(self, arm) -> None:
        if arm.grid:
            self.queue += [
                self._job(arm, point, self.plan.seeds[0], f"grid/{arm.name}/{name}")
                for point, name in zip(points(arm), point_names(arm))
            ]
        else:
            self.state.chosen[arm.name] = []
            self.queue += [self._job(arm, [], seed) for seed in self.plan.seeds]

    def _job(self, arm, point: list[str], seed: int, folder: str | None = None) -> Job:
        inherited = self.state.chosen[self.plan.baseline] if arm.at_baseline else []
        sets = overrides(self.plan, self.recipe, arm, [*inherited, *point], seed)
        return Job(arm.name, seed, sets, folder or f"{arm.name}-s{seed}", point)

    # -- running --------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run everything not finished yet; returns the number of failed runs. The caller holds the sweep
        folder's lock."""
        live = (
            Live(self._view(), console=self.console, refresh_per_second=1, transient=True)
            if self.console.is_terminal
            else None
        )
        # runs are process groups of their own (so one Ctrl-C is not every run's): a `kill` of the sweep must
        # stop them as Ctrl-C does, or they train on, orphaned (a `kill -9`: see ltrec.runtime.lifeline)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            self._save()
            (self.out / "logs").mkdir(exist_ok=True)
            if live:
                live.start()
            while any(j.status in ("pending", "running") for j in self.queue):
                self._launch()
                time.sleep(0.5)
                self._poll()
                if live:
                    live.update(self._view())
                if self.fail_fast and self.state.failed:
                    break
        except KeyboardInterrupt:
            self._stop()
            raise UserError(
                f"sweep stopped; continue it with: ltrec sweep {self.plan_path} --out {self.out} --resume"
            ) from None
        except OSError as exc:  # a run folder or log the file system refuses (a name too long, a full disk)
            self._stop()
            raise UserError(
                f"{exc.filename or self.out}: {exc.strerror or exc}; the sweep stopped its runs (continue "
                f"it with: ltrec sweep {self.plan_path} --out {self.out} --resume)"
            ) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
            self._stop()  # whatever ended the loop, an error included: no run trains on without its sweep
            if live:
                live.stop()
        return sum(1 for j in self.queue if j.status == "failed")

    def _launch(self) -> None:
        running = sum(1 for j in self.queue if j.status == "running")
        for job in self.queue:
            if running >= self.jobs:
                return
            if job.status != "pending":
                continue
            run = self.out / job.folder
            if finished(run):
                self._done(job, "finished before")
                continue
            busy = holder(run)
            if busy is not None:  # --resume or --overwrite would be refused, or worse, race the other trainer
                raise busy
            flags = ["--resume"] if (run / "last.pt").is_file() else ["--overwrite"] if run.exists() else []
            cmd = [
                sys.executable,
                "-m",
                "ltrec",
                "train",
                str(self.base),
                "--out",
                str(run),
                *flags,
                *(a for s in [*job.sets, f"train.threads={self.threads}"] for a in ("--set", s)),
            ]
            env = {
                **os.environ,
                "OMP_NUM_THREADS": str(self.threads),
                "PYTHONUNBUFFERED": "1",
                "COLUMNS": "200",
                **child_env(),
            }
            with open(self._log(job), "a") as log:
                job.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            job.status, job.started = "running", time.time()
            running += 1

    def _poll(self) -> None:
        for job in self.queue:
            if job.status != "running" or job.proc.poll() is None:
                continue
            if job.proc.returncode == 0 and finished(self.out / job.folder):
                self._done(job, f"{time.time() - job.started:.0f}s")
            else:
                job.status = "failed"
                self.state.failed[job.folder] = str(self._log(job))
                self.console.print(f"failed: {job.folder} (exit {job.proc.returncode}); log: {self._log(job)}")
                self._grid_done(job.arm)
            self._save()

    def _done(self, job: Job, how: str) -> None:
        job.status = "done"
        if not self.console.is_terminal:
            self.console.print(f"done: {job.folder} ({how})")
        self._grid_done(job.arm)
        self._save()

    def _grid_done(self, name: str) -> None:
        """Once every grid run of an arm has ended: pick the combination best on validation, run it at every
        seed (the first seed's run is the grid run itself, copied)."""
        arm = next(a for a in self.plan.arms if a.name == name)
        grid = [j for j in self.queue if j.arm == name and j.folder.startswith("grid/")]
        if not arm.grid or name in self.state.chosen or any(j.status in ("pending", "running") for j in grid):
            return
        sel = self.plan.select
        scores = {
            j.folder: read_json(self.out / j.folder / "metrics.json", Summary).valid[sel.slice][sel.metric]
            for j in grid
            if j.status == "done"
        }
        self.state.grid[name] = [
            {
                "point": j.point,
                "folder": j.folder,
                "status": j.status,
                f"valid {sel.slice} {sel.metric}": scores.get(j.folder),
            }
            for j in grid
        ]
        if not scores:
            self.state.failed[name] = "every grid combination failed"
            for waiting in self._waiting(name):
                self.state.failed[waiting.name] = f"not run: it trains at {name}'s choice, and {name} has none"
            return
        best = next(j for j in grid if j.folder == max(scores, key=scores.get))
        self.state.chosen[name] = best.point
        self.console.print(
            f"{name}: {', '.join(best.point)} chosen on validation ({sel.slice} {sel.metric} {scores[best.folder]:.4f})"
        )
        for seed in self.plan.seeds:
            job = self._job(arm, best.point, seed)
            run = self.out / job.folder
            if seed == best.seed and not finished(run):  # the same recipe and seed: the same run
                busy = holder(run)
                if busy is not None:
                    raise busy
                shutil.rmtree(run, ignore_errors=True)
                shutil.copytree(self.out / best.folder, run, ignore=shutil.ignore_patterns(LOCK))
            self.queue.append(job)
        for waiting in self._waiting(name):
            self._queue_arm(waiting)

    def _waiting(self, name: str) -> list:
        """The arms that wait for `name`'s grid: the at_baseline arms, if `name` is the baseline."""
        return [a for a in self.plan.arms if a.at_baseline] if name == self.plan.baseline else []

    def _stop(self) -> None:
        for job in self.queue:
            if job.status == "running" and job.proc.poll() is None:
                try:
                    os.killpg(job.proc.pid, signal.SIGTERM)
                except ProcessLookupError:  # ended meanwhile
                    pass
                job.proc.wait()
                job.status = "pending"

    def _log(self, job: Job) -> Path:
        return self.out / "logs" / (job.folder.replace("/", "__") + ".log")

    def _save(self) -> None:
        self.state.runs = [
            RunState(folder=j.folder, arm=j.arm, seed=j.seed, status=j.status, set=j.sets) for j in self.queue
        ]
        atomic_write(self.out / STATE, self.state.model_dump_json(indent=1))

    def _view(self) -> Table:
        counts = {s: sum(1 for j in self.queue if j.status == s) for s in ("done", "running", "pending", "failed")}
        table = Table(
            title=f"sweep {self.out}: {counts['done']} done, {counts['running']} running, "
            f"{counts['pending']} left, {counts['failed']} failed",
            title_justify="left",
        )
        table.add_column("run")
        table.add_column("epoch", justify="right")
        for job in self.queue:
            if job.status == "running":
                try:
                    epochs = read_bytes(self.out / job.folder / "metrics.jsonl", "run file").count(b"\n")
                except UserError:  # not written yet
                    epochs = 0
                table.add_row(job.folder, f"{epochs} done, {time.time() - job.started:.0f}s")
        return table


def sweep_folder(path: Path) -> SweepState | None:
    """The state of a sweep folder (None if `path` is not one), validated."""
    return read_state(path)
