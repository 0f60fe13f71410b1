"""plumbing/fused_batch_norm.py: a ConvNet layer's training-mode batch norm as two C ops. The forward pass and the
running averages are the graph's bits; the gradient matches the same graph evaluated in float64 (and NumPy's float64
formulas) to float32 rounding; the ops are used only where they compute the layers' function."""
import numpy as np
import pytest

from plumbing import compat  # noqa: F401  (first: Theano's flags)
from plumbing import fused_batch_norm
from plumbing.compat import T, lasagne, theano

import batch_norm

SHAPE = (6, 5, 4, 3)  # N, C, H, W
KINDS = {  # name: (layer class, keyword arguments)
    "binarynet": (batch_norm.BatchNormLayer, {}),
    "binaryconnect-relu": (batch_norm.BCBatchNormLayer, {"nonlinearity": lasagne.nonlinearities.rectify}),
    "binaryconnect-identity": (batch_norm.BCBatchNormLayer, {}),
}


def layer_and_function(kind, path, monkeypatch, dtype="float32", shape=SHAPE):
    """The layer on a (N, C, H, W) input with random parameters, and a function (x, dy) -> [y, dx, d params...]
    built with BINARYNET_BN=path."""
    monkeypatch.setenv("BINARYNET_BN", path)
    cls, kwargs = KINDS[kind]
    x, dy = T.tensor4("x", dtype=dtype), T.tensor4("dy", dtype=dtype)
    layer = cls(lasagne.layers.InputLayer(shape, x), epsilon=1e-4, alpha=0.1, **kwargs)
    rng = np.random.RandomState(1)
    for p in layer.get_params():
        p.set_value(rng.uniform(0.5, 1.5, p.get_value().shape).astype(p.dtype))
    y = lasagne.layers.get_output(layer)
    wrt = [x] + layer.get_params(trainable=True)
    return layer, theano.function([x, dy], [y] + theano.grad((y * dy).sum(), wrt))


def data(seed=0, shape=SHAPE):
    rng = np.random.RandomState(seed)
    return (rng.randn(*shape) * 2 + 1).astype(np.float32), rng.randn(*shape).astype(np.float32)


def fused_ops(function):
    return sorted(type(node.op).__name__ for node in function.maker.fgraph.toposort()
                  if isinstance(node.op, (fused_batch_norm.BatchNormTrain, fused_batch_norm.BatchNormTrainGrad)))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_forward_and_running_averages_are_the_graphs_bits(kind, monkeypatch):
    x, dy = data()
    results = {}
    for path in ("fused", "graph"):
        layer, f = layer_and_function(kind, path, monkeypatch)
        assert fused_ops(f) == (["BatchNormTrain", "BatchNormTrainGrad"] if path == "fused" else [])
        y = f(x, dy)[0]
        results[path] = [y] + [p.get_value() for p in layer.get_params(trainable=False)]
    for fused, graph in zip(results["fused"], results["graph"]):
        np.testing.assert_array_equal(fused, graph)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradient_matches_the_graph_in_float64(kind, monkeypatch):
    """Both float32 paths against the graph in float64: the fused one within 2e-6 of the largest value, and no
    further from it than 2x the float32 graph's own rounding (plus one float32 ulp of slack)."""
    x, dy = data()
    fused = layer_and_function(kind, "fused", monkeypatch)[1](x, dy)[1:]
    graph = layer_and_function(kind, "graph", monkeypatch)[1](x, dy)[1:]
    exact = layer_and_function(kind, "graph", monkeypatch, dtype="float64")[1](x.astype(np.float64),
                                                                               dy.astype(np.float64))[1:]
    for ours, theirs, reference in zip(fused, graph, exact):
        scale = np.abs(reference).max()
        ours_error = np.abs(ours - reference).max() / scale
        assert ours_error < 2e-6
        assert ours_error <= 2 * np.abs(theirs - reference).max() / scale + 6e-8


def numpy_batch_norm(x, dy, gamma, beta, kind, eps, relu):
    """The module docstring's formulas in float64, per channel over axes (0, 2, 3): (y, dx, dgamma, dbeta)."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    g4, b4 = gamma.reshape(1, -1, 1, 1).astype(np.float64), beta.reshape(1, -1, 1, 1).astype(np.float64)
    axes, count = (0, 2, 3), x.size / x.shape[1]
    d = x - x.mean(axes, keepdims=True)
    v = (d * d).mean(axes, keepdims=True)
    s = 1 / np.sqrt(v + eps) if kind == "lasagne" else 1 / (np.sqrt(v) + eps)
    z = d * g4 * s + b4
    y = np.maximum(z, 0) if relu else z
    g = dy * np.where(z > 0, 1.0, np.where(z < 0, 0.0, 0.5)) if relu else dy
    ds_dv = -0.5 * s ** 3 if kind == "lasagne" else -s * s * 0.5 / np.sqrt(v)
    dv = g4 * (g * d).sum(axes, keepdims=True) * ds_dv
    dm = -g4 * s * g.sum(axes, keepdims=True) - dv * 2 * d.sum(axes, keepdims=True) / count
    dx = g4 * s * g + dv * 2 * d / count + dm / count
    return y, dx, (s * (g * d).sum(axes, keepdims=True)).ravel(), g.sum(axes)


@pytest.mark.parametrize("kind, relu", [("lasagne", False), ("binaryconnect", True), ("binaryconnect", False)])
def test_ops_compute_the_docstring_formulas(kind, relu):
    x, dy = data(seed=2)
    gamma = np.linspace(0.5, 1.5, SHAPE[1]).astype(np.float32)
    beta = np.linspace(-0.2, 0.3, SHAPE[1]).astype(np.float32)
    xv, dyv, gv, bv = T.tensor4(), T.tensor4(), T.vector(), T.vector()
    y, mean, spread = fused_batch_norm.batch_norm_train(xv, gv, bv, kind, 1e-4, relu)
    grads = fused_batch_norm.BatchNormTrainGrad(kind, 1e-4, relu)(xv, dyv, gv, bv, mean, spread)
    got = theano.function([xv, dyv, gv, bv], [y] + grads)(x, dy, gamma, beta)
    for ours, reference in zip(got, numpy_batch_norm(x, dy, gamma, beta, kind, 1e-4, relu)):
        np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-6 * np.abs(reference).max())


def test_a_hand_computed_channel():
    """x = 1, 3, 5, 7 in one channel: mean 4, variance (9 + 1 + 1 + 9) / 4 = 5; gamma 2, beta 1, eps 0 (Lasagne):
    y = (x - 4) * 2 / sqrt(5) + 1. With dy = 1 everywhere, dx = 0 (y's sum does not depend on x) and dgamma =
    sum((x - 4) / sqrt(5)) = 0, dbeta = 4."""
    x = np.array([1, 3, 5, 7], np.float32).reshape(2, 1, 1, 2)
    xv, dyv = T.tensor4(), T.tensor4()
    y, mean, spread = fused_batch_norm.batch_norm_train(xv, np.float32([2]), np.float32([1]), "lasagne", 0.0)
    dx, dgamma, dbeta = fused_batch_norm.BatchNormTrainGrad("lasagne", 0.0)(
        xv, dyv, np.float32([2]), np.float32([1]), mean, spread)
    out = theano.function([xv, dyv], [y, mean, spread, dx, dgamma, dbeta])(x, np.ones_like(x))
    np.testing.assert_allclose(out[0].ravel(), (np.array([1, 3, 5, 7]) - 4) * 2 / np.sqrt(5) + 1, rtol=1e-6)
    np.testing.assert_allclose(out[1:3], [[4], [1 / np.sqrt(5)]], rtol=1e-6)
    np.testing.assert_allclose(out[3], 0, atol=1e-6)
    np.testing.assert_allclose(out[4:], [[0], [4]], atol=1e-6)


def test_relu_slope_is_one_half_where_z_is_zero(monkeypatch):
    """Theano's rectify is 0.5 * (z + |z|); its gradient at z = 0 is 0.5 * dy. x = 1, 2, 3 and beta 0 give the middle
    value z = 0 exactly; the fused gradient for beta (sum of the slopes times dy = 1) is 1 + 0.5 = 1.5, as the
    graph's."""
    x = np.array([1, 2, 3], np.float32).reshape(1, 1, 1, 3)
    sums = []
    for path in ("fused", "graph"):
        layer, f = layer_and_function("binaryconnect-relu", path, monkeypatch, shape=(1, 1, 1, 3))
        layer.beta.set_value(np.zeros((1, 1, 1, 1), np.float32))
        sums.append(f(x, np.ones_like(x))[2].ravel()[0])  # [y, dx, dbeta, dgamma]
    assert fused_ops(f) == [] and sums[0] == sums[1] == 1.5


def test_dense_float64_and_graph_choice_stay_theanos_graph(monkeypatch):
    f = layer_and_function("binarynet", "graph", monkeypatch)[1]
    assert fused_ops(f) == []
    f = layer_and_function("binarynet", "fused", monkeypatch, dtype="float64")[1]
    assert fused_ops(f) == []
    monkeypatch.setenv("BINARYNET_BN", "fused")
    dense = batch_norm.BatchNormLayer(lasagne.layers.InputLayer((4, 3), T.matrix()))
    out = lasagne.layers.get_output(dense)
    assert not any(isinstance(v.owner.op, fused_batch_norm.BatchNormTrain)
                   for v in theano.gof.graph.ancestors([out]) if v.owner)


def test_test_mode_uses_the_stored_statistics(monkeypatch):
    monkeypatch.setenv("BINARYNET_BN", "fused")
    x = T.tensor4()
    layer = batch_norm.BatchNormLayer(lasagne.layers.InputLayer(SHAPE, x))
    f = theano.function([x], lasagne.layers.get_output(layer, deterministic=True))
    assert fused_ops(f) == []


@pytest.mark.parametrize("value, expected", [("fused", True), ("", True), ("graph", False), (" GRAPH ", False)])
def test_binarynet_bn_chooses(monkeypatch, value, expected):
    monkeypatch.setenv("BINARYNET_BN", value)
    assert fused_batch_norm.wanted() is expected


def test_binarynet_bn_rejects_other_values_in_one_line(monkeypatch):
    monkeypatch.setenv("BINARYNET_BN", "cudnn")
    with pytest.raises(SystemExit, match=r"^error: BINARYNET_BN='cudnn' is not a choice; use fused .* or graph$"):
        fused_batch_norm.wanted()


def test_wrong_parameter_length_fails_with_one_line_naming_the_fix():
    xv = T.tensor4()
    y = fused_batch_norm.batch_norm_train(xv, np.ones(4, np.float32), np.zeros(4, np.float32), "lasagne", 1e-4)[0]
    with pytest.raises(ValueError, match=r"gamma and beta need one value per channel.*BINARYNET_BN=graph"):
        theano.function([xv], y)(np.ones(SHAPE, np.float32))


def test_an_empty_batch_fails_with_one_line():
    xv = T.tensor4()
    y = fused_batch_norm.batch_norm_train(xv, np.ones(5, np.float32), np.zeros(5, np.float32), "lasagne", 1e-4)[0]
    with pytest.raises(ValueError, match=r"no values to normalize"):
        theano.function([xv], y)(np.ones((0, 5, 4, 3), np.float32))


def test_batch_statistics_are_not_differentiated():
    xv = T.tensor4()
    mean = fused_batch_norm.batch_norm_train(xv, np.ones(5, np.float32), np.zeros(5, np.float32), "lasagne", 1e-4)[1]
    with pytest.raises(NotImplementedError, match="BINARYNET_BN=graph"):
        theano.grad(mean.sum(), xv)
