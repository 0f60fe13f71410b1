"""plumbing/branch_free.py: Theano's clip, sgn and round-half-away-from-zero, and binary_net's straight-through round,
compiled from the branch-free C code, must give exactly the numbers of Theano's own C code and of a NumPy reference:
on the edges (bounds, their neighbours, +-0, halves and their neighbours, infinities, NaN) and on random bit patterns.
"""
import numpy as np
import pytest

import binary_net
from plumbing import branch_free, compat  # noqa: F401  (compat first: Theano's flags; it installs the code)
from plumbing.compat import T, theano
from theano import scalar

C_ONLY = theano.Mode(linker="c", optimizer="fast_run")  # compiled C, never the Python `impl`


def c_function(inputs, output):
    return theano.function(inputs, output, mode=C_ONLY)


def same_bits(a, b):
    """Equal arrays, NaN where NaN (its sign and payload aside)."""
    a, b = np.asarray(a), np.asarray(b)
    nan = np.isnan(a)
    return a.dtype == b.dtype and np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan], b[~nan]) \
        and np.array_equal(np.signbit(a[~nan]), np.signbit(b[~nan]))


def edge_values(dtype, centres, seed=0):
    """Each centre and its 3 neighbours either side, +-0, +-inf, NaN, and 20000 random bit patterns."""
    dtype = np.dtype(dtype)
    values = [np.float64(0.), -0., np.inf, -np.inf, np.nan]
    for c in np.asarray(centres, dtype):
        below, above = c, c
        values.append(c)
        for _ in range(3):
            below, above = np.nextafter(below, dtype.type(-np.inf)), np.nextafter(above, dtype.type(np.inf))
            values += [below, above]
    bits = np.random.RandomState(seed).randint(0, 2 ** 31, size=20000, dtype=np.int64)
    bits = (bits | (bits << 31)) if dtype == np.float64 else bits | (np.int64(1) << 31) * (bits % 2)
    random = bits.astype(np.uint64 if dtype == np.float64 else np.uint32).view(dtype)
    return np.concatenate([np.asarray(values, dtype), random])


@pytest.fixture
def theanos_code(monkeypatch):
    """Put Theano's own C code back (for graphs compiled inside the test)."""
    def restore():
        for cls in (scalar.basic.Clip, scalar.basic.RoundHalfAwayFromZero, scalar.basic.Sgn):
            for name, method in branch_free.THEANOS[cls.__name__].items():
                monkeypatch.setattr(cls, name, method)
    return restore


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clip_matches_theanos_code_and_numpy(dtype, theanos_code):
    """clip(x, 0, 1) with integer bounds (as in hard_sigmoid), clip(x, -H, H) with float bounds, and bounds swapped."""
    xs = edge_values(dtype, [0, 1, -0.25, 0.25, 1.5])
    zero, one = np.zeros(2, dtype) + [0, 1]
    x = T.vector(dtype=dtype)
    lo, hi = np.asarray(-0.25, dtype), np.asarray(0.25, dtype)
    graphs = [T.clip(x, 0, 1), T.clip(x, lo, hi), T.clip(x, hi, lo)]
    ours = [c_function([x], g)(xs) for g in graphs]
    theanos_code()
    theirs = [c_function([x], g)(xs) for g in graphs]
    for a, b in zip(ours, theirs):
        assert same_bits(a, b)
    assert same_bits(ours[0], theano_clip(xs, zero, one))
    assert same_bits(ours[1], theano_clip(xs, lo, hi))
    assert same_bits(ours[2], theano_clip(xs, hi, lo))  # swapped: x < 0.25 -> 0.25, else -0.25 (NaN stays)
    assert same_bits(ours[0][:2], np.asarray([0., -0.], dtype))  # -0 stays -0 (np.clip would give +0)


def theano_clip(xs, lo, hi):
    """Theano's definition of clip: lo where x < lo, else hi where x > hi, else x."""
    return np.where(xs < lo, lo, np.where(xs > hi, hi, xs)).astype(xs.dtype)


def reference_round(xs):
    """C's round: NumPy's exact round half to even, with the ties (fraction exactly 1/2) moved away from zero."""
    rounded = np.rint(xs)
    tie = np.abs(xs - np.trunc(xs)) == 0.5
    rounded[tie] = np.trunc(xs[tie]) + np.sign(xs[tie])
    return rounded


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sgn_matches_theanos_code_and_numpy(dtype, theanos_code):
    """1 above zero, -1 below, +0 for both zeros (Theano's literal 0., where NumPy keeps -0), NaN for NaN; alone and
    inside a fused op (BinaryConnect's ReLU gradient, 0.5 * g + 0.5 * g * sgn(x))."""
    xs = edge_values(dtype, [0, 1e-45, -1e-45, 1, -1])
    x, g = T.vector(dtype=dtype), T.vector(dtype=dtype)
    gs = np.random.RandomState(2).normal(size=xs.shape).astype(dtype)
    half = np.asarray(0.5, dtype)
    ours = c_function([x], T.sgn(x))(xs), c_function([x, g], half * g + half * g * T.sgn(x))(xs, gs)
    theanos_code()
    theirs = c_function([x], T.sgn(x))(xs), c_function([x, g], half * g + half * g * T.sgn(x))(xs, gs)
    assert same_bits(ours[0], theirs[0]) and same_bits(ours[1], theirs[1])
    reference = np.where(xs > 0, 1, np.where(xs < 0, -1, np.where(np.isnan(xs), np.nan, 0))).astype(dtype)
    assert same_bits(ours[0], reference)
    assert ours[0][:4].tolist() == [0, 0, 1, -1] and not np.signbit(ours[0][:2]).any()  # +-0, +-inf; -0 gives +0
    assert np.isnan(ours[0][4])


def test_sgn_of_integers_keeps_theanos_code():
    x = T.vector(dtype="int32")
    assert c_function([x], T.sgn(x))(np.asarray([-7, 0, 3], "int32")).tolist() == [-1, 0, 1]


HALVES = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, 1., 2. ** 22 + 0.5, 2. ** 23, -2. ** 23 - 1, 1e30]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_half_away_from_zero_matches_theanos_code_and_numpy(dtype, theanos_code):
    xs = edge_values(dtype, HALVES)
    x = T.vector(dtype=dtype)
    ours = c_function([x], T.round(x, mode="half_away_from_zero"))(xs)
    theanos_code()
    theirs = c_function([x], T.round(x, mode="half_away_from_zero"))(xs)
    assert same_bits(ours, theirs)
    assert same_bits(ours, reference_round(xs))


def test_straight_through_round_matches_c_round():
    xs = edge_values("float32", HALVES)
    x = T.vector()
    assert same_bits(c_function([x], binary_net.round_straight_through(x))(xs), reference_round(xs))


def test_binary_tanh_of_a_batch_norm_like_tensor():
    """The fused forward of binary_tanh (clip and round in one loop) on a 4-D tensor: +1 where the float32
    (x + 1) / 2 is >= 1/2, i.e. x >= 0 and also the tiny negatives with x + 1 == 1 in float32; else -1."""
    xs = np.random.RandomState(1).normal(size=(2, 3, 4, 5)).astype("float32")
    xs[0, 0, 0, :4] = [0., -0., -1e-45, -6e-8]
    x = T.tensor4()
    out = c_function([x], binary_net.binary_tanh_unit(x))(xs)
    assert np.array_equal(out, np.where((xs + np.float32(1)) / np.float32(2) >= 0.5, 1., -1.).astype("float32"))
    assert out[0, 0, 0, :4].tolist() == [1, 1, 1, -1] and np.array_equal(out[xs < -1e-7], -np.ones((xs < -1e-7).sum()))
