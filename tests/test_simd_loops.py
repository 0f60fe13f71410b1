"""plumbing/simd_loops.py: a fused elementwise op's loop over contiguous arrays, vectorized, gives the bits of
Theano's own loop (Adam's update, the stochastic binarization, clip, sgn, round; NaN, infinities, signed zeros;
float32, float64 and mixed types), also when its output overwrites its input; where an input is broadcast along some
axes only, Theano's loops run; BINARYNET_SIMD_LOOPS=0 leaves Theano's methods alone."""
import contextlib
import re

import numpy as np
import pytest

from plumbing import compat  # noqa: F401  (first: Theano's flags; it installs the loop)
from plumbing import simd_loops
from plumbing.compat import T, theano
from theano import gof, scalar
from theano.tensor.elemwise import Elemwise

from conftest import run_command, theanos_methods

C_ONLY = theano.Mode(linker="c", optimizer="fast_run")  # compiled C, never the Python `impl`
SHAPE = (7, 37)  # 259 elements: whole vectors and a remainder for any vector width
SIMD = re.compile(r"#pragma omp[\w ]* simd")


@contextlib.contextmanager
def theanos_loop(active=True):
    """Within the block (if active), Composite has Theano's own loop: no c_code_contiguous of its own (Elemwise then
    writes its generic loop) and Theano's cache version; afterwards the vectorized loop again."""
    with theanos_methods(scalar.Composite, simd_loops.THEANOS, active), pytest.MonkeyPatch.context() as patch:
        if active:
            patch.delattr(scalar.Composite, "c_code_contiguous")
        yield


def fused_nodes(fn):
    return [node for node in fn.maker.fgraph.toposort()
            if isinstance(node.op, Elemwise) and isinstance(node.op.scalar_op, scalar.Composite)]


def c_source(node):
    """The C source Theano writes for the Elemwise `node` alone, with the methods Composite has now."""
    fresh = node.op.make_node(*[v.type() for v in node.inputs])
    return gof.cc.CLinker().accept(gof.FunctionGraph(fresh.inputs, fresh.outputs)).get_src_code()


def compiled(inputs, outputs, theanos, **kwargs):
    """theano.function(inputs, outputs) compiled with the vectorized loop (theanos=False) or Theano's own, and
    [(vectorized?, cache version)] of its fused nodes as they were at compile time."""
    with theanos_loop(theanos):
        fn = theano.function(inputs, outputs, mode=C_ONLY, **kwargs)
        loops = [(bool(SIMD.search(c_source(node))), node.op.scalar_op.c_code_cache_version())
                 for node in fused_nodes(fn)]
    return fn, loops


def both(inputs, outputs, values):
    """The outputs of the vectorized loop and of Theano's loop on `values`; checks that each version was compiled
    with its own loop and its own cache version (so neither was taken from the other's cached module)."""
    (ours, our_loops), (theirs, their_loops) = (compiled(inputs, outputs, theanos) for theanos in (False, True))
    assert len(our_loops) == len(their_loops) == len(outputs)
    assert all(simd for simd, _ in our_loops) and not any(simd for simd, _ in their_loops)
    for (_, our_version), (_, their_version) in zip(our_loops, their_loops):
        assert our_version and their_version and our_version != their_version
        assert our_version[-len(simd_loops.VERSION):] == simd_loops.VERSION
    return ours(*values), theirs(*values)


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(f"u{a.itemsize}"),
                                                                        b.view(f"u{b.itemsize}"))


SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 0.5, -0.5, 1.5, -2.5, 1.0, -1.0]


def data(dtype, count, seed=0):
    """`count` arrays of SHAPE: normal numbers with NaN, infinities, signed zeros, denormals, halves and +-1 at the
    start of each, shifted from array to array so that specials meet normal numbers and each other."""
    rng = np.random.RandomState(seed)
    arrays = []
    for k in range(count):
        a = rng.normal(size=SHAPE).astype(dtype)
        a.flat[k:k + len(SPECIALS)] = SPECIALS
        arrays.append(a)
    return arrays


def papers_graph(dtype):
    """(inputs, outputs): Adam's update of a parameter, the stochastic and deterministic binarizations, each one
    fused op."""
    m, v, g, p, w, u = (T.matrix(name, dtype=dtype) for name in "mvgpwu")
    b1, b2, lr, eps = (np.asarray(c, dtype) for c in (0.9, 0.999, 0.01, 1e-8))
    adam = p - lr * (b1 * m + (1 - b1) * g) / (T.sqrt(b2 * v + (1 - b2) * T.sqr(g)) + eps)
    stochastic = 2 * T.cast(T.lt(u, T.clip(w * 0.5 + 0.5, 0, 1)), dtype) - 1
    deterministic = T.sgn(w) + compat.round_half_away_from_zero(w * 3) - T.round(g * 0.25)
    return [m, v, g, p, w, u], [adam, stochastic, deterministic]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_ops_give_theanos_bits(dtype):
    """Per element the same float operations in the same order: Theano's loop and the vectorized one give the same
    bits, NaN, infinities and signed zeros included (float32 and float64)."""
    inputs, outputs = papers_graph(dtype)
    values = data(dtype, len(inputs))
    u, w, g = values[5], values[4], values[2]
    u[:] = np.random.RandomState(9).uniform(0, 1, SHAPE)  # the binarization's uniform draws
    u.flat[:3] = [0.0, 0.5, 1.0]
    w.flat[:6] = [0.5, -0.5, 0.1, -0.0, np.nan, np.inf]
    g.flat[:6] = [2, -2, 1, 6, 0, 0]
    ours, theirs = both(inputs, outputs, values)
    for a, b in zip(ours, theirs):
        assert same_bits(a, b)
    assert np.isnan(ours[0]).any() and np.isinf(ours[0]).any()  # the specials reached Adam's loop
    # u < clip((w + 1) / 2, 0, 1): 0 < 0.75, 0.5 < 0.25, 1 < 0.55
    assert ours[1].flat[:3].tolist() == [1, -1, -1] and set(np.unique(ours[1])) == {-1, 1}
    # sgn(w) + round(3 w) (halves away from zero) - round(g / 4) (halves to even): 1 + 2 - 0, -1 - 2 + 0, 1 + 0 - 0,
    # 0 - 0 - 2, NaN, inf
    np.testing.assert_array_equal(ours[2].flat[:6], [3, -3, 1, -2, np.nan, np.inf])


def test_mixed_types_give_theanos_bits():
    """float32, float64 and int8 inputs; a float64, a float32 and a bool output: the bits of Theano's loop."""
    x, y, k = T.matrix("x"), T.matrix("y", dtype="float64"), T.matrix("k", dtype="int8")
    outputs = [T.sqrt(abs(x)) / (y + k), T.cast(y * 3 - x, "float32") * k,
               T.and_(T.lt(x, y), T.gt(k, 0)) | T.eq(x, 0)]
    x_value, y_value = data("float32", 1)[0], data("float64", 2, seed=1)[1]
    k_value = np.random.RandomState(2).randint(-3, 4, SHAPE).astype("int8")
    ours, theirs = both([x, y, k], outputs, [x_value, y_value, k_value])
    assert [a.dtype for a in ours] == [np.float64, np.float32, np.bool_]
    for a, b in zip(ours, theirs):
        assert same_bits(a, b)
    assert same_bits(ours[2], ((x_value < y_value) & (k_value > 0)) | (x_value == 0))


def test_in_place_update_is_the_numpy_formula():
    """x <- clip((x - g) / sqrt(|g| + 1), -2, 2), in place on the shared x, three times: the NumPy float32 formula
    in the same order, bit for bit (no product, so no fused multiply-add can round differently)."""
    start = data("float32", 1)[0]
    start[~np.isfinite(start)] = 3.0
    x, g = theano.shared(start.copy(), name="x"), T.matrix("g")
    fn, loops = compiled([g], [], False, updates=[(x, T.clip((x - g) / T.sqrt(abs(g) + 1), -2, 2))])
    (node,) = fused_nodes(fn)
    assert dict(node.op.inplace_pattern) == {0: [v.name for v in node.inputs].index("x")}
    assert loops[0][0] and simd_loops.applies(node)
    expected = start.copy()
    one, two = np.float32(1), np.float32(2)
    for step in range(3):
        gradient = np.random.RandomState(step).normal(size=SHAPE).astype("float32")
        fn(gradient)
        expected = np.clip((expected - gradient) / np.sqrt(np.abs(gradient) + one), -two, two)
        assert same_bits(x.get_value(), expected)


def test_partly_broadcast_input_runs_theanos_loop():
    """A (1, n) row or an (m, 1) column against an (m, n) matrix: the vectorized loop refuses (it indexes every
    array alike) and Theano's loop broadcasts; the NumPy result."""
    a, row, col = T.matrix("a"), T.row("r"), T.col("c")
    fn = theano.function([a, row, col], [T.sqrt(abs(a)) + row * 2, a * 0.5 - col], mode=C_ONLY)
    nodes = fused_nodes(fn)
    assert len(nodes) == 2 and not any(simd_loops.applies(node) for node in nodes)
    for node in nodes:
        with pytest.raises(gof.utils.MethodNotDefined):
            node.op.scalar_op.c_code_contiguous(node, "n", ["i0", "i1", "i2"], ["o0"], {"fail": ""})
    a_value, r_value, c_value = data("float32", 3)
    r_value, c_value = r_value[:1], c_value[:, :1]
    first, second = fn(a_value, r_value, c_value)
    assert same_bits(first, np.sqrt(np.abs(a_value)) + r_value * np.float32(2))
    assert same_bits(second, a_value * np.float32(0.5) - c_value)


CHILD = ("from plumbing import compat, simd_loops; from theano import scalar; "
         "print('c_code_contiguous' in vars(scalar.Composite), "
         "scalar.Composite.c_code_cache_version is simd_loops.THEANOS['c_code_cache_version'], "
         "simd_loops.install())")


@pytest.mark.parametrize("value, installed", [("0", False), (" 0 ", False), ("1", True), ("", True)])
def test_switch(value, installed):
    """BINARYNET_SIMD_LOOPS=0 leaves Composite with Theano's methods (and install() says so); otherwise the loop."""
    done = run_command(["-c", CHILD], env={"BINARYNET_SIMD_LOOPS": value}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(installed), str(not installed), str(installed)]
