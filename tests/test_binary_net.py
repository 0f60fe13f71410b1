"""binary_net.py: the straight-through round and the binary activations of [BNN] (ORIGINALS.md §1.2), on hand-made
inputs whose outputs and gradients are written out below."""
import numpy as np

import binary_net
from plumbing import compat
from plumbing.compat import T, theano


def f32(x):
    return np.asarray(x, dtype="float32")


def test_binary_tanh_forward_and_straight_through_gradient():
    """Forward sign with 0 -> +1; gradient 1 on -1 <= x <= 1 (boundaries included), 0 outside (§1.2)."""
    x = T.vector()
    y = binary_net.binary_tanh_unit(x)
    forward = theano.function([x], y)
    backward = theano.function([x], theano.grad(y.sum(), x))
    xs = f32([-1.5, -1.0001, -1., -0.5, -1e-6, 0., 0.5, 1., 1.0001, 3.])
    assert forward(xs).tolist() == [-1, -1, -1, -1, -1, 1, 1, 1, 1, 1]
    assert backward(xs).tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]


def test_binary_sigmoid_forward_and_gradient():
    """round(hard_sigmoid(x)) in {0, 1}; gradient d hard_sigmoid / dx = 1/2 on -1 <= x <= 1, 0 outside."""
    x = T.vector()
    y = binary_net.binary_sigmoid_unit(x)
    forward = theano.function([x], y)
    backward = theano.function([x], theano.grad(y.sum(), x))
    xs = f32([-2., -1., -0.2, 0., 0.7, 1., 2.])
    assert forward(xs).tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert backward(xs).tolist() == [0, 0.5, 0.5, 0.5, 0.5, 0.5, 0]


def test_straight_through_round_rounds_half_away_from_zero_and_passes_the_gradient():
    x = T.vector()
    r = binary_net.round_straight_through(x)
    forward = theano.function([x], r)
    backward = theano.function([x], theano.grad((r * f32([1., 2., 3., 4., 5., 6.])).sum(), x))
    xs = f32([-1.5, -0.5, 0.49, 0.5, 1.5, 2.5])
    assert forward(xs).tolist() == [-2, -1, 0, 1, 2, 3]
    assert backward(xs).tolist() == [1, 2, 3, 4, 5, 6]  # the incoming gradient, unchanged
    assert compat.round_half_away_from_zero(T.constant(2.5)).eval() == 3
    assert compat.round_half_away_from_zero(T.constant(-2.5)).eval() == -3
