"""BinaryNet: binarized weights and activations (Courbariaux, Hubara, Soudry, El-Yaniv, Bengio, 2016).

The helper module of the BinaryNet experiments. BinaryNet uses BinaryConnect's layers, weight binarization,
scaled Adam, loss and training loop (binary_connect.py) and adds (ORIGINALS.md §1.2, §1.10): the
straight-through round, the binary activations, and the loop's in-place shuffle in `shuffle_parts` chunks
(the `shuffle_parts` argument of binary_connect.train).
"""
from plumbing import compat  # noqa: F401  (Theano flags and Lasagne patches come first)
from plumbing.branch_free import round_half_away_c
from plumbing.compat import T, np, theano

from binary_connect import hard_sigmoid


class RoundStraightThrough(theano.scalar.UnaryScalarOp):
    """The original `round3` op: forward round half away from zero (C round()), backward the gradient unchanged.

    Theano's own round has a zero gradient; this op is the straight-through estimator of [BNN] §1.3.
    """

    def impl(self, x):
        return np.sign(x) * np.floor(np.abs(x) + 0.5)

    def c_code(self, node, name, inputs, outputs, sub):
        """C's round() without the library call (plumbing/branch_free.py: the same numbers, ~10x faster)."""
        same = node.inputs[0].type.dtype == node.outputs[0].type.dtype
        code = round_half_away_c(inputs[0], outputs[0], node.outputs[0].type.dtype) if same else None
        return code or f"{outputs[0]} = round({inputs[0]});"

    def c_code_cache_version(self):
        return (2,)

    def grad(self, inputs, output_grads):
        return [output_grads[0]]


round_straight_through = T.Elemwise(RoundStraightThrough(theano.scalar.same_out_nocomplex, name="round_ste"))


def binary_tanh_unit(x):
    """The original `binary_tanh_unit`, [BNN] Eq. 1 / Algorithm 1 step 1.4: 2 * round(hard_sigmoid(x)) - 1,
    i.e. +1 for x >= 0, -1 for x < 0.

    Gradient (straight-through with cancellation): 1 where -1 <= x <= 1, 0 elsewhere (ORIGINALS.md §1.2).
    """
    return 2. * round_straight_through(hard_sigmoid(x)) - 1.


def binary_sigmoid_unit(x):
    """The original `binary_sigmoid_unit`: round(hard_sigmoid(x)) in {0, 1} (defined there, used by no experiment)."""
    return round_straight_through(hard_sigmoid(x))
