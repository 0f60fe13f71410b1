"""plumbing/fast_pool_grad.py: max pooling's gradient gives Theano's own numbers bit for bit, for windows that
overlap, leave gaps or run past the border, ties, NaN and infinities, float64, strided views, and (through
Theano's loop) padding."""
import numpy as np
import pytest

from plumbing import compat  # noqa: F401  (first: Theano's flags; it installs the fast path)
from plumbing import fast_pool_grad
from plumbing.compat import T, theano
from theano.tensor.signal import pool

from conftest import theanos_methods


def gradient_function(ws, stride, pad, ignore_border, dtype, own):
    """x, gz -> MaxPoolGrad(x, pool(x), gz), compiled with the fast path (own=False) or Theano's code (own=True)."""
    with theanos_methods(pool.MaxPoolGrad, fast_pool_grad.THEANOS, own):
        x, gz = T.tensor4(dtype=dtype), T.tensor4(dtype=dtype)
        z = pool.pool_2d(x, ws=ws, stride=stride, pad=pad, ignore_border=ignore_border)
        grad = pool.MaxPoolGrad(ignore_border=ignore_border)(x, z, gz, T.as_tensor_variable(ws),
                                                               T.as_tensor_variable(stride), T.as_tensor_variable(pad))
        shape_fn = theano.function([x], z.shape)
        return theano.function([x, gz], grad, mode=theano.Mode(linker="c", optimizer="fast_run")), shape_fn


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(f"u{a.itemsize}"),
                                                                        b.view(f"u{b.itemsize}"))


def both(x, ws, stride=None, pad=(0, 0), ignore_border=True, gz=None):
    """The gradient with the fast path and with Theano's code, for gz (random normal if not given)."""
    stride = stride or ws
    ours, shape = gradient_function(ws, stride, pad, ignore_border, str(x.dtype), own=False)
    theirs, _ = gradient_function(ws, stride, pad, ignore_border, str(x.dtype), own=True)
    if gz is None:
        gz = np.random.RandomState(0).normal(size=tuple(shape(x))).astype(x.dtype)
    return ours(x, gz), theirs(x, gz)


@pytest.mark.parametrize("ws, stride, ignore_border", [
    ((2, 2), (2, 2), True),     # the papers' pooling
    ((3, 3), (1, 1), True),     # overlapping windows: several additions into one element, in order
    ((2, 3), (3, 2), True),     # gaps in one direction, overlap in the other
    ((3, 3), (2, 2), False),    # partial windows at the border
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradient_is_theanos(ws, stride, ignore_border, dtype):
    x = np.random.RandomState(1).normal(size=(3, 4, 9, 7)).astype(dtype)
    x[0, 0, :4, :4] = 1.5                       # ties: every tied element receives gz
    x[1, 2, 3, 3], x[2, 1, 0, 0] = np.nan, np.inf
    ours, theirs = both(x, ws, stride, ignore_border=ignore_border)
    assert same_bits(ours, theirs)


def test_non_finite_gradients_and_negative_zero():
    x = np.random.RandomState(2).normal(size=(2, 3, 6, 6)).astype("float32")
    gz = np.random.RandomState(2).normal(size=(2, 3, 3, 3)).astype("float32")
    gz.flat[:4] = [np.inf, -np.inf, np.nan, -0.0]
    a, b = both(x, (2, 2), gz=gz)
    assert same_bits(a, b) and not np.signbit(a[a == 0]).any()  # gz = -0 lands as +0 in both


def test_strided_views_and_padding():
    base = np.random.RandomState(3).normal(size=(5, 4, 10, 12)).astype("float32")
    view = base[::2, :, 1:, ::-1].transpose(0, 1, 3, 2)   # not contiguous, negative and swapped strides
    ours, theirs = both(view, (2, 3))
    assert same_bits(ours, theirs)
    ours, theirs = both(base, (3, 3), (2, 2), pad=(1, 1))   # padding: Theano's own loop in both
    assert same_bits(ours, theirs)


def test_papers_pooling_on_views():
    """2x2 at stride 2 on a view whose rows are contiguous and on one whose rows are reversed; odd sizes leave the
    last row and column outside every window (their gradient stays +0)."""
    base = np.random.RandomState(4).normal(size=(4, 6, 11, 9)).astype("float32")
    base[0, 0, :2, :2] = 0.5                    # a tie inside one window
    for view in (base[::2, 1::2], base[:, :, :, ::-1]):
        ours, theirs = both(view, (2, 2))
        assert same_bits(ours, theirs)
    assert not both(base, (2, 2))[0][:, :, 10, :].any()


def test_hand_case():
    """One 2x2 window per output: gz goes to the maximum's position, ties get it twice over."""
    x = np.asarray([[[[1., 5., 2., 2.], [3., 4., 2., 0.]]]], "float32")
    f, _ = gradient_function((2, 2), (2, 2), (0, 0), True, "float32", own=False)
    out = f(x, np.asarray([[[[10., 20.]]]], "float32"))
    assert out.tolist() == [[[[0., 10., 20., 20.], [0., 0., 20., 0.]]]]
