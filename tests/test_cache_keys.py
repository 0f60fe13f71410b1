"""plumbing/cache_keys.py: DimShuffle's compile-cache version is the same in every process (it was Python's
randomized string hash), so a second process with the same graph adds no key to Theano's cache."""
import glob
import os
import pickle
import subprocess
import sys

from plumbing import compat  # noqa: F401  (first: Theano's flags; it installs the version)
from plumbing import cache_keys
from plumbing.compat import T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
from plumbing.compat import T, theano
x = T.matrix()
f = theano.function([x], x.dimshuffle(1, 'x', 0))  # a C DimShuffle node of its own
print("VERSION", f.maker.fgraph.toposort()[0].op.c_code_cache_version())
"""


def run_child(cache, seed):
    env = dict(os.environ, BINARYNET_THEANO_CACHE=str(cache), PYTHONPATH=REPO, PYTHONHASHSEED=str(seed))
    env.pop("THEANO_FLAGS", None)  # set by this process's compat, with this process's compile directory
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("VERSION ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    return lines[-1]


def keys_per_module(cache):
    counts = []
    for path in glob.glob(os.path.join(str(cache), "*", "*", "key.pkl")):
        with open(path, "rb") as file:
            counts.append(len(pickle.load(file).keys))
    return counts


def test_the_version_is_a_hash_of_the_code_not_of_the_process():
    op = T.matrix().dimshuffle(1, 0).owner.op
    version = cache_keys.stable_code_version(op)
    theanos = cache_keys.THEANOS["c_code_cache_version"](op)
    assert version == op.c_code_cache_version() and isinstance(version[0], int)
    assert version[1:] == theanos[1:] and version[0] != theanos[0]  # the params' version kept; the code's hash new


def test_two_processes_with_different_hash_seeds_share_one_key(tmp_path):
    cache = tmp_path / "cache"
    first, second = run_child(cache, 1), run_child(cache, 2)
    assert first == second
    counts = keys_per_module(cache)
    assert counts and all(count == 1 for count in counts), counts  # with Theano's version: 2 for the DimShuffle
