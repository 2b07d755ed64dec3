"""Processes that end with the process that started them, however it ends.

A sweep starts each run in a session of its own (so a Ctrl-C in the terminal reaches the sweep, which stops
its runs in order). A sweep ended by `kill -9` gets no chance to do that, and its runs would train on as
orphans; a later `--resume` would then start a second trainer on the same run folder. So the sweep names
itself in the environment of every run (`LTREC_PARENT_PID`), and the run, first thing, asks the kernel for
SIGKILL when its parent ends (Linux: `prctl(PR_SET_PDEATHSIG)`); elsewhere a watchdog thread polls the
parent's pid. Every run file is written atomically, so a run killed this way resumes like any killed run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

ENV = "LTREC_PARENT_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.5


def child_env() -> dict[str, str]:
    """The environment entry that binds a child's life to this process (read by `bind` in the child)."""
    return {ENV: str(os.getpid())}


def _parent_death_signal() -> bool:
    """Ask the kernel to SIGKILL this process when its parent ends; False where that cannot be asked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _orphaned(parent: int) -> None:
    print(f"ltrec: the process that started this one (pid {parent}) has ended; stopping", file=sys.stderr, flush=True)
    os._exit(1)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    _orphaned(parent)


def bind(use_prctl: bool = True) -> None:
    """End this process when the process named in LTREC_PARENT_PID ends (nothing if the variable is unset).
    The variable is removed, so processes this one starts are not bound to its parent by mistake."""
    value = os.environ.pop(ENV, None)
    if not value:
        return
    try:
        parent = int(value)
    except ValueError:
        return
    if not (use_prctl and _parent_death_signal()):
        threading.Thread(target=_watch, args=(parent,), name="ltrec-lifeline", daemon=True).start()
    # the parent may have ended before the signal was asked for (while Python started): then it never comes
    if os.getppid() != parent:
        _orphaned(parent)
