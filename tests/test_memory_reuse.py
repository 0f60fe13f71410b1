"""plumbing/compat.py keeps freed arrays mapped (glibc's mallopt): allocating an array of the size just freed must
not fault pages in again, as it does with glibc's defaults (measured too, so that the test can tell them apart)."""
import subprocess
import sys

from conftest import REPO

PROGRAM = """
import resource, sys
import numpy as np
if sys.argv[1] == "compat":
    from plumbing import compat
np.ones(6 << 20, np.float32)            # 24 MiB, allocated, touched and freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(6 << 20, np.float32)            # the same size again
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode):
    """Page faults while a second 24 MiB array is allocated and filled, in a fresh process (with or without compat)."""
    result = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, cwd=REPO,
                            check=True)
    return int(result.stdout.split()[-1])


def test_a_freed_array_is_reused_without_faulting_its_pages_again():
    plain, kept = page_faults("plain"), page_faults("compat")
    assert plain >= 12  # glibc's defaults: mapped and zero-filled again (at least one fault per 2 MiB huge page)
    assert kept * 10 < plain
