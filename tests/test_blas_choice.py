"""plumbing/compat.py picks the BLAS Theano links from the CPU it finds (docs/speed.md): the rule on hand-written
CPUs, and that both BLAS give a convolution's forward pass and gradients and a product that agree with NumPy's float64
within float32 rounding (the two libraries sum in different orders, so their float32 results differ at that level)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from plumbing import compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX512 = {"avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


@pytest.mark.parametrize("vendor, flags, have_mkl, have_openblas, wish, expected", [
    ("GenuineIntel", AVX512, True, True, "auto", ("mkl", None)),
    ("AuthenticAMD", AVX512, True, True, "auto", ("openblas", "SKYLAKEX")),
    ("AuthenticAMD", {"avx2", "fma"}, True, True, "auto", ("openblas", None)),   # Zen 1-3: OpenBLAS's own choice
    ("AuthenticAMD", AVX512, False, True, "auto", ("openblas", "SKYLAKEX")),
    ("AuthenticAMD", AVX512, True, False, "auto", ("mkl", None)),
    ("GenuineIntel", AVX512, False, True, "auto", ("openblas", None)),           # Intel: OpenBLAS detects it itself
    ("AuthenticAMD", AVX512, True, True, "mkl", ("mkl", None)),
    ("GenuineIntel", AVX512, True, True, "openblas", ("openblas", None)),
    ("AuthenticAMD", AVX512, True, False, "openblas", ("mkl", None)),            # a wish that is not installed
    ("", set(), False, False, "auto", (None, None)),
])
def test_blas_choice_follows_the_cpu(vendor, flags, have_mkl, have_openblas, wish, expected):
    assert compat.choose_blas(vendor, flags, have_mkl, have_openblas, wish) == expected


PROBE = """
import json, sys
from plumbing import compat
from plumbing.compat import T, theano, np
x, w, g = T.tensor4(), T.tensor4(), T.tensor4()
y = T.nnet.conv2d(x, w, border_mode=(1, 1), filter_flip=False)
cost = T.sum(y * g)
a, b = T.matrix(), T.matrix()
f = theano.function([x, w, g, a, b], [y, T.grad(cost, x), T.grad(cost, w), T.dot(a, b)])
rng = np.random.RandomState(0)
args = [rng.uniform(-1, 1, s).astype("float32") for s in [(4, 3, 6, 6), (5, 3, 3, 3), (4, 5, 6, 6), (40, 70), (70, 30)]]
outputs = [o.tolist() for o in f(*args)]
print(json.dumps(dict(blas=compat.BLAS_NAME, out=outputs)))
"""


def numpy_reference():
    """The same four results in float64: cross-correlation with zero padding 1, its two gradients, the product."""
    rng = np.random.RandomState(0)
    x, w, g, a, b = [rng.uniform(-1, 1, s).astype("float32").astype(np.float64)
                     for s in [(4, 3, 6, 6), (5, 3, 3, 3), (4, 5, 6, 6), (40, 70), (70, 30)]]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack([xp[:, :, i:i + 6, j:j + 6] for i in range(3) for j in range(3)], axis=2)  # n c 9 h w
    wf = w.reshape(5, 3, 9)
    y = np.einsum("nckhw,fck->nfhw", patches, wf)
    dw = np.einsum("nckhw,nfhw->fck", patches, g).reshape(w.shape)
    dxp = np.zeros_like(xp)
    for k in range(9):
        i, j = divmod(k, 3)
        dxp[:, :, i:i + 6, j:j + 6] += np.einsum("fc,nfhw->nchw", wf[:, :, k], g)
    return [y, dxp[:, :, 1:-1, 1:-1], dw, a @ b]


@pytest.mark.slow
@pytest.mark.parametrize("blas", ["mkl", "openblas"])
def test_both_blas_agree_with_float64_at_float32_rounding(blas):
    env = dict(os.environ, BINARYNET_BLAS=blas)
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["blas"].lower().startswith(blas)
    # sums of up to 70 products of numbers in [-1, 1]: float32 rounding leaves errors far below 1e-4
    for got, expected in zip(probe["out"], numpy_reference()):
        np.testing.assert_allclose(np.array(got), expected, rtol=0, atol=1e-4)
