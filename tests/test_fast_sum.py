"""plumbing/fast_sum.py: batch norm's float64-accumulated sums give Theano's own numbers bit for bit (the same
additions in the same order for every output element), and other reductions keep Theano's code."""
import numpy as np
import pytest

from plumbing import compat  # noqa: F401
from plumbing import fast_sum
from plumbing.compat import T, theano
from theano.tensor import elemwise

from conftest import theanos_methods


def compiled(expression, inputs, own):
    """theano.function of the expression with our loop (own=False) or with Theano's own CAReduce code (own=True)."""
    with theanos_methods(elemwise.CAReduce, fast_sum.THEANOS, own):
        return theano.function(inputs, expression)


def test_the_threaded_shapes_are_above_the_threshold():
    assert 50 * 41 * 10 * 10 >= fast_sum.PARALLEL_MIN and 500 * 403 >= fast_sum.PARALLEL_MIN


def both(expression, inputs, *values):
    ours, theanos = compiled(expression, inputs, False), compiled(expression, inputs, True)
    sums = [n for n in ours.maker.fgraph.toposort() if isinstance(n.op, elemwise.Sum)]
    assert sums and all(fast_sum.matches(n.op, n) for n in sums)
    return ours(*values), theanos(*values)


def wide_range(rng, shape):
    """float32 values over 12 orders of magnitude and both signs: float64 sums of them depend on the order."""
    return (rng.standard_normal(shape) * 10. ** rng.uniform(-6, 6, shape)).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 2, 7), (4, 9, 3, 1), (2, 17, 5, 6), (6, 8, 4, 4),
                                   (50, 41, 10, 10)])  # the last: above PARALLEL_MIN, blocks split over threads
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_per_channel_sums_are_theanos(shape, dtype):
    x = T.tensor4(dtype="float32")
    a, b = both(x.sum(axis=(0, 2, 3), acc_dtype="float64", dtype=dtype), [x], wide_range(np.random.RandomState(1),
                                                                                           shape))
    assert a.dtype == b.dtype == dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (7, 8), (3, 19), (100, 37), (500, 403)])
def test_per_unit_sums_are_theanos(shape):
    x = T.matrix(dtype="float32")
    a, b = both(x.sum(axis=0, acc_dtype="float64"), [x], wide_range(np.random.RandomState(2), shape))
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_a_strided_view_and_batch_norm_mean_are_theanos():
    x = T.tensor4(dtype="float32")
    value = wide_range(np.random.RandomState(3), (4, 11, 6, 5))
    a, b = both(x[::2, :, 1:, ::2].sum(axis=(0, 2, 3), acc_dtype="float64"), [x], value)
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8))
    a, b = both(x.mean(axis=(0, 2, 3), keepdims=True), [x], value)
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_the_additions_run_in_theanos_order_batch_first():
    # per channel, in the order n = 0, 1, 2: (2^60 + 1) rounds to 2^60 in float64, minus 2^60 gives 0; any order that
    # pairs 2^60 with -2^60 first would give 1
    x = np.zeros((3, 2, 1, 1), np.float32)
    x[:, 0, 0, 0] = [2. ** 60, 1., -2. ** 60]
    x[:, 1, 0, 0] = [1., 2. ** 60, -2. ** 60]
    v = T.tensor4(dtype="float32")
    f = compiled(v.sum(axis=(0, 2, 3), acc_dtype="float64", dtype="float64"), [v], False)
    assert list(f(x)) == [0., 0.]


def test_other_reductions_keep_theanos_code():
    x = T.tensor4(dtype="float32")
    others = (x.sum(axis=1, acc_dtype="float64"), x.max(axis=(0, 2, 3)), T.cast(x, "float64").sum(axis=(0, 2, 3)))
    for expression in others:
        f = theano.function([x], expression)
        reductions = [n for n in f.maker.fgraph.toposort() if isinstance(n.op, elemwise.CAReduce)]
        assert reductions and not any(fast_sum.matches(n.op, n) for n in reductions)


def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("BINARYNET_FAST_SUM", "0")
    assert not fast_sum.enabled()
    monkeypatch.setenv("BINARYNET_FAST_SUM", "1")
    assert fast_sum.enabled()
