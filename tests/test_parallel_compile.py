"""plumbing/parallel_compile.py: compiling a graph's C modules on all cores must leave Theano's cache and numbers as a
serial compile does. Each case runs a tiny graph in a fresh process with its own empty compile directory
(BINARYNET_THEANO_CACHE) and temporary directory (TMPDIR), and counts the g++ runs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from plumbing import compat, parallel_compile  # noqa: F401  (compat first: Theano's flags)
from plumbing.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The child builds a small graph of versioned ops (Theano's Dot22 is not versioned: recompiled in every process),
# compiles it, runs it, and reports the outputs, the g++ runs, and the cache: module hash -> sha256 of its mod.cpp.
CHILD = r"""
import hashlib, json, os, pickle, sys, threading
from plumbing import compat, parallel_compile, precompiled_header
from plumbing.compat import T, np, theano
from theano.gof import cmodule

case = sys.argv[1]
gxx, gxx_main, headers = [], [], []
popen = cmodule.output_subprocess_Popen
def counting_popen(cmd, *args, **kwargs):
    modules = [arg for arg in cmd if arg.endswith("mod.cpp")]  # not Theano's compiler checks (a .c file)
    if cmd and cmd[0] == theano.config.cxx and modules:
        gxx.append(modules)
        with open(modules[0]) as source:  # [starts with a header block, compiled with a precompiled header]
            headers.append([precompiled_header.block_of(source.read()) is not None,
                            any(arg.startswith("-I" + precompiled_header.root()) for arg in cmd)])
        if threading.current_thread() is threading.main_thread():
            gxx_main.append(gxx[-1])
    return popen(cmd, *args, **kwargs)
cmodule.output_subprocess_Popen = counting_popen

if case == "simulated-failure":
    real = parallel_compile._ORIGINAL["compile_str"]
    def failing(*args, **kwargs):
        done = real(*args, **kwargs)
        if kwargs.get("py_module", True):
            return done  # Theano's own compile
        raise RuntimeError("simulated g++ failure")  # after leaving mod.cpp and the library in the temporary dir
    parallel_compile._ORIGINAL["compile_str"] = failing

class BrokenC(theano.Op):
    '''x + 1 in Python; C code that does not compile.'''
    __props__ = ()
    def make_node(self, x):
        return theano.Apply(self, [x], [x.type()])
    def perform(self, node, inputs, outputs):
        outputs[0][0] = inputs[0] + 1
    def c_code(self, node, name, inputs, outputs, sub):
        return "this is not C++;"
    def c_code_cache_version(self):
        return (1,)

x, w = T.matrix("x"), T.matrix("w")
y = T.tanh(x * w).sum(axis=1) * 2 + T.clip(x, -0.5, 0.5).max(axis=1) + abs(w).mean()
g = T.grad(y.sum(), w)
outputs = [y, g, BrokenC()(x)] if case == "broken-c" else [y, g]
report = {"error": None, "outputs": None}
try:
    f = theano.function([x, w], outputs)
    r = np.random.RandomState(0)
    report["outputs"] = [o.tolist() for o in f(r.randn(3, 4).astype("float32"), r.randn(3, 4).astype("float32"))]
except Exception as e:
    report["error"] = f"{type(e).__name__}: {e}"[:300]
modules, partial = {}, []
for name in os.listdir(theano.config.compiledir):
    path = os.path.join(theano.config.compiledir, name)
    if not os.path.isdir(path) or name in ("lock_dir", "cutils_ext", "lazylinker_ext", "optimized_graphs"):
        continue
    if not os.path.exists(os.path.join(path, "key.pkl")):
        partial.append(name)
        continue
    with open(os.path.join(path, "key.pkl"), "rb") as file:
        key_data = pickle.load(file)
    with open(os.path.join(path, "mod.cpp"), "rb") as file:
        modules[key_data.module_hash] = hashlib.sha256(file.read()).hexdigest()
report.update(gxx=len(gxx), gxx_main=len(gxx_main), gxx_files=gxx, headers=headers, stats=parallel_compile.STATS,
              modules=modules, partial=partial, tmp=sorted(os.listdir(os.environ["TMPDIR"])))
print("REPORT " + json.dumps(report))
"""


def compile_in_child(tmp_path, name, case="plain", parallel="2", cache=None):
    """Run CHILD in a new process; its report (dict) and its standard output."""
    cache = cache or tmp_path / f"cache-{name}"
    tmp = tmp_path / f"tmp-{name}"
    tmp.mkdir()
    env = dict(os.environ, BINARYNET_THEANO_CACHE=str(cache), TMPDIR=str(tmp), BINARYNET_PARALLEL_COMPILE=parallel,
               PYTHONPATH=REPO, PYTHONHASHSEED="0")
    env.pop("THEANO_FLAGS", None)  # set by this process's compat, with this process's compile directory
    done = subprocess.run([sys.executable, "-c", CHILD, case], env=env, capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(lines[-1][len("REPORT "):]), done.stdout


@pytest.fixture(scope="module")
def serial_and_parallel(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("parallel-compile")
    serial, _ = compile_in_child(tmp_path, "serial", parallel="0")
    parallel, _ = compile_in_child(tmp_path, "parallel", parallel="2")
    return tmp_path, serial, parallel


def test_parallel_compile_gives_the_serial_outputs(serial_and_parallel):
    _, serial, parallel = serial_and_parallel
    assert serial["error"] is None and parallel["error"] is None
    for a, b in zip(serial["outputs"], parallel["outputs"]):
        assert np.array_equal(np.array(a, np.float32), np.array(b, np.float32))
    r = np.random.RandomState(0)  # the child's inputs: x, then w, from one stream
    x, w = r.randn(3, 4).astype("float32"), r.randn(3, 4).astype("float32")
    y = np.tanh(x * w).sum(axis=1) * 2 + np.clip(x, -0.5, 0.5).max(axis=1) + np.abs(w).mean()
    assert np.allclose(parallel["outputs"][0], y, rtol=1e-5)


def test_parallel_compile_fills_the_cache_as_a_serial_compile(serial_and_parallel):
    _, serial, parallel = serial_and_parallel
    assert len(serial["modules"]) >= 3
    assert parallel["modules"] == serial["modules"]  # same module hashes (key and source), same mod.cpp
    assert parallel["partial"] == [] and serial["partial"] == []


def test_parallel_compile_runs_gxx_once_per_module_and_theano_uses_the_results(serial_and_parallel):
    _, serial, parallel = serial_and_parallel
    assert (serial["stats"]["compiled"], serial["stats"]["used"]) == (0, 0)
    assert parallel["stats"]["compiled"] == parallel["stats"]["used"] >= 3
    assert parallel["gxx"] == serial["gxx"] >= len(serial["modules"])  # and Theano's own cutils and lazylinker
    assert parallel["gxx_main"] == serial["gxx"] - parallel["stats"]["used"]  # Theano ran no g++ for those
    assert not [name for name in parallel["tmp"] if name.startswith("binarynet-compile-")]


def test_serial_compile_uses_precompiled_headers(serial_and_parallel):
    _, serial, parallel = serial_and_parallel
    assert [has for has, used in serial["headers"] if has] and all(has == used for has, used in serial["headers"])
    assert not [used for has, used in parallel["headers"] if used and not has]


def test_warm_cache_compiles_nothing(serial_and_parallel):
    tmp_path, _, parallel = serial_and_parallel
    warm, _ = compile_in_child(tmp_path, "warm", cache=tmp_path / "cache-parallel")
    assert warm["gxx"] == 0 and warm["stats"]["compiled"] == 0, warm["gxx_files"]
    assert warm["outputs"] == parallel["outputs"] and warm["modules"] == parallel["modules"]


def test_failed_parallel_build_falls_back_to_theanos_compile(serial_and_parallel):
    tmp_path, serial, _ = serial_and_parallel
    failed, _ = compile_in_child(tmp_path, "simulated", case="simulated-failure")
    assert failed["error"] is None and failed["outputs"] == serial["outputs"]
    assert failed["stats"]["failed"] >= 3 and failed["stats"]["used"] == 0
    assert failed["modules"] == serial["modules"] and failed["partial"] == []
    assert not [name for name in failed["tmp"] if name.startswith("binarynet-compile-")]


@pytest.mark.parametrize("parallel", ["2", "0"])
def test_c_code_that_does_not_compile_gives_theanos_one_error(tmp_path, parallel):
    report, stdout = compile_in_child(tmp_path, f"broken-{parallel}", case="broken-c", parallel=parallel)
    assert report["error"] is not None and "Compilation failed" in report["error"]
    assert stdout.count("You can find the C code in this temporary file") == 1
    assert len([name for name in report["tmp"] if name.startswith("theano_compilation_error_")]) == 1
    assert not [name for name in report["tmp"] if name.startswith("binarynet-compile-")]
    assert report["partial"] == []
    if parallel == "2":
        assert report["stats"]["failed"] == 1


def test_the_switch_counts_gxx_processes(monkeypatch):
    for value, expected in [("0", 0), ("1", 1), ("3", 3)]:
        monkeypatch.setenv("BINARYNET_PARALLEL_COMPILE", value)
        assert parallel_compile.workers() == expected and parallel_compile.enabled() == (expected > 1)
    monkeypatch.setenv("BINARYNET_PARALLEL_COMPILE", "all")
    with pytest.raises(UsageError, match="BINARYNET_PARALLEL_COMPILE='all' is not a number"):
        parallel_compile.workers()
