"""plumbing/compat.py lets idle worker threads sleep where OpenBLAS's and OpenMP's pools share the cores
(docs/speed.md): the two settings go into the environment before either library loads, a value the user set wins,
MKL is left alone, and OpenBLAS really stops spinning (its threads' CPU time while the process sleeps)."""
import json
import os
import subprocess
import sys

from conftest import REPO

SETTINGS = ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")

REPORT = """
import json, os
from plumbing import compat
names = ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")
print(json.dumps(dict(env={k: os.environ.get(k) for k in names}, added=compat.THREAD_SETTINGS, blas=compat.BLAS_NAME)))
"""

# CPU time of the whole process while its main thread sleeps right after a 2-thread product through Theano's BLAS:
# what OpenBLAS's idle threads burn spinning.
SPIN = """
import time
from plumbing import compat
from plumbing.compat import T, np, theano
a = T.fmatrix()
f = theano.function([a], T.dot(a, a))
x = np.ones((768, 768), np.float32)
for _ in range(3):
    f(x)
start = time.process_time()
time.sleep(0.3)
print(time.process_time() - start)
"""


def run(program, **env):
    environ = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    environ.update(env)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=REPO, env=environ,
                            check=True)
    return result.stdout.strip().splitlines()[-1]


def test_with_openblas_idle_threads_sleep():
    report = json.loads(run(REPORT, BINARYNET_BLAS="openblas"))
    assert report["blas"].startswith("OpenBLAS")
    assert report["env"] == {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "PASSIVE"}
    assert report["added"] == report["env"]


def test_a_value_the_user_set_wins():
    report = json.loads(run(REPORT, BINARYNET_BLAS="openblas", OMP_WAIT_POLICY="ACTIVE"))
    assert report["env"] == {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "ACTIVE"}
    assert report["added"] == {"OPENBLAS_THREAD_TIMEOUT": "4"}


def test_with_mkl_nothing_is_changed():
    report = json.loads(run(REPORT, BINARYNET_BLAS="mkl"))
    assert report["blas"].startswith("MKL")
    assert report["env"] == {"OPENBLAS_THREAD_TIMEOUT": None, "OMP_WAIT_POLICY": None} and report["added"] == {}


def test_openblas_threads_stop_spinning_after_a_product():
    ours = float(run(SPIN, BINARYNET_BLAS="openblas", OPENBLAS_NUM_THREADS="2"))
    spinning = float(run(SPIN, BINARYNET_BLAS="openblas", OPENBLAS_NUM_THREADS="2", OPENBLAS_THREAD_TIMEOUT="30"))
    # 2^30 cycles of spinning (OpenBLAS's longest timeout) outlast the 0.3 s sleep, its default 2^28 take about
    # 0.07 s; 2^4 cycles are nothing
    assert spinning > 0.1 and ours < 0.02, (ours, spinning)
