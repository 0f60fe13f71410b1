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


def run_child(code, cache, **env):
    """Run `code` in a fresh Python with its own compile cache; returns its last line starting with VERSION."""
    env = dict(os.environ, BINARYNET_THEANO_CACHE=str(cache), PYTHONPATH=REPO, **env)
    env.pop("THEANO_FLAGS", None)  # set by this process's compat, with this process's compile directory
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("VERSION ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    return lines[-1]


def keys_of_modules(cache):
    """The keys of each module in the cache (one list per key.pkl)."""
    modules = []
    for path in glob.glob(os.path.join(str(cache), "*", "*", "key.pkl")):
        with open(path, "rb") as file:
            modules.append(list(pickle.load(file).keys))
    return modules


def test_the_version_is_a_hash_of_the_code_not_of_the_process():
    op = T.matrix().dimshuffle(1, 0).owner.op
    version = cache_keys.stable_code_version(op)
    theanos = cache_keys.THEANOS["c_code_cache_version"](op)
    assert version == op.c_code_cache_version() and isinstance(version[0], int)
    assert version[1:] == theanos[1:] and version[0] != theanos[0]  # the params' version kept; the code's hash new


def test_two_processes_with_different_hash_seeds_share_one_key(tmp_path):
    cache = tmp_path / "cache"
    first, second = run_child(CHILD, cache, PYTHONHASHSEED="1"), run_child(CHILD, cache, PYTHONHASHSEED="2")
    assert first == second
    counts = [len(keys) for keys in keys_of_modules(cache)]
    assert counts and all(count == 1 for count in counts), counts  # with Theano's version: 2 for the DimShuffle


def module_key(node, key_function):
    """The cache key Theano computes for `node` compiled alone (as Op.make_c_thunk does)."""
    from theano.gof import cc, graph
    from theano.gof.fg import FunctionGraph
    fgraph = FunctionGraph(*graph.clone(node.inputs, node.outputs))
    linker = cc.CLinker().accept(fgraph, no_recycling=[])
    return key_function(linker, fgraph, [], linker.compile_args(), linker.libraries(), linker.header_dirs())


def test_an_op_without_parameters_no_longer_makes_its_module_unversioned():
    """Dot22 has versioned C code but `__props__ = ()`: Theano's key calls the module unversioned (recompiled in every
    process), ours gives the same key with NO_PROPS in the version."""
    x, y = T.matrix(), T.matrix()
    from theano.tensor import blas
    node = blas.Dot22()(x, y).owner
    assert node.op.__props__ == () and node.op.c_code_cache_version()
    theanos = module_key(node, cache_keys.THEANOS["cmodule_key_"])
    ours = module_key(node, cache_keys.module_key)
    assert theanos[0] == () and ours[1] == theanos[1]
    assert cache_keys.NO_PROPS in ours[0] and node.op.c_code_cache_version() in ours[0]


def test_an_op_with_parameters_keeps_theanos_key():
    node = T.matrix().dimshuffle(1, 0).owner
    assert module_key(node, cache_keys.module_key) == module_key(node, cache_keys.THEANOS["cmodule_key_"])


def test_an_unversioned_op_stays_unversioned():
    """An op whose own C code has no version (c_code_cache_version() == ()) is still compiled afresh."""
    from theano.tensor import blas

    class Unversioned(blas.Dot22):
        def c_code_cache_version(self):
            return ()

    node = Unversioned()(T.matrix(), T.matrix()).owner
    assert module_key(node, cache_keys.module_key)[0] == ()


CHILD_DOT = """
from plumbing.compat import T, theano
x, y = T.matrix(), T.matrix()
f = theano.function([x, y], T.dot(x, y))
print("VERSION", [type(node.op).__name__ for node in f.maker.fgraph.toposort()])
"""


def test_a_product_module_stays_in_the_cache_after_its_process(tmp_path):
    """Theano compiled the unversioned Dot22 module into a temporary directory, deleted at exit; now it is kept, so
    the next process finds it."""
    assert "Dot22" in run_child(CHILD_DOT, tmp_path / "cache")
    versions = [key[0] for keys in keys_of_modules(tmp_path / "cache") for key in keys]
    assert any(cache_keys.NO_PROPS in version for version in versions), versions
