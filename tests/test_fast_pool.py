"""plumbing/fast_pool.py: max pooling over 2x2 windows at stride 2 gives Theano's own numbers bit for bit: ties,
NaN, infinities and signed zeros, odd sizes, float64, views, and other windows through Theano's loop."""
import numpy as np
import pytest

from plumbing import compat  # noqa: F401  (first: Theano's flags; it installs the fast path)
from plumbing import fast_pool
from plumbing.compat import T, theano
from theano.tensor.signal import pool

from conftest import theanos_methods


def pool_function(ws, stride, pad, ignore_border, dtype, own):
    """x -> pool_2d(x), compiled with the fast path (own=False) or Theano's code (own=True)."""
    with theanos_methods(pool.Pool, fast_pool.THEANOS, own):
        x = T.tensor4(dtype=dtype)
        z = pool.pool_2d(x, ws=ws, stride=stride, pad=pad, ignore_border=ignore_border)
        return theano.function([x], z, mode=theano.Mode(linker="c", optimizer="fast_run"))


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(f"u{a.itemsize}"),
                                                                        b.view(f"u{b.itemsize}"))


def both(x, ws=(2, 2), stride=None, pad=(0, 0), ignore_border=True):
    stride = stride or ws
    return tuple(pool_function(ws, stride, pad, ignore_border, str(x.dtype), own)(x) for own in (False, True))


def special_values(dtype):
    x = np.random.RandomState(1).normal(size=(3, 4, 9, 7)).astype(dtype)
    x[0, 0, :2, :2] = 1.5                                      # a tie
    x[1, 2, 0, 0], x[1, 2, 3, 3], x[2, 1, 4, 4] = np.nan, np.nan, np.inf   # NaN first in a window, NaN later, inf
    x[2, 2, :2, :2] = [[0.0, -0.0], [-0.0, 0.0]]               # +0 first: stays +0
    x[2, 3, :2, :2] = [[-0.0, 0.0], [0.0, -0.0]]               # -0 first: stays -0 (+0 is not greater)
    return x


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ignore_border", [True, False])
def test_papers_pooling_is_theanos(dtype, ignore_border):
    ours, theirs = both(special_values(dtype), ignore_border=ignore_border)
    assert same_bits(ours, theirs)


def test_first_element_rules_as_in_theano():
    """Theano keeps the window's first element unless a later one is greater: a NaN first stays, a NaN later is
    skipped, -0 first stays -0."""
    ours = both(special_values("float32"))[0]
    assert np.isnan(ours[1, 2, 0, 0]) and ours[1, 2, 1, 1] == np.nanmax(special_values("float32")[1, 2, 2:4, 2:4])
    assert not np.signbit(ours[2, 2, 0, 0]) and np.signbit(ours[2, 3, 0, 0])


def test_views_and_other_windows():
    base = special_values("float32")
    for view in (base[::2, 1::2], base[:, :, ::-1, ::-1]):     # rows contiguous (fast loop) / reversed (Theano's)
        assert same_bits(*both(view))
    for ws, stride, pad in (((3, 3), (2, 2), (0, 0)), ((2, 2), (1, 1), (0, 0)), ((2, 2), (2, 2), (1, 1))):
        assert same_bits(*both(base, ws, stride, pad))


def test_hand_case():
    x = np.asarray([[[[1, 5, 2, 2, 9], [3, 4, 2, 0, 9], [7, 7, 7, 7, 7]]]], "float32")
    np.testing.assert_array_equal(both(x)[0], [[[[5, 2]]]])
