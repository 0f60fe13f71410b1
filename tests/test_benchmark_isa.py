"""benchmark.py --isa caps both sides of the ratio: the OpenBLAS that Theano links (plumbing/compat.py) must load the
core type of the requested instruction set, like NumPy's, as threadpoolctl reports it (docs/kernels.md)."""
import json
import os
import subprocess
import sys

import pytest

import benchmark
from plumbing import compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What benchmark.main does before anything loads a BLAS (isa "none": no benchmark, compat alone), then what
# threadpoolctl sees in the libraries loaded.
PROBE = """
import json, os, sys
import benchmark
isa = sys.argv[1]
if isa != "none":
    benchmark.set_openblas_coretype("auto", isa)
    benchmark.restrict_isa(isa)
from plumbing import compat
import threadpoolctl
theano_file = compat.BLAS_LDFLAGS.rpartition("-l:")[2]
cores = {("theano" if os.path.basename(lib["filepath"]) == theano_file else "numpy" if "numpy" in lib["filepath"]
          else os.path.basename(lib["filepath"])): lib.get("architecture")
         for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"}
print(json.dumps({"cores": cores, "label": benchmark.theano_blas_label(), "ldflags": compat.BLAS_LDFLAGS}))
"""


def probe(isa, **extra_env):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "BINARYNET_OPENBLAS_CORETYPE", "MKL_ENABLE_INSTRUCTIONS")}
    env.update(PYTHONPATH=ROOT, BINARYNET_BLAS="openblas", **extra_env)  # OpenBLAS on Intel too, where installed
    result = subprocess.run([sys.executable, "-c", PROBE, isa], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_isa_caps_the_openblas_theano_links(isa):
    if isa == "avx2" and "avx2" not in benchmark.cpuinfo_flags():
        pytest.skip("this CPU has no AVX2, so --isa avx2 refuses to run (a one-line BenchmarkError)")
    found = probe(isa)
    if "-l:libopenblas" not in found["ldflags"]:
        pytest.skip(f"Theano does not link SciPy's OpenBLAS here ({found['ldflags']!r}): nothing to cap")
    wanted = benchmark.ISAS[isa][1].lower()  # Haswell = OpenBLAS's AVX2 kernels, Nehalem = SSE4.2
    assert (found["cores"]["theano"] or "").lower() == wanted
    assert (found["cores"]["numpy"] or "").lower() == wanted
    assert found["label"].lower().endswith(wanted)  # the name printed with the ratios


def test_openblas_coretype_for_numpy_leaves_theanos_core_alone():
    """An OPENBLAS_CORETYPE set for NumPy's OpenBLAS (Haswell here, for its misdetection of new CPUs) must not move
    Theano's OpenBLAS off the core compat chooses (SkylakeX on AMD CPUs with AVX-512)."""
    flags = benchmark.cpuinfo_flags()
    found = probe("none", OPENBLAS_CORETYPE="Haswell")
    if "-l:libopenblas" not in found["ldflags"]:
        pytest.skip(f"Theano does not link SciPy's OpenBLAS here ({found['ldflags']!r})")
    if compat.AVX512_FLAGS <= flags and compat._cpu_info()[0] != "GenuineIntel":
        assert (found["cores"]["theano"] or "").lower() == "skylakex"
    else:
        assert (found["cores"]["theano"] or "").lower() != ""  # OpenBLAS's own choice, whatever this CPU is


@pytest.mark.parametrize("wish, have_mkl, expected", [
    ("openblas", True, ("openblas", "Haswell")),  # a requested core type wins over SKYLAKEX
    ("auto", False, ("openblas", "Haswell")),
    ("mkl", True, ("mkl", None)),                 # MKL has no core type (benchmark.py caps it separately)
])
def test_requested_core_type_wins(wish, have_mkl, expected):
    flags = {"avx2", "fma"} | compat.AVX512_FLAGS
    assert compat.choose_blas("AuthenticAMD", flags, have_mkl, True, wish, requested="Haswell") == expected


def test_numpy_keeps_its_own_core_type_beside_theanos():
    """compat loads Theano's OpenBLAS locally, so NumPy's OpenBLAS (a separate library, loaded later) does not bind
    its internal symbols to it: NumPy keeps the core type of its environment (Sandybridge here) while Theano's runs
    the one asked for (Haswell). Loaded globally, NumPy's reported Theano's core type."""
    found = probe("none", OPENBLAS_CORETYPE="Sandybridge", BINARYNET_OPENBLAS_CORETYPE="Haswell")
    if "-l:libopenblas" not in found["ldflags"]:
        pytest.skip(f"Theano does not link SciPy's OpenBLAS here ({found['ldflags']!r})")
    assert (found["cores"]["theano"] or "").lower() == "haswell"
    assert (found["cores"]["numpy"] or "").lower() == "sandybridge"
