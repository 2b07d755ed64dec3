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
