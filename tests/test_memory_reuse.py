"""plumbing/compat.py keeps freed arrays mapped (glibc's mallopt): allocating an array of the size just freed must
not fault pages in again, as it does with glibc's defaults (measured too, so that the test can tell them apart)."""
import subprocess
import sys

from conftest import REPO

PROGRAM = """
import resource, sys
import numpy as np
size = int(sys.argv[2]) << 18           # MiB -> float32 elements
if sys.argv[1] != "plain":
    from plumbing import compat
if sys.argv[1] == "large":
    compat.keep_large_arrays_mapped()
np.ones(size, np.float32)               # allocated, touched and freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(size, np.float32)               # the same size again
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode, mib=24):
    """Page faults while a second array of `mib` MiB is allocated and filled, in a fresh process: without compat
    ("plain"), with compat ("compat"), with compat and keep_large_arrays_mapped ("large")."""
    result = subprocess.run([sys.executable, "-c", PROGRAM, mode, str(mib)], capture_output=True, text=True,
                            cwd=REPO, check=True)
    return int(result.stdout.split()[-1])


def test_a_freed_array_is_reused_without_faulting_its_pages_again():
    plain, kept = page_faults("plain"), page_faults("compat")
    assert plain >= 12  # glibc's defaults: mapped and zero-filled again (at least one fault per 2 MiB huge page)
    assert kept * 10 < plain


def test_after_keep_large_arrays_mapped_a_64_mib_array_is_reused_too():
    plain, kept = page_faults("compat", 64), page_faults("large", 64)
    assert plain >= 32  # above glibc's largest mmap limit (32 MiB): mapped and faulted in again
    assert kept * 10 < plain
