"""Two things every Theano process did again at its first compile, although nothing had changed (docs/speed.md,
item 21).

1. Loading the compile cache. Theano's first module lookup unpickles every `key.pkl` of the cache, and unpickling a
   fused elementwise op (`scalar.Composite`) rebuilds and optimizes its inner graph (`init_fgraph`) and its Python
   implementation: about half of the 0.5-0.7 s it took here for 429 modules, growing with the cache. An unpickled
   Composite is used as part of a key: compared and hashed by its C code (`_c_code`, pickled with it), not by its
   graph. `lazy_setstate` leaves the graph and the Python implementation to be built when first asked for
   (`lazy_getattr`), by Theano's own `init_fgraph` and `init_py_impls`.
2. Theano's check of its `-march` flags: it compiles and runs a test program with the flags it detected (0.2 s).
   `remembered_march_check` keeps a passed check in the compile directory, per compiler, version and flags; a check
   that failed is not kept, so Theano's fallbacks run as before.

`install()` is called by plumbing/compat.py, before any graph is compiled.
"""
import json
import os

from theano import config
from theano.gof import cmodule
from theano.scalar import basic as scalar

THEANOS = {"try_march_flag": cmodule.try_march_flag}  # kept: the replacement calls it, the tests too
MARCH_CHECKS = "binarynet-march-checks.json"
LAZY = ("fgraph", "_impls")


def lazy_setstate(self, state):
    """Composite.__setstate__ without building the inner graph and the Python implementation."""
    self.__dict__.update(state)
    self.prepare_node_called = set()


def lazy_getattr(self, name):
    """Build `fgraph` or `_impls` of an unpickled Composite on first use (only called when the attribute is missing)."""
    if name not in LAZY or "inputs" not in self.__dict__:
        raise AttributeError(name)
    if "fgraph" not in self.__dict__:
        self.init_fgraph()
    if name == "_impls":
        self.init_py_impls()
    return self.__dict__[name]


def lazy_getstate(self):
    """Composite.__getstate__ that also works before the graph was built."""
    state = dict(self.__dict__)
    for name in LAZY + ("prepare_node_called",):
        state.pop(name, None)
    return state


def _read_checks(path):
    try:
        with open(path) as file:
            checks = json.load(file)
        return checks if isinstance(checks, dict) else {}
    except (OSError, ValueError):
        return {}


def remembered_march_check(flags, path=None):
    """cmodule.try_march_flag(flags) -> (compiled, ran); a (True, True) is kept in `path` (default: the compile
    directory) under the compiler, its version and the flags, and returned from there afterwards."""
    path = path or os.path.join(config.compiledir, MARCH_CHECKS)
    key = " ".join([config.cxx, cmodule.gcc_version_str] + list(flags))
    if _read_checks(path).get(key) == [True, True]:
        return True, True
    result = THEANOS["try_march_flag"](flags)
    if tuple(result) == (True, True):
        checks = _read_checks(path)
        checks[key] = [True, True]
        temporary = f"{path}.{os.getpid()}"
        try:
            with open(temporary, "w") as file:
                json.dump(checks, file)
            os.replace(temporary, path)  # whole files only, when several processes write at once
        except OSError:
            pass  # a read-only compile directory: the check runs again next time
    return result


def install():
    """Lazy Composite unpickling and the remembered -march check, for every compile afterwards."""
    scalar.Composite.__setstate__ = lazy_setstate
    scalar.Composite.__getstate__ = lazy_getstate
    scalar.Composite.__getattr__ = lazy_getattr
    cmodule.try_march_flag = remembered_march_check
