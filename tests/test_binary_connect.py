"""One test per rule of ORIGINALS.md §1 that binary_connect.py implements: weight binarization, Glorot scales, the
two Adams with scaling and clipping, loss and error, the binary conv layer, the two shuffles and the training loop.
Each against NumPy or a hand-checked case."""
import io
from collections import OrderedDict

import numpy as np
import pytest
from scipy.signal import convolve2d

import batch_norm
import binary_connect
from plumbing import compat, dnnl_conv
from plumbing.compat import T, lasagne, theano

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


def test_conv_layer_pads_inside_the_convolution_with_lasagnes_numbers():
    """docs/speed.md: the padding is CorrMM's own; output and both gradients equal, bit for bit, those of Lasagne 0.1's
    path (copy into a zero tensor, then an unpadded convolution), and no copy is left in the graph. With oneDNN's
    convolutions (the default, plumbing/dnnl_conv.py), which sum in their own order per padding, equal to 1e-5."""
    x, g = T.tensor4(), T.tensor4()
    conv = binary_connect.Conv2DLayer(lasagne.layers.InputLayer((None, 4, 6, 6), x), 5, (3, 3), pad=1,
                                      stochastic=False, nonlinearity=lasagne.nonlinearities.identity)
    rng = np.random.RandomState(4)
    image, grad_out = f32(rng.randn(3, 4, 6, 6)), f32(rng.randn(3, 5, 6, 6))

    def lasagnes(layer, inputs, deterministic=False):
        return layer._output_with_binary_weights(lasagne.layers.Conv2DLayer.get_output_for, inputs, deterministic)

    for mode in (dnnl_conv.corrmm_mode(), None):
        results = []
        for output in (binary_connect.Conv2DLayer.get_output_for, lasagnes):
            y = output(conv, x, deterministic=False)
            f = theano.function([x, g], [y] + T.grad(T.sum(y * g), [x, conv.Wb]), mode=mode)
            ops = [type(node.op).__name__ for node in f.maker.fgraph.toposort()]
            results.append((f(image, grad_out), ops))
        (ours, our_ops), (theirs, their_ops) = results
        if mode is None:
            assert all(np.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(ours, theirs))
        else:
            assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
        assert "IncSubtensor" in their_ops and "IncSubtensor" not in our_ops and "Alloc" not in our_ops


# --------------------------------------------------------------------------- the two Adams over several steps
ADAM_EPS, BN_EPS = 1e-8, 1e-4


def adam_step(g, m, v, t, LR):
    """Lasagne's Adam (beta1 0.9, beta2 0.999, eps 1e-8) at step t >= 1: (step, new m, new v)."""
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    a_t = LR * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    return a_t * m / (np.sqrt(v) + ADAM_EPS), m, v


def dense_bn_loss_and_grads(W, gamma, beta, X, Y):
    """float64 forward and backward of x -> BN(x . sign(W)) (batch statistics, biased variance) -> squared hinge.

    Returns the loss and the gradients with respect to Wb, gamma and beta (Wb's gradient is what W's Adam sees)."""
    Wb = np.where(W >= 0, 1., -1.)
    x = X @ Wb
    inv_std = 1 / np.sqrt(x.var(0) + BN_EPS)
    xhat = (x - x.mean(0)) * inv_std
    out = gamma * xhat + beta
    margin = np.maximum(0, 1 - Y * out)
    d_out = -2 * Y * margin / Y.size
    d_xhat = d_out * gamma
    d_x = inv_std * (d_xhat - d_xhat.mean(0) - xhat * (d_xhat * xhat).mean(0))
    return np.mean(margin ** 2), X.T @ d_x, (d_out * xhat).sum(0), d_out.sum(0)


def test_reference_gradients_agree_with_finite_differences():
    """The hand-derived batch-norm backward pass used below, checked against central differences in Wb."""
    rng = np.random.RandomState(8)
    X, Y = rng.randn(6, 4), 2 * np.eye(3)[[0, 1, 2, 0, 1, 2]] - 1
    gamma, beta = np.array([1., 1.5, 0.7]), np.array([0., 0.2, -0.1])
    Wb = np.where(rng.randn(4, 3) >= 0, 1., -1.)

    def loss(Wb_real, g, b):  # the loss as a smooth function of real-valued Wb (no sign)
        x = X @ Wb_real
        out = g * (x - x.mean(0)) / np.sqrt(x.var(0) + BN_EPS) + b
        return np.mean(np.maximum(0, 1 - Y * out) ** 2)

    _, g_Wb, g_gamma, g_beta = dense_bn_loss_and_grads(Wb, gamma, beta, X, Y)
    h = 1e-6
    for value, grad, f in ((Wb, g_Wb, lambda p: loss(p, gamma, beta)), (gamma, g_gamma, lambda p: loss(Wb, p, beta)),
                           (beta, g_beta, lambda p: loss(Wb, gamma, p))):
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            e = np.zeros_like(value)
            e[i] = h
            numeric[i] = (f(value + e) - f(value - e)) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-9)


def test_the_two_adams_over_three_steps_with_batch_norm_and_separate_step_counters():
    """Binary dense 4 -> 3 (no bias) + BinaryNet batch norm: three train_fn calls against NumPy.

    W: Adam on dloss/dWb, step times W_LR_scale, clipped to [-1, 1]; beta, gamma: plain Adam (ORIGINALS.md §1.5).
    Each Adam has its own step counter: after step 2 both are at 2; then the W Adam's counter is set to 10, so step
    3 uses t = 11 for W and t = 3 for beta and gamma."""
    x_var, t_var, lr_var = T.matrix(), T.matrix(), T.scalar()
    dense = binary_connect.DenseLayer(lasagne.layers.InputLayer((None, 4), x_var), 3, stochastic=False, b=None,
                                      nonlinearity=lasagne.nonlinearities.identity)
    net = batch_norm.BatchNormLayer(dense, epsilon=BN_EPS, alpha=0.1)
    W = np.array([[0.99, -0.2, 0.05], [-0.995, 0.5, 0.3], [0.1, -0.7, 0.98], [-0.4, 0.02, -0.9]])
    gamma, beta = np.array([1., 1.5, 0.7]), np.array([0., 0.2, -0.1])
    dense.W.set_value(f32(W))
    net.gamma.set_value(f32(gamma))
    net.beta.set_value(f32(beta))
    train_fn, _, updates = binary_connect.compile_functions(net, x_var, t_var, lr_var)
    counters = [var for var in updates if var.ndim == 0]
    assert len(counters) == 2  # one per Adam

    rng = np.random.RandomState(3)
    scale = np.sqrt((4 + 3) / 1.5)
    state = {name: (np.zeros_like(value), np.zeros_like(value))  # Adam's m and v
             for name, value in (("W", W), ("gamma", gamma), ("beta", beta))}
    clipped = 0
    for step, LR in ((1, 0.01), (2, 0.02), (3, 0.005)):
        t_W, t_other = (11, 3) if step == 3 else (step, step)
        if step == 3:
            assert [c.get_value() for c in counters] == [2, 2]
            counters[0].set_value(f32(10))  # the binary weights' Adam comes first in the updates
        X = rng.randn(6, 4)
        Y = 2 * np.eye(3)[rng.randint(0, 3, 6)] - 1
        loss, g_W, g_gamma, g_beta = dense_bn_loss_and_grads(W, gamma, beta, X, Y)
        assert train_fn(f32(X), f32(Y), LR) == pytest.approx(loss, rel=1e-5)

        s, *state["W"] = adam_step(g_W, *state["W"], t_W, LR)
        W = np.clip(W - scale * s, -1, 1)
        s, *state["gamma"] = adam_step(g_gamma, *state["gamma"], t_other, LR)
        gamma = gamma - s
        s, *state["beta"] = adam_step(g_beta, *state["beta"], t_other, LR)
        beta = beta - s
        assert np.abs(W).min() > 1e-3  # no weight close enough to 0 for float32 rounding to flip its sign
        clipped += np.sum(np.abs(W) == 1)
        np.testing.assert_allclose(dense.W.get_value(), W, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(net.gamma.get_value(), gamma, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(net.beta.get_value(), beta, rtol=1e-4, atol=1e-6)
    assert [c.get_value() for c in counters] == [11, 3]
    assert clipped >= 1  # the case exercises the clip


def test_one_adam_over_all_parameters_without_binary_layers():
    """The 'float' networks: no binary layer, so a single Adam updates everything (one step counter)."""
    x_var, lr_var = T.matrix(), T.scalar()
    net = binary_connect.DenseLayer(lasagne.layers.InputLayer((None, 4), x_var), 3, binary=False)
    updates = binary_connect.adam_updates(T.sum(lasagne.layers.get_output(net)), net, lr_var)
    assert len([var for var in updates if var.ndim == 0]) == 1
    assert net.W in updates and net.b in updates and net.params[net.W] == {"trainable", "regularizable"}


def originals_adam_updates(loss, network, learning_rate):
    """adam_updates as the originals wrote it: one theano.grad per binary layer, and Lasagne's adam given the loss
    (so one more theano.grad for the other parameters)."""
    W = lasagne.layers.get_all_params(network, binary=True)
    grads = [theano.grad(loss, wrt=layer.Wb) for layer in binary_connect.binary_layers(network)]
    updates = OrderedDict(lasagne.updates.adam(grads, W, learning_rate=learning_rate))
    updates = binary_connect.scale_and_clip(updates, network)
    others = lasagne.layers.get_all_params(network, trainable=True, binary=False)
    updates.update(lasagne.updates.adam(loss, others, learning_rate=learning_rate))
    return updates


def printed(function):
    text = io.StringIO()
    theano.printing.debugprint(function, file=text, print_type=True)
    return text.getvalue()


@pytest.mark.parametrize("name", ["bnn-mnist", "bc-mnist"])
def test_one_grad_call_compiles_the_same_functions_as_the_originals_per_layer_calls(name):
    """compile_functions takes all gradients in one theano.grad call and records no creation traces while it builds
    them and compiles; the originals called theano.grad once per layer, with traces. Theano's optimizer must make
    the same training and test functions of both (same ops, same order, same types)."""
    import benchmark_training

    def build():
        x, y, lr = T.tensor4("inputs"), T.matrix("targets"), T.scalar("LR")
        np.random.seed(3)
        net, _, _ = benchmark_training.build(name, 1 / 256, x)
        return net, x, y, lr

    net, x, y, lr = build()
    loss = binary_connect.squared_hinge_loss(lasagne.layers.get_output(net, deterministic=False), y)
    updates = originals_adam_updates(loss, net, lr)
    test_output = lasagne.layers.get_output(net, deterministic=True)
    originals = [theano.function([x, y, lr], loss, updates=updates),
                 theano.function([x, y], [binary_connect.squared_hinge_loss(test_output, y),
                                          binary_connect.error_rate(test_output, y)])]
    ours = binary_connect.compile_functions(*build())[:2]
    assert len(binary_connect.binary_layers(net)) == 4  # three hidden layers and the output layer
    for original, our in zip(originals, ours):
        assert printed(our) == printed(original)



def test_no_creation_traces_inside_the_block_and_theanos_limit_after(monkeypatch):
    """Variables made inside compat.no_creation_traces() carry no creation trace; outside, Theano's (limit 8) as
    before; a limit the user set in THEANO_FLAGS is left alone."""
    x = T.matrix("x")
    with compat.no_creation_traces():
        assert theano.config.traceback.limit == 0
        inside = x * 2
    outside = x * 2
    assert inside.tag.trace == [] and outside.tag.trace and theano.config.traceback.limit == 8
    assert compat._user_set("floatX") and not compat._user_set("traceback.limit")  # compat sets floatX
    assert outside.tag.trace[0][-1][0] == __file__  # the innermost frame kept is this test's line
    monkeypatch.setattr(compat, "_user_set", lambda name: name == "traceback.limit")
    with compat.no_creation_traces():
        assert (x * 2).tag.trace and theano.config.traceback.limit == 8


# --------------------------------------------------------------------------- the two shuffles (§1.10)
def original_chunked_shuffle(X, y, parts):
    """BinaryNet's in-place shuffle as the original wrote it: one index list range(chunk), shuffled again (not
    rebuilt) for every chunk, and each chunk rewritten row by row through a one-chunk buffer."""
    chunk = len(X) // parts
    shuffled_range = list(range(chunk))
    X_buffer, y_buffer = np.copy(X[:chunk]), np.copy(y[:chunk])
    for k in range(parts):
        np.random.shuffle(shuffled_range)
        for i in range(chunk):
            X_buffer[i] = X[k * chunk + shuffled_range[i]]
            y_buffer[i] = y[k * chunk + shuffled_range[i]]
        X[k * chunk:(k + 1) * chunk] = X_buffer
        y[k * chunk:(k + 1) * chunk] = y_buffer
    return X, y


def rows(n):
    X = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return X, -X[:, :1].copy(), np.arange(n)


@pytest.mark.parametrize("n, parts", [(23, 1), (23, 3), (40, 4)])
def test_chunked_in_place_shuffle_is_the_originals(n, parts):
    X, y, order = rows(n)
    X_ref, y_ref = X.copy(), y.copy()
    np.random.seed(5)
    X_out, y_out, order_out = binary_connect.shuffle_rows(X, y, order, parts)
    after = np.random.get_state()[2]
    np.random.seed(5)
    original_chunked_shuffle(X_ref, y_ref, parts)
    assert X_out is X and y_out is y                     # in place
    np.testing.assert_array_equal(X, X_ref)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(X, rows(n)[0][order_out])  # the row order travels with the rows
    assert after == np.random.get_state()[2]            # as many random draws as the original
    tail = (n // parts) * parts
    np.testing.assert_array_equal(X[tail:], rows(n)[0][tail:])  # the remainder rows never move


def test_copying_shuffle_is_one_permutation_of_all_rows():
    """BinaryConnect: perm = range(N) shuffled with numpy's global rng; new arrays X[perm], y[perm]."""
    X, y, order = rows(23)
    np.random.seed(6)
    X_out, y_out, order_out = binary_connect.shuffle_rows(X, y, order)
    np.random.seed(6)
    perm = list(range(23))
    np.random.shuffle(perm)
    np.testing.assert_array_equal(X_out, rows(23)[0][perm])
    np.testing.assert_array_equal(y_out, rows(23)[1][perm])
    np.testing.assert_array_equal(order_out, perm)
    np.testing.assert_array_equal(X, rows(23)[0])        # the caller's arrays are not touched
    np.random.seed(6)
    assert np.array_equal(np.random.permutation(23), perm)  # numpy's permutation draws the same order


# --------------------------------------------------------------------------- the training loop (§1.10, §1.11)
def test_epoch_pass_skips_the_remainder_and_averages_batches():
    seen = []

    def fn(X, y, LR=None):
        seen.append((X[0, 0], len(X), LR))
        return (float(X[0, 0]), X[0, 0] / 100.) if LR is None else float(X[0, 0])

    X = np.arange(10, dtype=np.float32).reshape(10, 1)
    assert binary_connect.epoch_pass(fn, X, X, 4, LR=0.5) == pytest.approx(2.)   # batches start at rows 0 and 4
    assert seen == [(0, 4, 0.5), (4, 4, 0.5)]
    loss, err = binary_connect.epoch_pass(fn, X, X, 3)                          # rows 0, 3, 6; row 9 skipped
    assert (loss, err) == (pytest.approx(3.), pytest.approx(3.))                # mean 0.03 in percent


def test_epoch_block_puts_values_at_column_34(capsys):
    row = dict(train_loss=0.25, val_loss=0.5, val_error=3.5, best_epoch=2, best_val_error=3.0, test_loss=0.4,
               test_error=2.75)
    binary_connect.print_epoch(3, 10, 1.5, 0.001, row)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Epoch 3 of 10 took 1.5s"
    labels = ["LR:", "training loss:", "validation loss:", "validation error rate:", "best epoch:",
              "best validation error rate:", "test loss:", "test error rate:"]
    values = ["0.001", "0.25", "0.5", "3.5%", "2", "3.0%", "0.4", "2.75%"]
    assert lines[1:] == ["  " + label.ljust(31) + value for label, value in zip(labels, values)]
    assert all(line[33:] == value for line, value in zip(lines[1:], values))


def test_ties_go_to_the_later_epoch_and_the_test_set_runs_only_then(capsys):
    """Scripted validation errors 50, 30, 30, 40, 30, 40 %: epochs 1, 2, 3 and 5 improve or tie (<=), so only they
    evaluate the test set; the reported test error is epoch 5's (the latest of the ties at 30 %)."""
    val_errors = [0.5, 0.3, 0.3, 0.4, 0.3, 0.4]
    epoch = {"n": 0}
    test_runs, LRs = [], []

    def train_fn(X, y, LR):
        LRs.append(LR)
        return 0.5

    def val_fn(X, y):
        if X[0, 0] == 1:  # the validation set
            epoch["n"] += 1
            return 0.1, val_errors[epoch["n"] - 1]
        test_runs.append(epoch["n"])
        return 0.2, epoch["n"] / 100.

    X_train, X_val, X_test = np.zeros((8, 1), np.float32), np.ones((4, 1), np.float32), np.full((4, 1), 2, np.float32)
    summary = binary_connect.train(train_fn, val_fn, None, 4, 0.1, 0.5, 6, X_train, X_train.copy(), X_val, X_val,
                                   X_test, X_test)
    assert test_runs == [1, 2, 3, 5]
    assert summary["best_epoch"] == 5
    assert (summary["best_val_error"], summary["test_error"]) == (pytest.approx(30.), pytest.approx(5.))
    assert summary["epochs_done"] == 6 and summary["val_error"] == pytest.approx(40.)
    out = capsys.readouterr().out.splitlines()
    assert [int(line.split()[-1]) for line in out if "best epoch:" in line] == [1, 2, 3, 3, 5, 5]
    test_errors = [line.split()[-1] for line in out if "test error rate:" in line]
    assert test_errors == ["1.0%", "2.0%", "3.0%", "3.0%", "5.0%", "5.0%"]
    # epoch e trains with LR_start * LR_decay ** (e - 1), two minibatches per epoch (§1.9)
    assert LRs == [0.1 * 0.5 ** (e // 2) for e in range(12)]
