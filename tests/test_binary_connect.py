"""One test per rule of ORIGINALS.md §1: binarization, straight-through gradient, Glorot scales, the update
step, batch norm, loss and error, learning-rate schedule, conv layer. Each against NumPy or a hand-checked case."""
import numpy as np
import pytest
from scipy.signal import convolve2d

import binary_connect
import binary_net
import compat
from compat import T, lasagne, theano

floatX = "float32"


def f32(x):
    return np.asarray(x, dtype=floatX)


def test_deterministic_binarization_maps_zero_to_plus_h():
    W = T.matrix()
    binarize = theano.function([W], binary_connect.binarize_weights(W, H=1., deterministic=False))
    values = f32([[-2., -0.5, -1e-7, 0., 1e-7, 0.3, 1.5]])
    assert binarize(values).tolist() == [[-1, -1, -1, 1, 1, 1, 1]]
    binarize_h = theano.function([W], binary_connect.binarize_weights(W, H=0.25))
    assert binarize_h(values).tolist() == [[-0.25, -0.25, -0.25, 0.25, 0.25, 0.25, 0.25]]


def test_stochastic_binarization_follows_hard_sigmoid():
    """P(Wb = +1) = clip((W + 1) / 2, 0, 1): measured over 20000 draws per weight, within 5 sigma."""
    from theano.sandbox.rng_mrg import MRG_RandomStreams
    weights = f32([-1.5, -1., -0.6, 0., 0.2, 0.9, 1.])
    W = theano.shared(np.tile(weights, (20000, 1)))
    draw = theano.function([], binary_connect.binarize_weights(W, stochastic=True, srng=MRG_RandomStreams(7)))
    sample = draw()
    assert set(np.unique(sample)) <= {-1., 1.}
    freq = (sample == 1).mean(axis=0)
    p = np.clip((weights + 1) / 2, 0, 1)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / 20000) + 1e-12)
    assert not np.array_equal(draw(), sample)  # a new draw at every evaluation


def test_stochastic_weights_are_real_valued_at_test_time():
    W = T.matrix()
    same = binary_connect.binarize_weights(W, deterministic=True, stochastic=True)
    assert same is W
    not_binary = binary_connect.binarize_weights(W, binary=False)
    assert not_binary is W


def test_binary_tanh_forward_and_straight_through_gradient():
    """Forward sign with 0 -> +1; gradient 1 on -1 <= x <= 1 (boundaries included), 0 outside (§1.2)."""
    x = T.vector()
    y = binary_net.binary_tanh_unit(x)
    forward = theano.function([x], y)
    backward = theano.function([x], theano.grad(y.sum(), x))
    xs = f32([-1.5, -1.0001, -1., -0.5, -1e-6, 0., 0.5, 1., 1.0001, 3.])
    assert forward(xs).tolist() == [-1, -1, -1, -1, -1, 1, 1, 1, 1, 1]
    assert backward(xs).tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]


def test_straight_through_round_rounds_half_away_from_zero():
    x = T.vector()
    r = theano.function([x], binary_net.round_straight_through(x))
    assert r(f32([-1.5, -0.5, 0.49, 0.5, 1.5, 2.5])).tolist() == [-2, -1, 0, 1, 2, 3]
    assert compat.round_half_away_from_zero(T.constant(2.5)).eval() == 3


def test_weight_binarization_equals_rounding_the_hard_sigmoid():
    """binarize_weights compares p >= 0.5 instead of rounding p; both must agree on every float32 edge."""
    W = T.vector()
    p = binary_connect.hard_sigmoid(W)
    by_rounding = theano.function([W], 2 * compat.round_half_away_from_zero(p) - 1)
    binarize = theano.function([W], binary_connect.binarize_weights(W))
    tiny = np.finfo(np.float32).tiny
    edges = f32([-1., -1e-7, -6e-8, -3e-8, -tiny, 0., tiny, 3e-8, 1e-7, 1.] + list(np.random.RandomState(0).randn(99)))
    assert np.array_equal(binarize(edges), by_rounding(edges))


@pytest.mark.parametrize("widths,expected", [
    ((784, 4096, 4096, 4096, 10), (57.038, 73.90083, 73.90083, 52.31953)),       # BinaryNet MNIST (§2.3)
    ((784, 2048, 2048, 2048, 10), (43.451122, 52.255783, 52.255783, 37.04052)),  # BinaryConnect MNIST
])
def test_glorot_learning_rate_scales_of_the_mnist_networks(widths, expected):
    scales = [binary_connect.glorot_lr_scale(a, b) for a, b in zip(widths, widths[1:])]
    np.testing.assert_allclose(scales, expected, rtol=1e-6)


def test_layers_take_their_fans_from_the_shapes():
    net = lasagne.layers.InputLayer((None, 1, 5, 4))
    dense = binary_connect.DenseLayer(net, 7)
    assert dense.W_LR_scale == pytest.approx(np.sqrt((20 + 7) / 1.5), rel=1e-6)
    conv = binary_connect.Conv2DLayer(lasagne.layers.InputLayer((None, 3, 8, 8)), 16, (3, 3), pad=1)
    assert conv.W_LR_scale == pytest.approx(np.sqrt((9 * 3 + 9 * 16) / 1.5), rel=1e-6)
    assert dense.params[dense.W] == {"binary"}  # W is updated by the scaled, clipped Adam only
    assert np.abs(dense.W.get_value()).max() <= 1


def test_one_update_step_matches_numpy_scaled_adam_and_clip():
    """A binary dense layer 4 -> 3 as the whole network: one train_fn call against a NumPy computation."""
    np.random.seed(3)
    x_var, t_var, lr_var = T.matrix(), T.matrix(), T.scalar()
    net = binary_connect.DenseLayer(lasagne.layers.InputLayer((None, 4), x_var), 3, stochastic=False,
                                    nonlinearity=lasagne.nonlinearities.identity)
    W0 = f32([[0.99, -0.2, 0.], [-0.995, 0.5, 0.3], [0.1, -0.7, 0.98], [-0.4, 0.02, -0.9]])
    b0 = f32([0.1, -0.2, 0.05])
    net.W.set_value(W0)
    net.b.set_value(b0)
    train_fn, _, _ = binary_connect.compile_functions(net, x_var, t_var, lr_var)
    X = f32(np.random.randn(5, 4))
    Y = f32(2 * np.eye(3)[[0, 1, 2, 0, 1]] - 1)
    LR = 0.01
    loss = train_fn(X, Y, LR)

    Wb = np.where(W0 >= 0, 1., -1.)
    out = X.astype(np.float64) @ Wb + b0
    margin = np.maximum(0, 1 - Y * out)
    assert loss == pytest.approx(np.mean(margin ** 2), rel=1e-5)
    d_out = -2 * Y * margin / Y.size
    g_W, g_b = X.T @ d_out, d_out.sum(axis=0)

    def adam_first_step(g):
        m, v = 0.1 * g, 0.001 * g ** 2
        a1 = LR * np.sqrt(1 - 0.999) / (1 - 0.9)
        return a1 * m / (np.sqrt(v) + 1e-8)

    scale = np.sqrt((4 + 3) / 1.5)
    W_expected = np.clip(W0 - scale * adam_first_step(g_W), -1, 1)
    np.testing.assert_allclose(net.W.get_value(), W_expected, rtol=1e-4, atol=1e-6)
    assert np.sum(np.abs(W_expected) == 1) >= 1  # the case really exercises the clip
    np.testing.assert_allclose(net.b.get_value(), b0 - adam_first_step(g_b), rtol=1e-4, atol=1e-7)


def _bn_functions(layer_class, **kwargs):
    x = T.matrix()
    layer = layer_class(lasagne.layers.InputLayer((None, 3), x), **kwargs)
    train = theano.function([x], lasagne.layers.get_output(layer, deterministic=False))
    test = theano.function([x], lasagne.layers.get_output(layer, deterministic=True))
    return layer, train, test


def test_binarynet_batch_norm_adds_epsilon_to_the_variance_and_averages_inv_std():
    layer, train, test = _bn_functions(compat.BatchNormLayer, epsilon=1e-4, alpha=0.1)
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
    layer, train, test = _bn_functions(compat.BCBatchNormLayer, epsilon=1e-4, alpha=0.15,
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


def test_squared_hinge_loss_and_error_rate_on_a_hand_made_case():
    y, t = T.matrix(), T.matrix()
    f = theano.function([y, t], [binary_connect.squared_hinge_loss(y, t), binary_connect.error_rate(y, t)])
    out = f32([[0.5, -2., 0.], [3., 1., -1.]])
    targets = f32([[1, -1, -1], [-1, 1, -1]])
    # margins 1 - t*y: [0.5, -1, 1], [4, 0, 0] -> squares 0.25, 0, 1, 16, 0, 0; mean over 6 entries
    # argmax rows: 0 vs 0 (right), 0 vs 1 (wrong) -> error 0.5
    loss, err = f(out, targets)
    assert loss == pytest.approx(17.25 / 6)
    assert err == pytest.approx(0.5)


def test_learning_rate_schedule():
    assert binary_connect.lr_decay(0.003, 3e-7, 1000) == pytest.approx(0.990831945, rel=1e-9)  # BNN MNIST
    assert binary_connect.lr_decay(0.001, 3e-6, 250) == pytest.approx(0.977031318, rel=1e-9)   # BC MNIST
    decay = binary_connect.lr_decay(0.01, 0.0001, 4)
    assert 0.01 * decay ** 4 == pytest.approx(0.0001)  # LR_fin would be the LR after the last epoch


def test_conv_layer_convolves_with_the_binarized_weights():
    x = T.tensor4()
    conv = binary_connect.Conv2DLayer(lasagne.layers.InputLayer((None, 1, 5, 5), x), 1, (3, 3), pad=1,
                                      stochastic=False, nonlinearity=lasagne.nonlinearities.identity)
    W = f32(np.random.RandomState(2).uniform(-1, 1, (1, 1, 3, 3)))
    W[0, 0, 1, 1] = 0.
    conv.W.set_value(W)
    image = f32(np.random.RandomState(3).randn(1, 1, 5, 5))
    out = theano.function([x], lasagne.layers.get_output(conv, deterministic=True))(image)
    expected = convolve2d(image[0, 0], np.where(W[0, 0] >= 0, 1., -1.), mode="same")  # true convolution
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5, atol=1e-5)
    train_out = theano.function([x], lasagne.layers.get_output(conv, deterministic=False))(image)
    np.testing.assert_allclose(train_out, out, rtol=1e-6)
    assert np.array_equal(conv.W.get_value(), W)  # the real weights are kept, only the propagation is binary
