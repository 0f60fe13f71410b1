"""batch_norm.py: both batch-norm layers in training and test mode against NumPy (ORIGINALS.md §1.7), and the block
that follows every weight layer in each family."""
import numpy as np
import pytest

import batch_norm
import binary_net
from plumbing.compat import T, lasagne, theano


def f32(x):
    return np.asarray(x, dtype="float32")


def _bn_functions(layer_class, **kwargs):
    x = T.matrix()
    layer = layer_class(lasagne.layers.InputLayer((None, 3), x), **kwargs)
    train = theano.function([x], lasagne.layers.get_output(layer, deterministic=False))
    test = theano.function([x], lasagne.layers.get_output(layer, deterministic=True))
    return layer, train, test


def test_binarynet_batch_norm_adds_epsilon_to_the_variance_and_averages_inv_std():
    layer, train, test = _bn_functions(batch_norm.BatchNormLayer, epsilon=1e-4, alpha=0.1)
    layer.gamma.set_value(f32([1., 2., -0.5]))
    layer.beta.set_value(f32([0., 1., 0.3]))
    X = f32(np.random.RandomState(0).randn(6, 3) * [1., 3., 0.01] + [0., 5., -1.])
    mean, var = X.mean(0), X.var(0)
    np.testing.assert_allclose(train(X), (X - mean) * [1., 2., -0.5] / np.sqrt(var + 1e-4) + [0., 1., 0.3],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.mean.get_value(), 0.1 * mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(layer.inv_std.get_value(), 0.9 + 0.1 / np.sqrt(var + 1e-4), rtol=1e-5)
    before = layer.inv_std.get_value()
    out = test(X)  # test mode: stored statistics, no update
    np.testing.assert_allclose(out, (X - 0.1 * mean) * [1., 2., -0.5] * before + [0., 1., 0.3], rtol=1e-4,
                               atol=1e-5)
    assert np.array_equal(layer.inv_std.get_value(), before)
    assert [p.name for p in layer.get_params()] == ["beta", "gamma", "mean", "inv_std"]


def test_binaryconnect_batch_norm_adds_epsilon_to_the_std_and_averages_std():
    layer, train, test = _bn_functions(batch_norm.BCBatchNormLayer, epsilon=1e-4, alpha=0.15,
                                       nonlinearity=lasagne.nonlinearities.rectify)
    X = f32(np.random.RandomState(1).randn(6, 3) * [1., 3., 0.01] + [0., 5., -1.])
    mean, std = X.mean(0), X.std(0)
    np.testing.assert_allclose(train(X), np.maximum(0, (X - mean) / (std + 1e-4)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.mean.get_value(), [0.15 * mean], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(layer.std.get_value(), [0.85 + 0.15 * std], rtol=1e-5)
    np.testing.assert_allclose(test(X), np.maximum(0, (X - 0.15 * mean) / (0.85 + 0.15 * std + 1e-4)),
                               rtol=1e-4, atol=1e-5)
    assert [p.name for p in layer.get_params()] == ["mean", "std", "beta", "gamma"]
    assert layer.mean.get_value().shape == (1, 3)


def test_convolution_batch_norm_normalizes_over_batch_and_pixels():
    """4-D input: statistics per channel over axes (0, 2, 3); parameters have one entry per channel (Lasagne 0.2)."""
    x = T.tensor4()
    layer = batch_norm.BatchNormLayer(lasagne.layers.InputLayer((None, 2, 3, 3), x), epsilon=1e-4, alpha=0.1)
    assert layer.beta.get_value().shape == (2,)
    X = f32(np.random.RandomState(2).randn(4, 2, 3, 3) * [[[[2.]], [[0.5]]]] + [[[[1.]], [[-3.]]]])
    mean, var = X.mean(axis=(0, 2, 3), keepdims=True), X.var(axis=(0, 2, 3), keepdims=True)
    out = theano.function([x], lasagne.layers.get_output(layer, deterministic=False))(X)
    np.testing.assert_allclose(out, (X - mean) / np.sqrt(var + 1e-4), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("last", [False, True])
def test_binarynet_block_is_batch_norm_then_a_separate_sign_layer(last):
    dense = lasagne.layers.DenseLayer(lasagne.layers.InputLayer((None, 5)), 4)
    out = batch_norm.batch_norm_and_activation("binarynet", dense, 1e-4, 0.1, last=last)
    layers = lasagne.layers.get_all_layers(out)[2:]
    if last:  # no activation after the output layer
        assert [type(layer) for layer in layers] == [batch_norm.BatchNormLayer]
    else:
        assert [type(layer) for layer in layers] == [batch_norm.BatchNormLayer, lasagne.layers.NonlinearityLayer]
        assert layers[1].nonlinearity is binary_net.binary_tanh_unit
    assert (layers[0].epsilon, layers[0].alpha) == (1e-4, 0.1)


@pytest.mark.parametrize("last, nonlinearity", [(False, lasagne.nonlinearities.rectify),
                                                (True, lasagne.nonlinearities.identity)])
def test_binaryconnect_block_is_one_batch_norm_with_relu_inside(last, nonlinearity):
    dense = lasagne.layers.DenseLayer(lasagne.layers.InputLayer((None, 5)), 4)
    out = batch_norm.batch_norm_and_activation("binaryconnect", dense, 1e-4, 0.15, last=last)
    layers = lasagne.layers.get_all_layers(out)[2:]
    assert [type(layer) for layer in layers] == [batch_norm.BCBatchNormLayer]
    assert layers[0].nonlinearity is nonlinearity and (layers[0].epsilon, layers[0].alpha) == (1e-4, 0.15)
