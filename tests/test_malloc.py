"""emilia_pipe.malloc: large blocks are reused, not faulted in afresh each time (page faults are counted,
not timed)."""
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from emilia_pipe.malloc import tune_malloc
    assert tune_malloc(512)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(75_000_000, np.float32)  # 300 MB, about one layer's attention scores of 4 clips in Whisper's encoder
before = faults()
for _ in range(5):
    np.ones(75_000_000, np.float32).sum()
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_large_blocks_are_reused_instead_of_faulted_in_again():
    counts = {mode: int(subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("plain", "tuned")}
    # measured: plain 3406 faults (every block faulted in anew; numpy asks for 2 MiB huge pages, so at least
    # 150 per block, 73k with 4 KiB pages), tuned 1 (the heap is reused)
    assert counts["plain"] >= 5 * 150
    assert counts["tuned"] < counts["plain"] / 20, counts
