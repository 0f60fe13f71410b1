"""The ConvNet of the CIFAR-10 and SVHN experiments of both papers (the `cnn` the original scripts build).

    (2 x F1 C3) - MP2 - (2 x F2 C3) - MP2 - (2 x F3 C3) - MP2 - (2 x 1024 FC) - 10 SVM

CIFAR-10: F = 128, 256, 512; SVHN: F = 64, 128, 256 and still 1024 dense units (ORIGINALS.md §2.2, §6 #3).
Every weight layer is binary, the first and the last included; 2x2 max-pooling comes before batch norm.
"""
from plumbing import compat  # noqa: F401  (Theano flags and Lasagne patches come first)
from plumbing.compat import lasagne

import binary_connect
import binary_net
from batch_norm import batch_norm_and_activation

CIFAR10_WIDTHS = (128, 256, 512)
SVHN_WIDTHS = (64, 128, 256)
DENSE_UNITS = 1024


def scaled(units, width):
    """units * width rounded, at least 1 (the --width multiplier)."""
    return max(1, int(round(units * width)))


def binary_activations(layer):
    """True if layer outputs exactly +1/-1: BinaryNet's binary_tanh layer (the next conv may use the XNOR kernel)."""
    return (isinstance(layer, lasagne.layers.NonlinearityLayer)
            and layer.nonlinearity is binary_net.binary_tanh_unit)


def build_convnet(family, input_var, hp, widths=CIFAR10_WIDTHS, dense_units=DENSE_UNITS, image_shape=(3, 32, 32)):
    """The layer stack of ORIGINALS.md §2.2; returns the output layer (the last batch norm).

    3 x [BConv(F) -> BN -> act, BConv(F) -> MaxPool 2x2 -> BN -> act], 2 x [BDense -> BN -> act],
    BDense(10) -> BN. 3x3 filters, pad 1. hp supplies binary, stochastic, H, W_LR_scale, epsilon, alpha;
    family 'binarynet' selects BinaryNet's BN and activation, 'binaryconnect' BinaryConnect's.
    """
    binary = dict(binary=hp["binary"], stochastic=hp["stochastic"], H=hp["H"], W_LR_scale=hp["W_LR_scale"],
                  nonlinearity=lasagne.nonlinearities.identity)
    cnn = lasagne.layers.InputLayer((None,) + tuple(image_shape), input_var=input_var)
    for filters in widths:
        cnn = binary_connect.Conv2DLayer(cnn, filters, (3, 3), pad=1, binary_inputs=binary_activations(cnn), **binary)
        cnn = batch_norm_and_activation(family, cnn, hp["epsilon"], hp["alpha"])
        cnn = binary_connect.Conv2DLayer(cnn, filters, (3, 3), pad=1, binary_inputs=binary_activations(cnn), **binary)
        cnn = lasagne.layers.MaxPool2DLayer(cnn, pool_size=(2, 2))
        cnn = batch_norm_and_activation(family, cnn, hp["epsilon"], hp["alpha"])
    for _ in range(2):
        cnn = binary_connect.DenseLayer(cnn, dense_units, **binary)
        cnn = batch_norm_and_activation(family, cnn, hp["epsilon"], hp["alpha"])
    cnn = binary_connect.DenseLayer(cnn, 10, **binary)
    return batch_norm_and_activation(family, cnn, hp["epsilon"], hp["alpha"], last=True)
