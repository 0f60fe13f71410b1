"""The ConvNet of cifar10.py / svhn.py (convnet.py): structure against ORIGINALS.md §2.2-§2.4, learning on a
generated problem with every method, binary effective weights."""
import numpy as np
import pytest

import batch_norm
import binary_connect
import convnet
from plumbing import cli
from plumbing.compat import T, lasagne, theano

METHODS = tuple(cli.METHODS)


def hp_for(method):
    return dict(binary=method != "float", stochastic=method == "bc-stoch", H=1., W_LR_scale="Glorot",
                epsilon=1e-4, alpha=.1)


def weight_layers(net):
    return [layer for layer in lasagne.layers.get_all_layers(net) if hasattr(layer, "W")]


def total_size(params):
    return sum(p.get_value(borrow=True).size for p in params)


# --------------------------------------------------------------------------- structure of the full-size stacks
@pytest.mark.parametrize("method", ["binarynet", "bc-det"])
@pytest.mark.parametrize("widths, n_binary, n_units", [(convnet.CIFAR10_WIDTHS, 14022016, 3850),
                                                       (convnet.SVHN_WIDTHS, 6397632, 2954)])
def test_parameter_counts_match_the_spec(method, widths, n_binary, n_units):
    """ORIGINALS.md §2.4: binary W, biases and 4 BN vectors per unit; trainable = W + b + beta + gamma."""
    net = convnet.build_convnet(cli.family(method), T.tensor4(), hp_for(method), widths)
    assert total_size(lasagne.layers.get_all_params(net, binary=True)) == n_binary
    others = lasagne.layers.get_all_params(net, trainable=True)
    assert total_size(others) == 3 * n_units                      # b, beta, gamma; W has only the 'binary' tag
    assert total_size(lasagne.layers.get_all_params(net)) == n_binary + 5 * n_units
    assert n_binary + 3 * n_units == {14022016: 14033566, 6397632: 6406494}[n_binary]


def test_float_network_trains_its_weights_with_the_other_parameters():
    net = convnet.build_convnet("binaryconnect", T.tensor4(), hp_for("float"), convnet.SVHN_WIDTHS)
    assert lasagne.layers.get_all_params(net, binary=True) == []
    assert total_size(lasagne.layers.get_all_params(net, trainable=True)) == 6406494


@pytest.mark.parametrize("widths, conv_scales, dense_scales", [
    (convnet.CIFAR10_WIDTHS, [28.035692, 39.191837, 48.0, 55.425625, 67.88225, 78.383675],
     [78.383675, 36.950417, 26.255157]),
    (convnet.SVHN_WIDTHS, [20.049938, 27.712812, 33.941124, 39.191837, 48.0, 55.425625],
     [58.42374, 36.950417, 26.255157])])
def test_glorot_learning_rate_scales_match_the_spec(widths, conv_scales, dense_scales):
    """ORIGINALS.md §2.3, conv fans k*k*C (no pool correction), dense fans from the flattened input."""
    net = convnet.build_convnet("binaryconnect", T.tensor4(), hp_for("bc-stoch"), widths)
    layers = weight_layers(net)
    assert [type(layer) for layer in layers] == [binary_connect.Conv2DLayer] * 6 + [binary_connect.DenseLayer] * 3
    np.testing.assert_allclose([layer.W_LR_scale for layer in layers], conv_scales + dense_scales, rtol=1e-6)
    assert all(layer.H == 1 for layer in layers)


def layer_summary(net):
    names = {lasagne.layers.InputLayer: "in", binary_connect.Conv2DLayer: "conv", binary_connect.DenseLayer: "dense",
             lasagne.layers.MaxPool2DLayer: "pool", batch_norm.BatchNormLayer: "bn", batch_norm.BCBatchNormLayer: "bn",
             lasagne.layers.NonlinearityLayer: "act"}
    return [(names[type(layer)], layer.output_shape[1:]) for layer in lasagne.layers.get_all_layers(net)]


def test_binarynet_stack_pools_before_batch_norm_with_the_spec_shapes():
    net = convnet.build_convnet("binarynet", T.tensor4(), hp_for("binarynet"), convnet.CIFAR10_WIDTHS)
    expected = [("in", (3, 32, 32))]
    for f, size in ((128, 32), (256, 16), (512, 8)):
        expected += [("conv", (f, size, size)), ("bn", (f, size, size)), ("act", (f, size, size)),
                     ("conv", (f, size, size)), ("pool", (f, size // 2, size // 2)),
                     ("bn", (f, size // 2, size // 2)), ("act", (f, size // 2, size // 2))]
    expected += [("dense", (1024,)), ("bn", (1024,)), ("act", (1024,))] * 2 + [("dense", (10,)), ("bn", (10,))]
    assert layer_summary(net) == expected
    acts = [layer for layer in lasagne.layers.get_all_layers(net)
            if isinstance(layer, lasagne.layers.NonlinearityLayer)]
    assert len(acts) == 8 and all(layer.nonlinearity.__name__ == "binary_tanh_unit" for layer in acts)


def test_binaryconnect_stack_has_relu_inside_batch_norm_and_identity_at_the_output():
    net = convnet.build_convnet("binaryconnect", T.tensor4(), hp_for("bc-det"), convnet.SVHN_WIDTHS)
    kinds = [kind for kind, _ in layer_summary(net)]
    assert kinds == ["in"] + ["conv", "bn", "conv", "pool", "bn"] * 3 + ["dense", "bn"] * 3
    bns = [layer for layer in lasagne.layers.get_all_layers(net) if isinstance(layer, batch_norm.BCBatchNormLayer)]
    assert [bn.nonlinearity for bn in bns] == [lasagne.nonlinearities.rectify] * 8 + [lasagne.nonlinearities.identity]
    assert all(layer.output_shape[1] == 1024 for layer in weight_layers(net)[6:8])   # SVHN keeps 1024 dense units
    assert all(bn.epsilon == 1e-4 and bn.alpha == .1 for bn in bns)


def test_width_multiplier_scales_and_keeps_one_unit():
    assert [convnet.scaled(f, 0.0625) for f in convnet.CIFAR10_WIDTHS + (1024,)] == [8, 16, 32, 64]
    assert convnet.scaled(64, 0.001) == 1 and convnet.scaled(1024, 1.0) == 1024


# --------------------------------------------------------------------------- a tiny ConvNet: propagation, learning
N_CLASSES = 4


def template_problem(n, seed):
    """Each class is a fixed random +-1 pattern on 3x8x8 images plus Gaussian noise; targets in {-1, +1}."""
    templates = np.sign(np.random.RandomState(0).randn(N_CLASSES, 3, 8, 8))
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, N_CLASSES, n)
    X = (templates[labels] + 0.5 * rng.randn(n, 3, 8, 8)).astype(np.float32)
    y = -np.ones((n, 10), np.float32)
    y[np.arange(n), labels] = 1
    return X, y


def tiny_convnet(method, x):
    """A width-1/16 CIFAR ConvNet on 8x8 images."""
    np.random.seed(1234)
    return convnet.build_convnet(cli.family(method), x, hp_for(method), widths=(8, 16, 32), dense_units=64,
                                 image_shape=(3, 8, 8))


@pytest.fixture(scope="module", params=METHODS)
def network(request):
    """The tiny ConvNet (initial weights, W ~ U(-1, 1)) and its training-graph forward function."""
    x = T.tensor4("x")
    net = tiny_convnet(request.param, x)
    forward = theano.function([x], lasagne.layers.get_output(net, deterministic=False))
    return dict(method=request.param, net=net, forward=forward)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_tiny_convnet_learns_with_each_method(method):
    """5 epochs of 10 minibatches on the template problem."""
    x, t, lr = T.tensor4("x"), T.matrix("t"), T.scalar("LR")
    net = tiny_convnet(method, x)
    train_fn, val_fn, _ = binary_connect.compile_functions(net, x, t, lr)
    X, y = template_problem(200, 1)
    LR = 0.03 if method == "bc-stoch" else 0.01      # sampled weights need bigger steps to move off zero
    losses = [binary_connect.epoch_pass(train_fn, X, y, 20, LR=LR) for _ in range(5)]
    X_new, y_new = template_problem(100, 2)
    forward = theano.function([x], lasagne.layers.get_output(net, deterministic=False))   # training graph
    train_graph_error = 100. * np.mean(np.argmax(forward(X_new), 1) != np.argmax(y_new, 1))
    error = binary_connect.epoch_pass(val_fn, X_new, y_new, 20)[1]
    chance = 100. * (N_CLASSES - 1) / N_CLASSES
    assert losses[-1] < 0.5 * losses[0], losses
    if method == "bc-stoch":
        # Stochastic BC samples new signs at every call, and is evaluated with its real weights (ORIGINALS.md
        # §1.1) and BN statistics gathered with sampled weights; with 8-filter layers and 50 steps it is noisy
        # (about 50% error here), so it must only beat chance (75%) by more than 3 standard deviations.
        assert train_graph_error < 60 and error < 60, (train_graph_error, error)
    else:
        assert train_graph_error < chance / 2 and error < chance / 2, (method, train_graph_error, error)


def test_conv_weights_are_plus_minus_one_in_the_training_graph(network):
    """The training graph propagates Wb = sign(W) (0 -> +1; stochastic: random signs); W itself stays real."""
    net = network["net"]
    lasagne.layers.get_output(net, deterministic=False)          # refreshes layer.Wb with the training graph's
    convs = [layer for layer in weight_layers(net) if isinstance(layer, binary_connect.Conv2DLayer)]
    Wb = theano.function([], [layer.Wb for layer in convs])()
    for layer, wb in zip(convs, Wb):
        W = layer.W.get_value()
        if network["method"] == "float":
            np.testing.assert_array_equal(wb, W)
            continue
        assert set(np.unique(wb)) == {-1., 1.}
        assert np.abs(W).min() < 1 and not np.all(np.abs(W) == 1)  # the real weights are not binary
        if network["method"] in ("binarynet", "bc-det"):
            np.testing.assert_array_equal(wb, np.where(W >= 0, 1., -1.))


def test_training_output_depends_only_on_the_signs_of_the_weights(network):
    """Rescaling every weight by a positive factor changes nothing for the deterministic binary methods."""
    net = network["net"]
    forward = network["forward"]
    X, _ = template_problem(20, 3)
    before = forward(X)
    if network["method"] == "bc-stoch":        # instead: a new draw of the binary weights at every call
        assert not np.array_equal(forward(X), before)
        return
    rng = np.random.RandomState(4)
    saved = [layer.W.get_value() for layer in weight_layers(net)]
    for layer, W in zip(weight_layers(net), saved):
        layer.W.set_value((W * rng.uniform(0.1, 1., W.shape)).astype(np.float32))
    after = forward(X)
    for layer, W in zip(weight_layers(net), saved):
        layer.W.set_value(W)
    if network["method"] == "float":
        assert not np.allclose(after, before, atol=1e-3)
    else:
        np.testing.assert_array_equal(after, before)
