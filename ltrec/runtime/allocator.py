"""The C allocator's settings for training: keep freed memory for reuse instead of handing it back.

Every training step allocates and frees the same few tens of megabytes (logits chunks, activations, their
gradients). glibc serves blocks that large with fresh mmap calls and unmaps them on free, so each step pays a
page fault per 4 KiB touched — on a SASRec MovieLens-1M epoch about 7 million faults and a sixth of the CPU
time in the kernel (`bench/bench_epoch.py`). Raising the mmap and trim thresholds makes those blocks come
from, and return to, the heap, which the next step reuses; peak memory is unchanged. The trim threshold
is high because NARM's additive attention frees several (batch × L × L × dim) blocks per step: at 128 MB the
heap was handed back and refilled every step (bench_epoch.py on narm-music: 2.9 million faults, system time
19% of CPU time; at 1 GiB 0.19 million and 1%).

The price is free memory held between epochs: steps whose blocks differ in size (a batch encoded in groups
of similar length) leave the heap fragmented, and it grew epoch after epoch, up to that 1 GiB of free memory
on top of what training uses (SASRec on Amazon Music: 1.9 GB peak after 4 epochs). `release_freed_memory`
after each epoch hands the free pages back (1.07 GB), once an epoch rather than once a step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_BYTES = 64 << 20  # blocks below this come from the heap
TRIM_BYTES = 1 << 30  # free heap kept before memory goes back to the system


@functools.cache
def _libc():
    # once per process: find_library runs ldconfig in a child process, and a forked child bears its parent's
    # command line until it execs (a sweep's process checks would see a third trainer)
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (Linux only; elsewhere, or without glibc, nothing changes). True if set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = _libc()
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system (glibc's malloc_trim; elsewhere nothing). True if it did."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False
