"""ltrec.runtime.allocator: freed blocks are reused instead of mapped afresh on every training step."""

import subprocess
import sys

import pytest

from ltrec.runtime.allocator import keep_freed_memory

CHURN = """
import resource, sys, torch
from ltrec.runtime.allocator import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
x = torch.ones(4 << 20)  # warm up torch's own first allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):  # a step's worth of 32 MB blocks, allocated, written and freed
    y = torch.ones(8 << 20) * 2
    del y
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not keep_freed_memory(), reason="glibc's mallopt is not available here")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    # each 32 MB block fresh from mmap is 8,192 faults, 80 of them here; reused heap memory faults in once
    assert faults("kept") * 4 < faults("default")


HELD = """
import sys, torch
from ltrec.runtime.allocator import keep_freed_memory, release_freed_memory
assert keep_freed_memory()
blocks = [torch.ones(1 << 20) for _ in range(200)]  # 800 MB of 4 MB blocks from the heap
del blocks[:-1]  # all but the newest freed: the heap keeps them (below the trim threshold)
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
held = rss()
if sys.argv[1] == "release":
    release_freed_memory()
print(held, rss())
"""


@pytest.mark.skipif(not keep_freed_memory(), reason="glibc's mallopt is not available here")
def test_freed_memory_goes_back_after_an_epoch():
    def run(mode):
        out = subprocess.run([sys.executable, "-c", HELD, mode], capture_output=True, text=True, check=True)
        return [int(x) for x in out.stdout.split()]

    held, kept = run("keep")
    _, released = run("release")
    assert held > 700 and kept > 700  # kept for reuse
    assert released < 300  # handed back


def test_releasing_every_epoch_starts_no_process(monkeypatch):
    """find_library runs ldconfig in a child; once per process, not once per epoch (a forked child bears its
    parent's command line until it execs, which a sweep's process checks would count as another trainer)."""
    from ltrec.runtime.allocator import release_freed_memory

    release_freed_memory()
    started = []
    real = subprocess.Popen.__init__
    monkeypatch.setattr(subprocess.Popen, "__init__", lambda self, *a, **k: started.append(a) or real(self, *a, **k))
    for _ in range(3):
        release_freed_memory()
    assert started == []
