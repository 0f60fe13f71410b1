"""BinaryNet: binarized weights and activations (Courbariaux, Hubara, Soudry, El-Yaniv, Bengio, 2016).

Everything of binary_connect.py (layers, weight binarization, scaled Adam, loss) plus what BinaryNet adds
(ORIGINALS.md §1.2, §1.10): the straight-through round, the binary activations, and the training loop's
in-place shuffle in `shuffle_parts` chunks.
"""
import compat  # noqa: F401
from compat import T, np, theano

import binary_connect
from binary_connect import (Conv2DLayer, DenseLayer, adam_updates, compile_functions, error_rate,  # noqa: F401
                            hard_sigmoid, lr_decay, squared_hinge_loss)


class RoundStraightThrough(theano.scalar.UnaryScalarOp):
    """Forward: round half away from zero (C round()). Backward: the incoming gradient, unchanged.

    Theano's own round has a zero gradient; this op is the straight-through estimator of [BNN] §1.3.
    """

    def impl(self, x):
        return np.sign(x) * np.floor(np.abs(x) + 0.5)

    def c_code(self, node, name, inputs, outputs, sub):
        return "%s = round(%s);" % (outputs[0], inputs[0])

    def c_code_cache_version(self):
        return (1,)

    def grad(self, inputs, output_grads):
        return [output_grads[0]]


round_straight_through = T.Elemwise(RoundStraightThrough(theano.scalar.same_out_nocomplex, name="round_ste"))


def binary_tanh_unit(x):
    """2 * round(hard_sigmoid(x)) - 1: +1 for x >= 0, -1 for x < 0.

    Gradient (straight-through with cancellation): 1 where -1 <= x <= 1, 0 elsewhere (ORIGINALS.md §1.2).
    """
    return 2. * round_straight_through(hard_sigmoid(x)) - 1.


def binary_sigmoid_unit(x):
    """round(hard_sigmoid(x)) in {0, 1} (defined by the original, used by no experiment)."""
    return round_straight_through(hard_sigmoid(x))


def train(train_fn, val_fn, model, batch_size, LR_start, LR_decay, num_epochs, X_train, y_train, X_val, y_val,
          X_test, y_test, shuffle_parts=1, **kwargs):
    """BinaryConnect's loop (binary_connect.train) with BinaryNet's shuffle: in place, in `shuffle_parts`
    chunks, so that no second copy of the training set is needed (SVHN's is 6.9 GiB in float32)."""
    return binary_connect.train(train_fn, val_fn, model, batch_size, LR_start, LR_decay, num_epochs, X_train,
                                y_train, X_val, y_val, X_test, y_test, shuffle_parts=shuffle_parts, **kwargs)
