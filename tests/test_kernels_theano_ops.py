"""Theano ops and the kernel-switching DenseLayer (kernels/theano_ops.py) against NumPy (ORIGINALS.md §4.4)."""
import numpy as np
import pytest

from kernels.theano_ops import BaselineGemm, DenseLayer, KernelError, NoGradientError, XnorGemm
from plumbing.compat import T, lasagne, theano


def signs64(x):
    return np.where(x >= 0, 1.0, -1.0)


@pytest.fixture(scope="module")
def functions():
    a, b = T.matrix("a"), T.matrix("b")
    return {"xnor": theano.function([a, b], XnorGemm()(a, b)),
            "baseline": theano.function([a, b], BaselineGemm()(a, b))}


def test_xnor_op_matches_numpy_sign_product(functions):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((7, 70)).astype(np.float32)
    b = rng.standard_normal((70, 5)).astype(np.float32)
    a[0, :3] = 0.0  # zero counts as +1
    out = functions["xnor"](a, b)
    assert out.dtype == np.float32
    assert np.array_equal(out, signs64(a) @ signs64(b))


def test_baseline_op_matches_numpy(functions):
    rng = np.random.default_rng(6)
    a = rng.standard_normal((9, 33)).astype(np.float32)
    b = rng.standard_normal((33, 4)).astype(np.float32)
    assert np.allclose(functions["baseline"](a, b), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-4)


def test_ops_reject_non_float32_matrices():
    with pytest.raises(KernelError, match="float32 matrix"):
        XnorGemm()(T.dmatrix(), T.matrix())
    with pytest.raises(KernelError, match="float32 matrix"):
        BaselineGemm()(T.vector(), T.matrix())


def test_ops_have_no_gradient():
    a, b = T.matrix(), T.matrix()
    with pytest.raises(NoGradientError, match="inference-only"):
        theano.grad(XnorGemm()(a, b).sum(), a)


def test_unknown_kernel_is_value_error():
    with pytest.raises(ValueError, match="kernel must be one of"):
        DenseLayer((None, 4), 3, kernel="cublas")


def test_dense_layer_kernels_agree_on_sign_inputs():
    rng = np.random.default_rng(7)
    n_in, n_out = 70, 6
    W = np.where(rng.random((n_in, n_out)) < 0.5, -1.0, 1.0).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    x = np.where(rng.random((5, n_in)) < 0.5, -1.0, 1.0).astype(np.float32)
    expected = np.maximum(x.astype(np.float64) @ W + b, 0.0)  # default nonlinearity: rectify

    x_var = T.matrix("x")
    outputs = {}
    for kernel in ("blas", "baseline", "xnor"):
        layer = DenseLayer(lasagne.layers.InputLayer((None, n_in), x_var), n_out, kernel=kernel, W=W, b=b)
        outputs[kernel] = theano.function([x_var], lasagne.layers.get_output(layer))(x)
    for kernel, out in outputs.items():
        assert np.allclose(out, expected, rtol=1e-6, atol=1e-5), kernel
    assert np.array_equal(outputs["xnor"], outputs["baseline"])
    assert np.array_equal(outputs["xnor"], outputs["blas"])
