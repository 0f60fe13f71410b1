"""plumbing/merged_updates.py: Adam's three loops per parameter (m', v', the parameter, with BinaryConnect's scale
and clip) become one loop with three outputs, in place, the same bits as the three loops and Lasagne's formula; no
merge where a loop's output has another client or an input is a strided view; the merged loop stores its outputs
after computing all of them, so an output may overwrite an input another output still reads."""
from collections import OrderedDict

import numpy as np
import pytest

from plumbing import compat  # noqa: F401  (first: Theano's flags; it installs the optimization)
from plumbing import merged_updates, simd_loops
from plumbing.compat import T, lasagne, theano
from theano import scalar
from theano.tensor.elemwise import Elemwise

from conftest import theanos_methods

MERGED = theano.compile.get_default_mode()
UNMERGED = MERGED.excluding(merged_updates.OPT_NAME)
LR, SCALE, H = 0.01, 3.0, 1.0  # learning rate, BinaryConnect's W_LR_scale and H


def merged_nodes(fn):
    return [node for node in fn.maker.fgraph.toposort()
            if isinstance(node.op, Elemwise) and isinstance(node.op.scalar_op, merged_updates.StoreLastComposite)]


def adam_function(W_value, b_value, mode):
    """A training step's update: Lasagne's adam on a shared matrix W and vector b (gradients given), W's new value
    then scaled and clipped as in binary_connect.scale_and_clip. Returns the function and the shared variables in
    Lasagne's order: m_W, v_W, W, m_b, v_b, b, t."""
    W, b = theano.shared(W_value.copy(), name="W"), theano.shared(b_value.copy(), name="b")
    gW, gb = T.matrix("gW"), T.vector("gb")
    updates = lasagne.updates.adam([gW, gb], [W, b], learning_rate=LR)
    updates[W] = T.clip(W + SCALE * (updates[W] - W), -H, H)
    return theano.function([gW, gb], [], updates=updates, mode=mode), list(updates)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_adam_is_one_loop_per_parameter_with_the_same_bits():
    """Four steps of Adam (with scale and clip on W): W, b, m, v and t bit for bit those of the three loops Theano
    compiles without the merge; with it, each parameter's update is one loop with 3 outputs, without it none."""
    rng = np.random.RandomState(0)
    W_value, b_value = rng.uniform(-1, 1, (5, 7)).astype("float32"), rng.uniform(-1, 1, 7).astype("float32")
    gradients = [(rng.normal(size=(5, 7)).astype("float32"), rng.normal(size=7).astype("float32")) for _ in range(4)]
    gradients[1][0][0, :3] = [0.0, -0.0, 1e-30]
    states = {}
    for name, mode in (("merged", MERGED), ("unmerged", UNMERGED)):
        fn, state = adam_function(W_value, b_value, mode)
        assert [len(node.outputs) for node in merged_nodes(fn)] == ([3, 3] if name == "merged" else [])
        for gW, gb in gradients:
            fn(gW, gb)
        states[name] = [s.get_value() for s in state]
    assert states["merged"][-1] == 4
    for merged, unmerged in zip(states["merged"], states["unmerged"]):
        assert same_bits(np.asarray(merged), np.asarray(unmerged))
    assert not np.array_equal(states["merged"][2], W_value) and np.abs(states["merged"][2]).max() <= H


def test_merged_loop_runs_in_place_and_computes_lasagnes_adam():
    """One step from m = v = 0, t = 0: every output of the merged loops overwrites its shared variable (m, v and the
    parameter), and the values are Lasagne 0.1's formula in NumPy float32, in its order:
        t = 1, a_t = lr * sqrt(1 - b2^t) / (1 - b1^t), m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
        p' = p - a_t m / (sqrt(v) + eps), W' = clip(W + scale (p' - W), -H, H)
    to rtol 1e-6 (g++ may contract a product and a sum into one fused multiply-add, rounded once where NumPy rounds
    twice). By hand: the first step moves each weight by lr against its gradient's sign (times scale for W, then
    clipped): b' = b - 0.01 sign(gb), W' = clip(W - 0.03 sign(gW), -1, 1)."""
    W_value = np.array([[0.5, -0.5, 0.99], [0.0, 0.2, -0.95]], "float32")
    b_value = np.array([0.1, -0.2, 0.3], "float32")
    gW = np.array([[1, -2, -0.5], [0.25, 4, 1]], "float32")
    gb = np.array([3, -1, 0.5], "float32")
    fn, state = adam_function(W_value, b_value, MERGED)
    sources = {node: fn_input.variable for node, fn_input in zip(fn.maker.fgraph.inputs, fn.maker.expanded_inputs)}
    nodes = merged_nodes(fn)
    assert len(nodes) == 2
    for node, updated in zip(nodes, (state[:3], state[3:6])):
        pattern = dict(node.op.inplace_pattern)
        assert sorted(pattern) == [0, 1, 2]
        assert {sources.get(node.inputs[i]) for i in pattern.values()} == set(updated)
    fn(gW, gb)

    f32 = np.float32
    t = f32(1)
    a_t = f32(LR) * np.sqrt(f32(1) - f32(0.999) ** t) / (f32(1) - f32(0.9) ** t)
    expected = []
    for p, g in ((W_value, gW), (b_value, gb)):
        m = f32(0.9) * np.zeros_like(p) + f32(1 - 0.9) * g
        v = f32(0.999) * np.zeros_like(p) + f32(1 - 0.999) * g ** 2
        expected += [m, v, p - a_t * m / (np.sqrt(v) + f32(1e-8))]
    expected[2] = np.clip(W_value + f32(SCALE) * (expected[2] - W_value), f32(-H), f32(H))
    for variable, value in zip(state[:6], expected):
        assert value.dtype == np.float32
        np.testing.assert_allclose(variable.get_value(), value, rtol=1e-6, atol=0)
    np.testing.assert_allclose(state[5].get_value(), [0.09, -0.19, 0.29], rtol=0, atol=1e-6)
    np.testing.assert_allclose(state[2].get_value(), [[0.47, -0.47, 1.0], [-0.03, 0.17, -0.98]], rtol=0, atol=1e-6)


def test_no_merge_when_an_output_has_another_client():
    """p = 2a + b feeds sqrt(p) + a: merged (p kept as an output). Once p also feeds tanh(p) - b, merging it into
    one consumer would leave the other reading a value computed elsewhere: no merge."""
    a, b = T.vector("a"), T.vector("b")
    p = a * 2 + b
    alone = theano.function([a, b], [p, T.sqrt(p) + a])
    shared = theano.function([a, b], [p, T.sqrt(p) + a, T.tanh(p) - b])
    assert [len(node.outputs) for node in merged_nodes(alone)] == [2]
    assert merged_nodes(shared) == []
    values = np.array([1, 2, 3], "float32"), np.array([0.5, -1, 2], "float32")
    np.testing.assert_array_equal(shared(*values)[0], [2.5, 3, 8])


def test_no_merge_when_an_input_is_a_strided_view():
    """Gradients that are views with other strides (g[::-1] of a shared vector, G.T of a shared matrix): Theano runs
    such loops element by element, so the three loops of Adam stay three."""
    g, G = theano.shared(np.arange(4, dtype="float32")), theano.shared(np.ones((2, 3), "float32"))
    p, P = theano.shared(np.zeros(4, "float32")), theano.shared(np.zeros((3, 2), "float32"))
    updates = lasagne.updates.adam([g[::-1], G.T], [p, P], learning_rate=LR)
    fn = theano.function([], [], updates=updates)
    assert merged_nodes(fn) == []
    assert sum(merged_updates.strided(v) for node in fn.maker.fgraph.toposort() if isinstance(node.op, Elemwise)
               for v in node.inputs) >= 2
    fn()
    np.testing.assert_allclose(p.get_value(), [-LR, -LR, -LR, 0], rtol=1e-5)  # g[::-1] = 3, 2, 1, 0


@pytest.mark.parametrize("theanos_loop", [False, True])
def test_an_output_may_overwrite_an_input_read_for_another_output(theanos_loop):
    """x <- 2x + g and z <- (x' + x) z in one loop, in place: x' overwrites x, which the second output still reads
    (after x' is computed). Stores last: x = 1..4, g = 0.5, z = 10 give x' = 2.5, 4.5, 6.5, 8.5 and
    z' = 35, 65, 95, 125 (reading x' for x would give 50, 90, 130, 170). With the vectorized loop (which reads every
    input first) and with Theano's own loop (which reads through references to the arrays)."""
    x = theano.shared(np.array([1, 2, 3, 4], "float32"), name="x")
    z = theano.shared(np.full(4, 10, "float32"), name="z")
    g = T.vector("g")
    new_x = x * 2 + g
    with theanos_methods(scalar.Composite, simd_loops.THEANOS, theanos_loop), \
            pytest.MonkeyPatch.context() as patch:
        if theanos_loop:
            patch.delattr(scalar.Composite, "c_code_contiguous")
        fn = theano.function([g], [], updates=OrderedDict([(x, new_x), (z, (new_x + x) * z)]))
        (node,) = merged_nodes(fn)
        version = node.op.scalar_op.c_code_cache_version()
    assert (simd_loops.VERSION[0] in version) is not theanos_loop  # two cache keys
    names = [v.name for v in node.inputs]
    assert dict(node.op.inplace_pattern) == {0: names.index("x"), 1: names.index("z")}
    fn(np.full(4, 0.5, "float32"))
    assert x.get_value().tolist() == [2.5, 4.5, 6.5, 8.5]
    assert z.get_value().tolist() == [35, 65, 95, 125]
