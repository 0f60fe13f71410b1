"""One test per rule of the Torch7 BinaryNet (docs/torch7.md): AP2, binary activations, shift-based batch norm
(forward, hand-written backward, evaluation, running averages), the output layer's batch norm, shift-based AdaMax,
the learning-rate scales and clip masks, initialisation, the three networks' sizes, and a tiny network learning.
Each against a NumPy formula or a hand-checked value."""
import numpy as np
import pytest

import binary_net_torch7 as b7
from plumbing.compat import T, lasagne, theano
from theano.sandbox.rng_mrg import MRG_RandomStreams

floatX = theano.config.floatX


def f32(x):
    return np.asarray(x, dtype=np.float32)


def ap2_reference(z):
    """sign(z) * 2^round(log2|z|), round half away from zero, in float64; AP2(0) = 0."""
    z = np.asarray(z, np.float64)
    out = np.zeros_like(z)
    nonzero = z != 0
    e = np.log2(np.abs(z[nonzero]))
    out[nonzero] = np.sign(z[nonzero]) * 2. ** (np.sign(e) * np.floor(np.abs(e) + 0.5))
    return out


@pytest.fixture(scope="module")
def ap2_fn():
    z = T.vector()
    return theano.function([z], b7.ap2(z))


# ---------------------------------------------------------------------------------------------------------------
# AP2
# ---------------------------------------------------------------------------------------------------------------
def test_ap2_zero_negatives_and_exact_powers_of_two(ap2_fn):
    powers = [2. ** k for k in range(-30, 31, 3)]
    values = f32([0., -0.] + powers + [-p for p in powers])
    out = ap2_fn(values)
    assert out[0] == 0 and out[1] == 0 and not np.any(np.isnan(out))
    np.testing.assert_array_equal(out[2:], values[2:])          # powers of two are fixed points, sign kept


def test_ap2_switches_at_sqrt2_times_power_of_two(ap2_fn):
    """In the log domain the switch from 2^k to 2^(k+1) is at sqrt(2) 2^k (1.414...), not at 1.5 2^k."""
    values = f32([1.41, 1.42, 1.5, -1.41, -1.42, 2.82, 2.84, 0.7, 0.71, 0.353, 0.354, 3e-5, -700.])
    expected = [1., 2., 2., -1., -2., 2., 4., 0.5, 1., 0.25, 0.5, 2. ** -15, -512.]
    np.testing.assert_array_equal(ap2_fn(values), expected)
    random = f32(np.random.RandomState(0).randn(1000) * 10. ** np.random.RandomState(1).randint(-5, 5, 1000))
    np.testing.assert_array_equal(ap2_fn(random), ap2_reference(random))
    np.testing.assert_array_equal(b7.ap2_host(random.astype(np.float64)), ap2_reference(random))


def test_ap2_ties_round_away_from_zero(ap2_fn):
    """Values whose computed log2 is exactly k + 0.5 round away from zero: 2^2.5 -> 8 and 2^-2.5 -> 0.125 (half to
    even would give 4 and 0.25)."""
    ties = f32([5.656854, 0.17677669, -5.656854, 2.828427, 0.35355338])
    exponents = np.float32(np.log(np.abs(ties).astype(np.float64)) * np.float64(np.float32(1. / np.log(2.))))
    np.testing.assert_array_equal(exponents, [2.5, -2.5, 2.5, 1.5, -1.5])   # they are ties in float32
    np.testing.assert_array_equal(ap2_fn(ties), [8., 0.125, -8., 4., 0.25])
    host_ties = np.array([5.656854249492381, -0.17677669529663687])           # ln|z| / ln 2 = +-2.5 in float64
    np.testing.assert_array_equal(np.log(np.abs(host_ties)) / np.log(2.), [2.5, -2.5])
    np.testing.assert_array_equal(b7.ap2_host(host_ties), [8., -0.125])


def test_ap2_passes_no_gradient_and_no_nan():
    z = T.vector()
    grad = theano.function([z], theano.grad((b7.ap2(z) * z).sum(), z))
    values = f32([0., 1.3, -2.])
    np.testing.assert_array_equal(grad(values), ap2_reference(values))  # d/dz (AP2(z) z) with AP2 a constant


# ---------------------------------------------------------------------------------------------------------------
# Binary activations
# ---------------------------------------------------------------------------------------------------------------
def test_deterministic_activation_is_sign_with_zero_and_straight_through_gradient():
    a = T.vector()
    out = b7.binarize_activations(a, deterministic=True, srng=None)
    forward = theano.function([a], [out, theano.grad(out.sum(), a)])
    values = f32([-3., -1.0001, -1., -0.3, -2. ** -24, -2. ** -25, 0., 2. ** -24, 2. ** -23, 0.4, 1., 1.0001, 5.])
    y, dy = forward(values)
    # sign((h + 1) / 2 - 0.5) in float32: 0 for h = 0, and for -2^-25 <= h <= 2^-24 where (h + 1) / 2 rounds to 0.5
    assert y.tolist() == [-1, -1, -1, -1, -1, 0, 0, 0, 1, 1, 1, 1, 1]
    assert dy.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]


def test_stochastic_activation_frequencies_and_gradient():
    """P(+1) = (clip(a, -1, 1) + 1) / 2 over 20000 draws per value (5 sigma); only +-1; fresh draws each call."""
    a = T.matrix()
    out = b7.binarize_activations(a, deterministic=False, srng=MRG_RandomStreams(11))
    draw = theano.function([a], out)
    grad = theano.function([a], theano.grad(out.sum(), a))
    values = f32([-2., -1., -0.6, -0.1, 0., 0.3, 0.9, 1., 4.])
    batch = np.tile(values, (20000, 1))
    sample = draw(batch)
    assert set(np.unique(sample)) <= {-1., 1.}
    p = (np.clip(values, -1, 1) + 1) / 2
    assert np.all(np.abs((sample == 1).mean(axis=0) - p) <= 5 * np.sqrt(p * (1 - p) / 20000) + 1e-12)
    assert not np.array_equal(draw(batch), sample)
    np.testing.assert_array_equal(grad(batch[:1]), [np.abs(values) <= 1])


# ---------------------------------------------------------------------------------------------------------------
# Shift-based batch norm
# ---------------------------------------------------------------------------------------------------------------
def axes_of(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def per_feature(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def sbn_reference(x, gamma, beta, eps=1e-5):
    """The Torch7 shift-based BN forward and the statistics it keeps (float64)."""
    axes = axes_of(x)
    mean = x.mean(axis=axes, keepdims=True)
    c = x - mean
    c_hat = ap2_reference(c)
    inv_std = ((c * c_hat).mean(axis=axes, keepdims=True) + eps) ** -0.5
    s = ap2_reference(inv_std)
    y = ap2_reference(per_feature(gamma, x.ndim)) * (c * s) + per_feature(beta, x.ndim)
    return y, mean.ravel(), inv_std.ravel()


def sbn_backward_reference(x, gamma, g, eps=1e-5):
    """The Torch7 modules' backward, written from the formula."""
    axes = axes_of(x)
    c = x - x.mean(axis=axes, keepdims=True)
    c_hat = ap2_reference(c)
    s = ap2_reference(((c * c_hat).mean(axis=axes, keepdims=True) + eps) ** -0.5)
    gam = ap2_reference(per_feature(gamma, x.ndim))
    dx = gam * s * (g - g.mean(axis=axes, keepdims=True) - s ** 2 * c_hat * (c_hat * g).mean(axis=axes, keepdims=True))
    return dx, (ap2_reference(c * s) * g).sum(axis=axes), g.sum(axis=axes)


SHAPES = {"dense": (6, 4), "spatial": (3, 4, 2, 3)}


def sbn_case(kind, seed=0):
    rng = np.random.RandomState(seed)
    shape = SHAPES[kind]
    x = f32(rng.randn(*shape) * 3 + per_feature(rng.randn(shape[1]), len(shape)))
    return x, f32([0.7, -1.3, 3.1, 0.2]), f32([0.5, -0.25, 0., 2.]), f32(rng.randn(*SHAPES[kind]))


def sbn_layer(kind):
    shape = (None,) + SHAPES[kind][1:]
    x = T.matrix() if kind == "dense" else T.tensor4()
    layer = b7.ShiftBatchNormLayer(lasagne.layers.InputLayer(shape, input_var=x))
    return x, layer


@pytest.mark.parametrize("kind", ["dense", "spatial"])
def test_shift_bn_training_forward_backward_and_running_averages(kind):
    x_val, gamma, beta, g = sbn_case(kind)
    x, layer = sbn_layer(kind)
    layer.gamma.set_value(gamma)
    layer.beta.set_value(beta)
    y = lasagne.layers.get_output(layer, deterministic=False)
    grads = theano.grad((y * g).sum(), [x, layer.gamma, layer.beta])
    fn = theano.function([x], [y] + grads)
    start_inv_std = layer.inv_std.get_value().copy()
    out, dx, dgamma, dbeta = fn(x_val)

    y_ref, mean_ref, inv_std_ref = sbn_reference(x_val.astype(np.float64), gamma, beta)
    np.testing.assert_allclose(out, y_ref, rtol=1e-5, atol=1e-5)
    dx_ref, dgamma_ref, dbeta_ref = sbn_backward_reference(x_val.astype(np.float64), gamma, g.astype(np.float64))
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dgamma, dgamma_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dbeta, dbeta_ref, rtol=1e-5, atol=1e-5)
    # one training call moves the running averages by 1/8 of the way (dense inv_std starts at 1, spatial at 0)
    assert start_inv_std.tolist() == ([1.] * 4 if kind == "dense" else [0.] * 4)
    np.testing.assert_allclose(layer.mean.get_value(), 0.125 * mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.inv_std.get_value(), 0.875 * start_inv_std + 0.125 * inv_std_ref, rtol=1e-5)


def test_shift_bn_backward_is_the_hand_written_one_not_autodiff():
    """Autodiff of the same forward differs (it goes through the mean and C in the variance); the op must not."""
    x_val, gamma, beta, g = sbn_case("dense", seed=3)
    x, gam, bet = T.matrix(), T.vector(), T.vector()
    op_grad = theano.function([x, gam, bet], theano.grad((b7.shift_batch_norm(x, gam, bet) * g).sum(), x))
    auto_grad = theano.function([x, gam, bet], theano.grad((b7.shift_bn_forward(x, gam, bet) * g).sum(), x))
    dx_ref = sbn_backward_reference(x_val.astype(np.float64), gamma, g.astype(np.float64))[0]
    np.testing.assert_allclose(op_grad(x_val, gamma, beta), dx_ref, rtol=1e-4, atol=1e-5)
    assert not np.allclose(auto_grad(x_val, gamma, beta), dx_ref, rtol=1e-2, atol=1e-3)


def test_shift_bn_trains_the_preceding_bias():
    """The bias before a shift-based BN gets sum over rows of dL/dx, which is not 0 (exact BN: 0)."""
    rng = np.random.RandomState(5)
    x = T.matrix()
    dense = lasagne.layers.DenseLayer(lasagne.layers.InputLayer((None, 3), input_var=x), 4,
                                      nonlinearity=lasagne.nonlinearities.identity)
    bn = b7.ShiftBatchNormLayer(dense)
    g = f32(rng.randn(8, 4))
    y = lasagne.layers.get_output(bn, deterministic=False)
    fn = theano.function([x], [lasagne.layers.get_output(dense)] + theano.grad((y * g).sum(), [dense.b]))
    pre, db = fn(f32(rng.randn(8, 3)))
    dx_ref = sbn_backward_reference(pre.astype(np.float64), np.ones(4), g.astype(np.float64))[0]
    np.testing.assert_allclose(db, dx_ref.sum(axis=0), rtol=1e-3, atol=1e-5)
    assert np.abs(db).max() > 0.1          # exact BN: 0 up to rounding (sum of C is 0; sum of AP2(C) is not)


@pytest.mark.parametrize("kind", ["dense", "spatial"])
def test_shift_bn_evaluation_uses_rounded_running_statistics(kind):
    x_val, gamma, beta, _ = sbn_case(kind, seed=1)
    x, layer = sbn_layer(kind)
    mean, inv_std = f32([0.3, -1., 2., 0.]), f32([0.9, 0.2, 3., 0.05])
    for param, value in ((layer.gamma, gamma), (layer.beta, beta), (layer.mean, mean), (layer.inv_std, inv_std)):
        param.set_value(value)
    fn = theano.function([x], lasagne.layers.get_output(layer, deterministic=True))
    d = x_val.ndim
    expected = ((x_val - per_feature(mean, d)) * per_feature(ap2_reference(inv_std), d)
                * per_feature(ap2_reference(gamma), d) + per_feature(beta, d))
    np.testing.assert_allclose(fn(x_val), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(layer.mean.get_value(), mean)      # evaluation leaves the statistics alone


def test_output_layer_standard_batch_norm():
    """nn.BatchNormalization: biased batch variance, eps 1e-5, running var from the unbiased variance, momentum 0.1."""
    rng = np.random.RandomState(2)
    x = T.matrix()
    layer = b7.StandardBatchNormLayer(lasagne.layers.InputLayer((None, 3), input_var=x))
    gamma = layer.gamma.get_value()
    assert np.all((gamma >= 0) & (gamma < 1))
    layer.beta.set_value(f32([0.1, 0.2, -0.3]))
    train = theano.function([x], lasagne.layers.get_output(layer, deterministic=False))
    test = theano.function([x], lasagne.layers.get_output(layer, deterministic=True))
    data = f32(rng.randn(5, 3) * 2 + 1)
    expected = gamma * (data - data.mean(0)) / np.sqrt(data.var(0) + 1e-5) + f32([0.1, 0.2, -0.3])
    np.testing.assert_allclose(train(data), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.mean.get_value(), 0.1 * data.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.var.get_value(), 0.9 + 0.1 * data.var(0, ddof=1), rtol=1e-5)
    running = (data - layer.mean.get_value()) * gamma / np.sqrt(layer.var.get_value() + 1e-5) + f32([0.1, 0.2, -0.3])
    np.testing.assert_allclose(test(data), running, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Shift-based AdaMax
# ---------------------------------------------------------------------------------------------------------------
def test_adamax_step_size_in_the_first_steps():
    ratios = [b7.shift_adamax_step_size(2. ** -6, t) / 2. ** -6 for t in range(1, 16)]
    assert ratios == [8, 4, 4, 4, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1]
    assert b7.shift_adamax_step_size(0.01, 1) == 0.125              # AP2(0.1) for a non-power-of-two LR


def adamax_fn(rules):
    grads = [T.TensorType(floatX, r.param.broadcastable)() for r in rules]
    LR = T.scalar()
    updates = b7.shift_adamax_updates(rules, grads, LR)
    return theano.function(grads + [LR], [], updates=updates), updates


def test_adamax_several_steps_against_numpy():
    """Two tensors (one clipped, GLR 4; one not, GLR 52.256) over 14 steps: theta, m, v as the float32 formula."""
    rng = np.random.RandomState(7)
    start = [f32(rng.uniform(-1, 1, (3, 2))), f32(rng.uniform(-1, 1, 5))]
    params = [theano.shared(v.copy()) for v in start]
    rules = [b7.Rule(params[0], 4., True, None), b7.Rule(params[1], 52.256, False, None)]
    step, updates = adamax_fn(rules)
    theta = [v.astype(np.float32) for v in start]
    m = [np.zeros_like(v) for v in start]
    v = [np.zeros_like(v) for v in start]
    LR = 2. ** -6
    for t in range(1, 15):
        grads = [f32(rng.randn(*s.shape) * 10. ** rng.randint(-4, 1)) for s in start]
        step(*(grads + [LR]))
        eta = np.float32(ap2_reference(LR / (1 - 0.9 ** t)))
        for i, (g, rule) in enumerate(zip(grads, rules)):
            m[i] = np.float32(0.9) * m[i] + np.float32(0.1) * g
            v[i] = f32(ap2_reference(np.maximum(np.float32(0.999) * v[i], np.abs(g)))) + np.float32(2. ** -27)
            theta[i] = theta[i] - eta * (np.float32(rule.lr_scale) * (m[i] / v[i]))
            if rule.clip:
                theta[i] = np.clip(theta[i], -1, 1)
    for i in range(2):
        np.testing.assert_allclose(params[i].get_value(), theta[i], rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(params[0].get_value()) <= 1) and np.abs(params[1].get_value()).max() > 1
    t_var = [k for k in updates if k.name == "adamax_t"][0]
    assert t_var.get_value() == 14


def test_adamax_second_moment_never_decays():
    """v = AP2(max(0.999 v, |g|)) + 2^-27: after |g| = 0.3, v stays 0.25 + 2^-27 through 300 steps of |g| = 0.001;
    a parameter with zero gradient settles at 2^-25 + 2^-27 after 4 steps."""
    params = [theano.shared(f32([0.])), theano.shared(f32([0.5]))]
    step, updates = adamax_fn([b7.Rule(p, 1., False, None) for p in params])
    second_moments = [k for k in updates if k.name == "adamax_v"]
    step(f32([0.3]), f32([0.]), 2. ** -6)
    assert second_moments[0].get_value()[0] == np.float32(0.25 + 2. ** -27)
    history = []
    for _ in range(300):
        step(f32([0.001]), f32([0.]), 2. ** -6)
        history.append(second_moments[1].get_value()[0])
    assert second_moments[0].get_value()[0] == np.float32(0.25 + 2. ** -27)
    assert history[2] == np.float32(2. ** -25 + 2. ** -27) and history[-1] == history[2]
    assert params[1].get_value()[0] == np.float32(0.5)                 # zero gradient: m = 0, no move


def test_halving_schedule():
    next_lr = b7.halving_schedule(20)
    LR, lrs = 2. ** -6, []
    for epoch in range(1, 46):
        lrs.append(LR)
        LR = next_lr(epoch, LR)
    assert lrs[0] == lrs[19] == 2. ** -6 and lrs[20] == lrs[39] == 2. ** -7 and lrs[40] == 2. ** -8


# ---------------------------------------------------------------------------------------------------------------
# LR scales, clip masks, initialisation, network sizes
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fans,rounded,expected", [
    ([(784, 2048), (2048, 2048), (2048, 10)], False, [43.451, 52.256, 37.041]),                  # MNIST
    ([(27, 1152), (1152, 1152), (1152, 2304), (2304, 2304), (2304, 4608), (4608, 4608), (8192, 1024),
      (1024, 1024), (1024, 10)], True, [32, 32, 64, 64, 64, 64, 64, 32, 32]),                       # CIFAR-10
    ([(27, 576), (576, 576), (576, 1152), (1152, 1152), (1152, 2304), (2304, 2304), (4096, 1024),
      (1024, 1024), (1024, 10)], True, [16, 32, 32, 32, 64, 64, 64, 32, 32]),                       # SVHN
])
def test_glorot_lr_scales(fans, rounded, expected):
    scales = [b7.glorot_lr_scale(fi, fo, rounded) for fi, fo in fans]
    np.testing.assert_allclose(scales, expected, rtol=1e-4)
    assert b7.glorot_lr_scale(1152, 2304) == 48. and b7.glorot_lr_scale(1152, 2304, True) == 64.  # log2 48 = 5.58


def test_mnist_lr_vector_and_clip_mask_on_a_small_mlp():
    _, rules = b7.build_mlp(T.tensor4(), units=6, n_hidden_layers=2)
    glr = [1 / np.sqrt(1.5 / (784 + 6)), 1 / np.sqrt(1.5 / 12), 1 / np.sqrt(1.5 / 16)]
    expected = []
    for i, g in enumerate(glr):
        n = 6 if i < 2 else 10
        expected += [(g, True), (g, False), (np.sqrt(n / 1.5), False), (1., False)]
    assert [r.binary_layer is not None for r in rules] == [True, False, False, False] * 3
    np.testing.assert_allclose([r.lr_scale for r in rules], [e[0] for e in expected], rtol=1e-6)
    assert [r.clip for r in rules] == [e[1] for e in expected]
    lrs, clip = b7.flat_vectors(rules)
    assert lrs.size == clip.size == 784 * 6 + 6 + 12 + 36 + 6 + 12 + 60 + 10 + 20
    assert clip.sum() == 784 * 6 + 36 + 60 and lrs[0] == np.float32(glr[0]) and lrs[-1] == 1.


@pytest.mark.parametrize("scheme,widths,dense,params,clipped,weights_bound", [
    ("cifar10", (128, 256, 512), 1024, 14033566, 14033566, 1 / np.sqrt(27)),
    ("svhn", (64, 128, 256), 1024, 6406494, 6397632, 1 / np.sqrt(27)),
])
def test_convnet_sizes_clip_masks_and_initialisation(scheme, widths, dense, params, clipped, weights_bound):
    """The counts the Torch7 model files print, and initialisation as coded."""
    network, rules = b7.build_convnet(T.tensor4(), scheme, widths, dense)
    counts = b7.describe_rules(rules)
    assert counts == dict(lrs_zero=0, lrs_nonzero=params, clipped=clipped, parameters=params)
    trainable = sum(p.get_value().size for p in lasagne.layers.get_all_params(network, trainable=True))
    binary_w = sum(p.get_value().size for p in lasagne.layers.get_all_params(network, binary=True))
    assert trainable + binary_w == params
    first_conv = rules[0].param.get_value()
    assert np.abs(first_conv).max() <= weights_bound and np.abs(first_conv).max() > 0.9 * weights_bound
    assert np.abs(rules[1].param.get_value()).max() <= weights_bound                  # its bias
    dense_w = [r.param.get_value() for r in rules if r.binary_layer is not None][6]
    assert dense_w.min() < -0.99 and dense_w.max() > 0.99                               # U(-1, 1)
    bns = [layer for layer in lasagne.layers.get_all_layers(network) if isinstance(layer, b7.ShiftBatchNormLayer)]
    assert [float(bn.inv_std.get_value()[0]) for bn in bns] == [0.] * 6 + [1.] * 2      # spatial 0, dense 1


def test_mnist_mlp_size_and_initialisation():
    network, rules = b7.build_mlp(T.tensor4())
    assert b7.describe_rules(rules) == dict(lrs_zero=0, lrs_nonzero=10033182, clipped=10014720,
                                            parameters=10033182)
    W, b = rules[0].param.get_value(), rules[1].param.get_value()
    assert W.min() < -0.999 and W.max() > 0.999 and np.abs(b).max() <= 1 / 28. and np.abs(b).max() > 0.035
    assert np.all(rules[2].param.get_value() == 1) and np.all(rules[3].param.get_value() == 0)   # SBN gamma, beta
    final_gamma = rules[-2].param.get_value()
    assert np.all((final_gamma >= 0) & (final_gamma < 1)) and final_gamma.std() > 0


def test_binary_conv_is_a_cross_correlation_with_binary_weights():
    from scipy.signal import correlate2d
    x = T.tensor4()
    layer = b7.binary_conv(lasagne.layers.InputLayer((None, 1, 4, 4), input_var=x), 1)
    W = f32(np.random.RandomState(0).uniform(-1, 1, (1, 1, 3, 3)))
    layer.W.set_value(W)
    layer.b.set_value(f32([0.5]))
    image = f32(np.random.RandomState(1).randn(1, 1, 4, 4))
    out = theano.function([x], lasagne.layers.get_output(layer, deterministic=True))(image)
    expected = correlate2d(image[0, 0], np.where(W[0, 0] >= 0, 1., -1.), mode="same") + 0.5
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# A tiny network learning
# ---------------------------------------------------------------------------------------------------------------
def test_tiny_mlp_learns_a_generated_problem(monkeypatch):
    """Ten prototypes under heavy noise; 2 x 32 units; 6 epochs of the Torch7 step (stochastic activations,
    shift-based BN and AdaMax): the deterministic test error must fall far below chance (90 %)."""
    rng = np.random.RandomState(0)
    # Lasagne's rng is global: restored after the test (a later script run seeds numpy's rng and expects
    # Lasagne to draw from it, as in a fresh process).
    monkeypatch.setattr(lasagne.random, "_rng", np.random.RandomState(1))
    prototypes = rng.randn(10, 784)

    def sample(n):
        labels = rng.randint(0, 10, n)
        x = prototypes[labels] + 4. * rng.randn(n, 784)
        targets = -np.ones((n, 10), np.float32)
        targets[np.arange(n), labels] = 1
        return f32(x.reshape(n, 1, 28, 28)), targets

    X, y = sample(1000)
    X_test, y_test = sample(300)
    input_var, target_var, LR = T.tensor4(), T.matrix(), T.scalar()
    network, rules = b7.build_mlp(input_var, units=32, n_hidden_layers=2)
    train_fn, val_fn, _ = b7.compile_functions(network, rules, input_var, target_var, LR)
    before = float(val_fn(X_test, y_test)[1])
    for epoch in range(6):
        order = rng.permutation(len(X))
        for start in range(0, len(X), 50):
            rows = order[start:start + 50]
            loss = train_fn(X[rows], y[rows], 2. ** -6)
            assert np.isfinite(loss)
    after = float(val_fn(X_test, y_test)[1])
    assert before > 0.5 and after < 0.15, (before, after)
    assert all(np.abs(r.param.get_value()).max() <= 1 for r in rules if r.clip)


def test_tiny_convnet_step_clips_every_parameter_under_the_cifar_scheme():
    """One Torch7 step on a 2-2-2-filter ConvNet (8x8 images): finite loss, every parameter moves, and under
    CIFAR-10's clip mask every parameter (biases and batch-norm gamma/beta included) stays in [-1, 1]. The initial
    weights come from NumPy's global generator: seeded here, or they depend on the tests before (with some draws a
    2-filter layer gets no gradient at all and does not move)."""
    np.random.seed(1)
    rng = np.random.RandomState(3)
    input_var, target_var, LR = T.tensor4(), T.matrix(), T.scalar()
    network, rules = b7.build_convnet(input_var, "cifar10", (2, 2, 2), 4, (3, 8, 8))
    for r in rules:
        if r.binary_layer is None:      # start biases, gamma and beta outside [-1, 1] where clipping must act
            r.param.set_value(f32(r.param.get_value() * 0 + 1.5))
    before = [r.param.get_value().copy() for r in rules]
    train_fn, val_fn, _ = b7.compile_functions(network, rules, input_var, target_var, LR)
    targets = -np.ones((5, 10), np.float32)
    targets[np.arange(5), rng.randint(0, 10, 5)] = 1
    assert np.isfinite(train_fn(f32(rng.randn(5, 3, 8, 8)), targets, 2. ** -6))
    for r, old in zip(rules, before):
        value = r.param.get_value()
        assert r.clip and np.abs(value).max() <= 1 and not np.array_equal(value, old)


# ---------------------------------------------------------------------------------------------------------------
# The loop and the scripts
# ---------------------------------------------------------------------------------------------------------------
def test_loop_halves_the_rate_and_runs_partial_batches():
    """binary_connect.train with the Torch7 options: LR halved after epochs 2, 4; batches of 4, 4, 2 rows; the
    validation error is over samples (3 of 10 rows wrong: 30 %, not the 33.3 % mean of batch errors)."""
    calls = []

    def train_fn(X, y, LR):
        calls.append((len(X), LR))
        return 0.5

    def val_fn(X, y):
        return np.float32(0.1), np.float32((X[:, 0] > 0).mean())

    X = f32(np.arange(10).reshape(10, 1))
    X_val = f32([[1], [0], [0], [0], [1], [0], [0], [0], [1], [0]])    # errors per batch: 1/4, 1/4, 1/2
    y = f32(np.zeros((10, 10)))
    summary = b7.binary_connect.train(train_fn, val_fn, None, 4, 1., b7.halving_schedule(2), 5, X, y, X_val, y,
                                      X_val, y, shuffle_parts=1, partial_batch=True)
    assert [n for n, _ in calls] == [4, 4, 2] * 5
    assert [lr for _, lr in calls[::3]] == [1., 1., .5, .5, .25]
    assert summary["best_val_error"] == pytest.approx(30.) and summary["test_error"] == pytest.approx(30.)
    assert summary["LR"] == .25                      # epoch 5 is not a multiple of 2


def write_idx(path, array, magic):
    import gzip
    import struct
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">ii", magic, len(array)) + b"".join(struct.pack(">i", d) for d in array.shape[1:]))
        f.write(array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """Ten classes, each a random 28x28 prototype plus noise, 600 training and 100 test images (IDX files)."""
    folder = tmp_path_factory.mktemp("mnist")
    rng = np.random.RandomState(0)
    prototypes = rng.randint(0, 256, (10, 28, 28))
    for prefix, n in (("train", 600), ("t10k", 100)):
        labels = rng.randint(0, 10, n)
        images = np.clip(prototypes[labels] + rng.randint(-60, 61, (n, 28, 28)), 0, 255)
        write_idx(str(folder / (prefix + "-images-idx3-ubyte.gz")), images, 2051)
        write_idx(str(folder / (prefix + "-labels-idx1-ubyte.gz")), labels, 2049)
    return str(folder)


def test_mnist_script_runs_the_torch7_method_and_resumes(mnist_dir, tmp_path, monkeypatch, capsys):
    """mnist.py --method binarynet-torch7: the Torch7 table, the model file's counts, results.json with the paper's
    Torch7 number; a run killed in epoch 2 resumes to the numbers of an uninterrupted one."""
    import json
    import os
    import mnist
    common = ["--method", "binarynet-torch7", "--units", "16", "--epochs", "3", "--train-size", "130",
              "--batch-size", "50", "--data-dir", mnist_dir]
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    assert mnist.main(common + ["--out", whole]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:4] == ["batch_size = 50", "num_units = 16", "n_hidden_layers = 3", "stochastic = True"]
    n = 784 * 16 + 2 * 16 * 16 + 16 * 10
    params = n + 3 * 16 * 3 + 3 * 10
    assert f"#lrs==0: 0, #lrs~=0: {params}, #clipV~=0: {n}, ==> {params} Parameters" in printed
    with open(os.path.join(whole, "results.json")) as f:
        results = json.load(f)
    assert (results["method"], results["paper_test_error"], results["epochs_done"]) == ("binarynet-torch7", 1.4, 3)
    assert results["hyperparameters"]["LR_halving_epochs"] == 20 and results["test_error"] < 50

    real_epoch_pass = b7.binary_connect.epoch_pass
    training_calls = []

    def dying_epoch_pass(fn, X, y, batch_size, LR=None, progress=None, partial_batch=False):
        if LR is not None:
            training_calls.append(len(X))
            if len(training_calls) == 2:   # in epoch 2's training pass, after one step
                fn(X[:batch_size], y[:batch_size], LR)
                raise KeyboardInterrupt
        return real_epoch_pass(fn, X, y, batch_size, LR, progress, partial_batch)

    monkeypatch.setattr(b7.binary_connect, "epoch_pass", dying_epoch_pass)
    with pytest.raises(KeyboardInterrupt):
        mnist.main(common + ["--out", broken])
    monkeypatch.setattr(b7.binary_connect, "epoch_pass", real_epoch_pass)
    assert mnist.main(common + ["--out", broken, "--resume"]) == 0
    assert "Resuming after epoch 1 of 3" in capsys.readouterr().out

    def rows(folder):
        with open(os.path.join(folder, "log.jsonl")) as f:
            return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in f]
    assert rows(broken) == rows(whole)
    with np.load(os.path.join(whole, "mnist_parameters.npz")) as a, \
            np.load(os.path.join(broken, "mnist_parameters.npz")) as b:
        assert all(np.array_equal(a[key], b[key]) for key in a.files)


@pytest.mark.parametrize("script_name,paper,clip_all", [("cifar10", 10.15, True), ("svhn", 2.53, False)])
def test_convnet_scripts_run_the_torch7_method(script_name, paper, clip_all, tmp_path, monkeypatch, capsys):
    """cifar10.py / svhn.py --method binarynet-torch7 on tiny generated images (the data pipelines are tested in
    test_torch7_data.py): the Torch7 defaults, the model's clip mask, one epoch with a partial last batch."""
    import importlib
    import json
    import os
    from plumbing import torch7_data
    script = importlib.import_module(script_name)
    rng = np.random.RandomState(0)

    def tiny(**kwargs):
        def part(n):
            labels = rng.randint(0, 10, n)
            targets = -np.ones((n, 10), np.float32)
            targets[np.arange(n), labels] = 1
            return f32(rng.randn(n, 3, 8, 8)), targets
        (X_train, y_train), (X_val, y_val), (X_test, y_test) = part(25), part(12), part(7)
        return dict(X_train=X_train, y_train=y_train, X_val=X_val, y_val=y_val, X_test=X_test, y_test=y_test)
    monkeypatch.setattr(torch7_data, script_name + "_data", tiny)
    hp = script.hyperparameters("binarynet-torch7")
    assert (hp["batch_size"], hp["LR_start"], hp["LR_halving_epochs"]) == (
        (200, 2. ** -6, 50) if script_name == "cifar10" else (200, 2. ** -7, 20))
    out = str(tmp_path / "run")
    argv = ["--method", "binarynet-torch7", "--epochs", "1", "--width", str(1 / 64.), "--batch-size", "10",
            "--out", out] + (["--no-extra"] if script_name == "svhn" else [])
    assert script.main(argv) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("#lrs==0")][0]
    params, clipped = (int(x.split()[-1]) for x in line.replace(" Parameters", "").split(",")[1:3])
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert (results["method"], results["paper_test_error"], results["epochs_done"]) == ("binarynet-torch7", paper, 1)
    assert (clipped == params) == clip_all
