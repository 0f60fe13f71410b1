"""BinaryNet as the BNN paper's Torch7 code trains it: the "Torch7" column of [BNN] Table 1.

The helper module of `--method binarynet-torch7` (docs/torch7.md). Beside the Theano method (binary_net.py) the
Torch7 code differs in nearly every rule: activations are binarized stochastically while training, hidden layers
use shift-based batch normalization (powers of two instead of multiplications) with a hand-written backward, one
shift-based AdaMax updates every parameter with a per-element Glorot scale, only some parameters are clipped, and
layers are initialised differently. Each rule below is one small function or class; its docstring's first line
names the Torch7 piece (file) or paper algorithm step it reproduces and the docs/torch7.md section.

Reused from BinaryConnect (binary_connect.py): the binary Dense/Conv2D layers with deterministic weight
binarization (W >= 0 -> +1), the squared hinge loss, the error rate and the training loop.
"""
import functools
from collections import OrderedDict, namedtuple

from plumbing import compat  # noqa: F401  (Theano flags and Lasagne patches come first)
from plumbing import runfiles
from plumbing.compat import T, lasagne, np, theano
from lasagne import init
from lasagne.layers import Layer
from theano.compile.builders import OpFromGraph
from theano.sandbox.rng_mrg import MRG_RandomStreams

import binary_connect
from batch_norm import _running_average

SBN_EPSILON = 1e-5            # shift-based BN, added to the rounded variance estimate (docs/torch7.md §4)
SBN_MOMENTUM = 0.125          # 2^-3: weight of the batch statistic in the running averages
BN_EPSILON = 1e-5             # the output layer's standard batch norm (nn.BatchNormalization defaults)
BN_MOMENTUM = 0.1
ADAMAX_BETA1 = 0.9            # shift-based AdaMax (docs/torch7.md §5)
ADAMAX_BETA2 = 0.999
ADAMAX_EPSILON = 2.0 ** -27   # added to the rounded second moment
LN2 = np.log(2.)


# ---------------------------------------------------------------------------------------------------------------
# AP2: the power-of-two approximation
# ---------------------------------------------------------------------------------------------------------------
def ap2(z):
    """AP2 of [BNN] Algorithms 2-3 as the Torch7 code computes it: sign(z) * 2^round(ln|z| / ln 2) (§3).

    round = half away from zero in the log domain, so |z| switches from 2^k to 2^(k+1) at sqrt(2) * 2^k.
    AP2(0) = 0 (ln 0 = -inf, 2^-inf = 0, sign(0) = 0). No gradient flows through AP2 (zero_grad): the
    callers either treat it as a constant or (batch norm) supply their own backward.
    """
    z = theano.gradient.zero_grad(z)
    exponent = T.round(T.log(abs(z)) / np.asarray(LN2, dtype=z.dtype), mode="half_away_from_zero")
    return T.sgn(z) * T.pow(np.asarray(2., dtype=z.dtype), exponent)


def ap2_host(z):
    """AP2 in float64 on the host (NumPy): the Lua-side roundings (AdaMax step size, ConvNet LR scales, §3, §5)."""
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(divide="ignore"):
        exponent = np.log(np.abs(z)) / LN2
    rounded = np.sign(exponent) * np.floor(np.abs(exponent) + 0.5)  # half away from zero
    return np.sign(z) * np.power(2., rounded)


# ---------------------------------------------------------------------------------------------------------------
# Binary activations (HardTanh + BinarizedNeurons)
# ---------------------------------------------------------------------------------------------------------------
class Torch7Sign(theano.scalar.BinaryScalarOp):
    """BinarizedNeurons' forward on h = HardTanh(a): sign((h + 1) / 2 - u) in float32, sign(0) = 0 (§2).

    u is the uniform draw while training and 0.5 at evaluation, where the result is 0 exactly when
    (h + 1) / 2 rounds to 0.5 (h = 0, and float32 |h| below ~2^-24). Backward: the gradient w.r.t. h passes
    unchanged (straight-through); u gets none.
    """

    def impl(self, h, u):
        d = (np.float32(h) + np.float32(1)) / np.float32(2) - np.float32(u)
        return np.float32(np.sign(d))

    def c_code(self, node, name, inputs, outputs, sub):
        h, u = inputs
        z, = outputs
        return (f"{{ npy_float32 d = ((npy_float32){h} + 1.0f) / 2.0f - (npy_float32){u};"
                f" {z} = (d > 0) - (d < 0); }}")

    def c_code_cache_version(self):
        return (1,)

    def grad(self, inputs, output_grads):
        h, u = inputs
        return [output_grads[0], u.zeros_like()]


torch7_sign = T.Elemwise(Torch7Sign(theano.scalar.upcast_out, name="torch7_sign"))


def binarize_activations(a, deterministic, srng):
    """HardTanh then BinarizedNeurons, [BNN] Eq. 2-4 / Algorithm 1 step 1.4 as coded (§2).

    Training: +1 with probability p = (clip(a, -1, 1) + 1) / 2, else -1 (a fresh uniform per element and
    call). Evaluation: sign(clip(a, -1, 1)) with sign(0) = 0. Gradient: dL/da = dL/dout * 1[|a| <= 1].
    """
    h = T.clip(a, -1., 1.)
    if deterministic:
        return torch7_sign(h, np.asarray(0.5, dtype=theano.config.floatX))
    return torch7_sign(h, srng.uniform(size=h.shape, dtype=theano.config.floatX))


class BinaryActivationLayer(Layer):
    """nn.HardTanh + BinarizedNeurons (stochastic while training, deterministic at evaluation), one layer (§2)."""

    def __init__(self, incoming, stochastic=True, **kwargs):
        super(BinaryActivationLayer, self).__init__(incoming, **kwargs)
        self.stochastic = stochastic
        self._srng = MRG_RandomStreams(lasagne.random.get_rng().randint(1, 2147462579))

    def get_output_for(self, input, deterministic=False, **kwargs):
        return binarize_activations(input, deterministic or not self.stochastic, self._srng)


# ---------------------------------------------------------------------------------------------------------------
# Shift-based batch normalization (BatchNormalizationShiftPow2, SpatialBatchNormalizationShiftPow2)
# ---------------------------------------------------------------------------------------------------------------
def _norm_axes(ndim):
    """Dense input (m, n): statistics over the rows; spatial (N, C, H, W): per channel over N, H, W."""
    return (0,) if ndim == 2 else (0,) + tuple(range(2, ndim))


def _per_feature(param, ndim):
    """Broadcast a per-feature vector (n,) against the input: dense ('x', 0), spatial ('x', 0, 'x', 'x')."""
    return param.dimshuffle(["x", 0] + ["x"] * (ndim - 2))


def shift_bn_statistics(x, epsilon=SBN_EPSILON):
    """The training-time statistics of shift-based BN, [BNN] Algorithm 2 as coded (§4.1).

    Returns (mean, C, C_hat, inv_std, inv_std_hat), statistics kept with their normalized axes (size 1):
    mean = mean(x); C = x - mean; C_hat = AP2(C); var = mean(C * C_hat) (biased);
    inv_std = (var + epsilon)^(-1/2); inv_std_hat = AP2(inv_std).
    """
    axes = _norm_axes(x.ndim)
    mean = x.mean(axis=axes, keepdims=True)
    centred = x - mean
    centred_hat = ap2(centred)
    variance = T.mean(centred * centred_hat, axis=axes, keepdims=True)
    inv_std = T.inv(T.sqrt(variance + np.asarray(epsilon, dtype=x.dtype)))
    return mean, centred, centred_hat, inv_std, ap2(inv_std)


def shift_bn_forward(x, gamma, beta, epsilon=SBN_EPSILON):
    """Shift-based BN training forward (§4.1): y = AP2(gamma) * (C * AP2(inv_std)) + beta; beta is not rounded."""
    _, centred, _, _, inv_std_hat = shift_bn_statistics(x, epsilon)
    return ap2(_per_feature(gamma, x.ndim)) * (centred * inv_std_hat) + _per_feature(beta, x.ndim)


def shift_bn_backward(x, gamma, g, epsilon=SBN_EPSILON):
    """The Torch7 modules' hand-written backward of shift-based BN (§4.2); returns [dL/dx, dL/dgamma, dL/dbeta].

    dL/dx = AP2(gamma) * s * (g - mean(g) - s^2 * C_hat * mean(C_hat * g)),  s = AP2(inv_std);
    dL/dgamma = sum(AP2(C * s) * g);  dL/dbeta = sum(g). No derivative of an AP2 is taken. Unlike exact BN,
    sum(dL/dx) = -AP2(gamma) s^3 mean(C_hat g) sum(C_hat) is not 0: the preceding layer's bias is trained.
    """
    axes = _norm_axes(x.ndim)
    _, centred, centred_hat, _, s = shift_bn_statistics(x, epsilon)
    gamma_hat = ap2(_per_feature(gamma, x.ndim))
    projection = T.mean(centred_hat * g, axis=axes, keepdims=True)
    dx = gamma_hat * s * (g - T.mean(g, axis=axes, keepdims=True) - T.sqr(s) * centred_hat * projection)
    dgamma = T.sum(ap2(centred * s) * g, axis=axes)
    return [dx, dgamma, T.sum(g, axis=axes)]


@functools.lru_cache(maxsize=None)
def _shift_bn_op(ndim, dtype, epsilon):
    """One Theano op per input rank: forward = shift_bn_forward, gradient = shift_bn_backward (not autodiff)."""
    x = T.TensorType(dtype, (False,) * ndim)("x")
    gamma, beta = T.vector("gamma", dtype=dtype), T.vector("beta", dtype=dtype)

    def backward(inputs, output_grads):
        return shift_bn_backward(inputs[0], inputs[1], output_grads[0], epsilon)

    return OpFromGraph([x, gamma, beta], [shift_bn_forward(x, gamma, beta, epsilon)], inline=True,
                       grad_overrides=backward, name=f"ShiftBatchNorm{ndim}d")


def shift_batch_norm(x, gamma, beta, epsilon=SBN_EPSILON):
    """Shift-based BN as a Theano op whose gradient is the Torch7 backward (§4.1-4.2); x is (m, n) or (N, C, H, W)."""
    return _shift_bn_op(x.ndim, x.dtype, float(epsilon))(x, gamma, beta)


class ShiftBatchNormLayer(Layer):
    """BatchNormalizationShiftPow2 (dense) / SpatialBatchNormalizationShiftPow2 (conv), §4.

    Training: shift_batch_norm, and once per training call the running averages
    mean <- (1 - m) mean + m mean_B, inv_std <- (1 - m) inv_std + m inv_std_B (unrounded), m = 2^-3.
    Evaluation: y = (x - mean) * AP2(inv_std) * AP2(gamma) + beta (running statistics only).
    Parameters, in Torch's order: gamma (1), beta (0), mean (0), inv_std (1 dense, 0 spatial: the spatial
    module allocates its buffers as zeros at the first training call).
    """

    def __init__(self, incoming, epsilon=SBN_EPSILON, momentum=SBN_MOMENTUM, **kwargs):
        super(ShiftBatchNormLayer, self).__init__(incoming, **kwargs)
        self.epsilon, self.momentum = epsilon, momentum
        n = self.input_shape[1]
        self.gamma = self.add_param(init.Constant(1), (n,), "gamma", trainable=True, regularizable=False)
        self.beta = self.add_param(init.Constant(0), (n,), "beta", trainable=True, regularizable=False)
        self.mean = self.add_param(init.Constant(0), (n,), "mean", trainable=False, regularizable=False)
        start = 1 if len(self.input_shape) == 2 else 0
        self.inv_std = self.add_param(init.Constant(start), (n,), "inv_std", trainable=False, regularizable=False)

    def get_output_for(self, input, deterministic=False, **kwargs):
        f = lambda p: _per_feature(p, input.ndim)  # noqa: E731
        if deterministic:
            return (input - f(self.mean)) * ap2(f(self.inv_std)) * ap2(f(self.gamma)) + f(self.beta)
        output = shift_batch_norm(input, self.gamma, self.beta, self.epsilon)
        mean, _, _, inv_std, _ = shift_bn_statistics(input, self.epsilon)
        running = [_running_average(self.mean, T.flatten(mean), self.momentum),
                   _running_average(self.inv_std, T.flatten(inv_std), self.momentum)]
        # weight 0: the aliases only make theano.function collect their updates (as batch_norm.py does)
        return output + sum(0 * f(r) for r in running)


class StandardBatchNormLayer(Layer):
    """nn.BatchNormalization after the output layer: standard (not shift-based) batch norm, §4.3.

    Training: y = gamma (x - mean_B) / sqrt(var_B + eps) + beta (biased var_B); running mean <- 0.9 r + 0.1
    mean_B, running var <- 0.9 r + 0.1 var_B * m / (m - 1) (unbiased; a one-row batch uses m - 1 = 1 instead
    of dividing by 0). Evaluation: the running mean and variance. gamma ~ U[0, 1), beta = 0, eps = 1e-5.
    """

    def __init__(self, incoming, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, **kwargs):
        super(StandardBatchNormLayer, self).__init__(incoming, **kwargs)
        self.epsilon, self.momentum = epsilon, momentum
        n = self.input_shape[1]
        self.gamma = self.add_param(init.Uniform((0., 1.)), (n,), "gamma", trainable=True, regularizable=False)
        self.beta = self.add_param(init.Constant(0), (n,), "beta", trainable=True, regularizable=False)
        self.mean = self.add_param(init.Constant(0), (n,), "mean", trainable=False, regularizable=False)
        self.var = self.add_param(init.Constant(1), (n,), "var", trainable=False, regularizable=False)

    def get_output_for(self, input, deterministic=False, **kwargs):
        eps = np.asarray(self.epsilon, dtype=input.dtype)
        if deterministic:
            return (input - self.mean) * (self.gamma / T.sqrt(self.var + eps)) + self.beta
        mean, var = input.mean(axis=0), input.var(axis=0)
        rows = T.cast(input.shape[0], input.dtype)
        unbiased = var * rows / T.maximum(rows - 1, 1)
        mean = mean + 0 * _running_average(self.mean, mean, self.momentum)
        var = var + 0 * _running_average(self.var, unbiased, self.momentum)
        return (input - mean) * (self.gamma / T.sqrt(var + eps)) + self.beta


# ---------------------------------------------------------------------------------------------------------------
# Per-element learning-rate scale and clip mask (the `lrs` and `clipV` vectors of the model files)
# ---------------------------------------------------------------------------------------------------------------
Rule = namedtuple("Rule", "param lr_scale clip binary_layer")
Rule.__doc__ = """One parameter tensor's entries in the model file's GLR vector (`lrs`) and clip mask (`clipV`), §5.

binary_layer: the layer whose binarized weights Wb receive the gradient (dL/dW := dL/dWb), or None."""

# How each model file fills lrs and clipV (§5): round the Glorot scale to a power of two; the scale of the
# hidden batch norms' gamma ('sqrt': sqrt(n / 1.5), as the MNIST model; else 1); which parameters are clipped.
LR_SCALE_SCHEMES = {
    "mnist": dict(round_glr=False, gamma_scale="sqrt", clip="weights"),
    "cifar10": dict(round_glr=True, gamma_scale=1., clip="all"),
    "svhn": dict(round_glr=True, gamma_scale=1., clip="weights"),
}


def glorot_lr_scale(fan_in, fan_out, round_to_power_of_two=False):
    """GLR = 1 / sqrt(1.5 / (fan_in + fan_out)) in double, for a binary layer's weights and bias (§5.1).

    The ConvNet model files round it to 2^round(log2 GLR) (half away from zero); the MNIST model does not.
    """
    glr = 1. / np.sqrt(1.5 / (fan_in + fan_out))
    return float(ap2_host(glr)) if round_to_power_of_two else float(glr)


def batch_norm_gamma_scale(scheme, n):
    """GLR entry of a batch norm's gamma: sqrt(n / 1.5) in the MNIST model (n features), 1 in the ConvNets (§5.1)."""
    return float(np.sqrt(n / 1.5)) if LR_SCALE_SCHEMES[scheme]["gamma_scale"] == "sqrt" else 1.


def binary_layer_rules(layer, fan_in, fan_out, scheme):
    """Rules of a binary layer's W (clipped in every model) and bias (clipped only where all parameters are)."""
    s = LR_SCALE_SCHEMES[scheme]
    glr = glorot_lr_scale(fan_in, fan_out, s["round_glr"])
    return [Rule(layer.W, glr, True, layer), Rule(layer.b, glr, s["clip"] == "all", None)]


def batch_norm_rules(layer, scheme):
    """Rules of a batch norm's gamma and beta (beta's GLR entry is 1; clipped only where all parameters are)."""
    clip = LR_SCALE_SCHEMES[scheme]["clip"] == "all"
    gamma_scale = batch_norm_gamma_scale(scheme, layer.input_shape[1])
    return [Rule(layer.gamma, gamma_scale, clip, None), Rule(layer.beta, 1., clip, None)]


def flat_vectors(rules):
    """The model file's lrs and clipV: float32 vectors laid out like the flattened parameter vector (§5.1)."""
    sizes = [r.param.get_value(borrow=True).size for r in rules]
    lrs = np.concatenate([np.full(n, r.lr_scale, np.float32) for n, r in zip(sizes, rules)])
    clip = np.concatenate([np.full(n, float(r.clip), np.float32) for n, r in zip(sizes, rules)])
    return lrs, clip


def describe_rules(rules):
    """The counts the Torch7 model file and script print: #lrs==0, #lrs~=0, #clipV~=0, parameters (§5.1)."""
    lrs, clip = flat_vectors(rules)
    return dict(lrs_zero=int((lrs == 0).sum()), lrs_nonzero=int((lrs != 0).sum()),
                clipped=int((clip != 0).sum()), parameters=int(lrs.size))


# ---------------------------------------------------------------------------------------------------------------
# Shift-based AdaMax (adaMax_binary_clip_shift.lua)
# ---------------------------------------------------------------------------------------------------------------
def shift_adamax_step_size(LR, t):
    """eta_t = AP2(LR / (1 - beta1^t)), [BNN] Algorithm 3's bias-corrected step as coded, in double (§5.2).

    For a power-of-two LR: eta_t / LR = 8 (t = 1), 4 (t = 2..4), 2 (t = 5..11), 1 from t = 12 on.
    """
    return float(ap2_host(LR / (1. - ADAMAX_BETA1 ** t)))


def shift_adamax_updates(rules, grads, LR):
    """Shift-based AdaMax over all parameters with the GLR scale and clip mask, [BNN] Algorithm 3 as coded (§5.2).

    Per step (t counts steps over the whole run): m <- b1 m + (1 - b1) g; v <- AP2(max(b2 v, |g|)) + 2^-27,
    stored back (so v is a running maximum that never decays); theta <- theta - eta_t * GLR * m / v with
    eta_t = AP2(LR / (1 - b1^t)) in float64; then theta <- clip(theta, -1, 1) where the rule says so.
    Returns an OrderedDict of updates (parameters, m, v, t).
    """
    floatX = theano.config.floatX
    t = theano.shared(np.float64(0), name="adamax_t")
    t_next = t + 1
    eta = T.cast(ap2(T.cast(LR, "float64") / (1. - ADAMAX_BETA1 ** t_next)), floatX)
    b1, b2 = np.float32(ADAMAX_BETA1), np.float32(ADAMAX_BETA2)
    one_minus_b1, epsilon = np.float32(1. - ADAMAX_BETA1), np.float32(ADAMAX_EPSILON)
    updates = OrderedDict()
    for rule, g in zip(rules, grads):
        value = rule.param.get_value(borrow=True)
        m = theano.shared(np.zeros(value.shape, floatX), broadcastable=rule.param.broadcastable, name="adamax_m")
        v = theano.shared(np.zeros(value.shape, floatX), broadcastable=rule.param.broadcastable, name="adamax_v")
        m_next = b1 * m + one_minus_b1 * g
        v_next = ap2(T.maximum(b2 * v, abs(g))) + epsilon
        step = eta * (np.float32(rule.lr_scale) * (m_next / v_next))
        param_next = rule.param - step
        updates[m], updates[v] = m_next, v_next
        updates[rule.param] = T.clip(param_next, -1., 1.) if rule.clip else param_next
    updates[t] = t_next
    return updates


def halving_schedule(halve_every):
    """The scripts' hard-coded LR schedule: after every epoch e with e mod K = 0, LR <- LR / 2 (§6).

    Returns f(epoch, LR) -> LR of the next epoch; epoch e trains with LR_start * 2^-floor((e - 1) / K).
    """
    def next_lr(epoch, LR):
        return LR / 2. if epoch % halve_every == 0 else LR
    return next_lr


# ---------------------------------------------------------------------------------------------------------------
# Layers as initialised by the Torch7 code, and the three networks
# ---------------------------------------------------------------------------------------------------------------
def _uniform(bound):
    return init.Uniform((-bound, bound))


def binary_dense(incoming, units):
    """BinaryLinear: binary weights (W >= 0 -> +1) and a real bias; W ~ U(-1, 1), b ~ U(+-1/sqrt(fan_in)) (§7)."""
    shape = incoming.output_shape
    fan_in = int(np.prod(shape[1:]))
    return binary_connect.DenseLayer(incoming, units, binary=True, stochastic=False, H=1., W_LR_scale=1.,
                                     b=_uniform(1. / np.sqrt(fan_in)), nonlinearity=lasagne.nonlinearities.identity)


def binary_conv(incoming, filters):
    """cudnnBinarySpatialConvolution 3x3, stride 1, pad 1, cross-correlation; W and b ~ U(+-1/sqrt(9 C_in)) (§7).

    The GPU layer keeps nn.SpatialConvolution's initialisation (the CPU layer and the first upload used
    U(-1, 1) for W). Lasagne's constructor draws W ~ U(-1, 1) first; it is redrawn here.
    """
    bound = 1. / np.sqrt(9. * incoming.output_shape[1])
    layer = binary_connect.Conv2DLayer(incoming, filters, (3, 3), pad=1, binary=True, stochastic=False, H=1.,
                                       W_LR_scale=1., b=_uniform(bound), nonlinearity=lasagne.nonlinearities.identity,
                                       convolution=functools.partial(T.nnet.conv2d, filter_flip=False))
    layer.W.set_value(_uniform(bound).sample(layer.W.get_value(borrow=True).shape).astype(theano.config.floatX))
    return layer


def _hidden_block(layer, rules, scheme, fan_in, fan_out, stochastic, pool=False):
    """Binary layer [-> 2x2 max-pool] -> shift-based BN -> HardTanh -> BinarizedNeurons; records the rules."""
    rules += binary_layer_rules(layer, fan_in, fan_out, scheme)
    if pool:
        layer = lasagne.layers.MaxPool2DLayer(layer, pool_size=(2, 2))
    layer = ShiftBatchNormLayer(layer)
    rules += batch_norm_rules(layer, scheme)
    return BinaryActivationLayer(layer, stochastic=stochastic)


def _output_block(layer, rules, scheme, fan_in):
    """Binary dense (10) -> standard batch norm: the scores (never binarized)."""
    rules += binary_layer_rules(layer, fan_in, 10, scheme)
    layer = StandardBatchNormLayer(layer)
    rules += batch_norm_rules(layer, scheme)
    return layer


def build_mlp(input_var, units=2048, n_hidden_layers=3, stochastic=True):
    """BinaryNet_MNIST_Model: 784 -> 3 x [BinaryLinear(2048) -> SBN -> HardTanh -> Bin] -> BinaryLinear(10) -> BN.

    No dropout. Returns (output layer, rules in Torch's parameter order: per module weight then bias).
    """
    rules = []
    layer = lasagne.layers.InputLayer((None, 1, 28, 28), input_var=input_var)
    fan_in = 784
    for _ in range(n_hidden_layers):
        layer = _hidden_block(binary_dense(layer, units), rules, "mnist", fan_in, units, stochastic)
        fan_in = units
    return _output_block(binary_dense(layer, 10), rules, "mnist", fan_in), rules


def build_convnet(input_var, scheme, widths, dense_units=1024, image_shape=(3, 32, 32), stochastic=True):
    """BinaryNet_Cifar10_Model / BinaryNet_SVHN_Model: 3 x [BConv(F) -> SBN -> act, BConv(F) -> MP -> SBN -> act],
    2 x [BinaryLinear(1024) -> SBN -> act], BinaryLinear(10) -> BN (§7). scheme 'cifar10' or 'svhn' picks the
    model file's LR scales and clip mask. Returns (output layer, rules)."""
    rules = []
    layer = lasagne.layers.InputLayer((None,) + tuple(image_shape), input_var=input_var)
    for filters in widths:
        for pool in (False, True):
            c_in = layer.output_shape[1]
            layer = _hidden_block(binary_conv(layer, filters), rules, scheme, 9 * c_in, 9 * filters, stochastic,
                                  pool)
    for _ in range(2):
        fan_in = int(np.prod(layer.output_shape[1:]))
        layer = _hidden_block(binary_dense(layer, dense_units), rules, scheme, fan_in, dense_units, stochastic)
    return _output_block(binary_dense(layer, 10), rules, scheme, dense_units), rules


# ---------------------------------------------------------------------------------------------------------------
# Training and evaluation functions
# ---------------------------------------------------------------------------------------------------------------
def compile_functions(network, rules, input_var, target_var, LR):
    """train_fn(x, t, LR) -> loss (one AdaMax step) and val_fn(x, t) -> [loss, error], the Torch7 step (§6).

    Training forward: stochastic activations, batch statistics (running averages updated); squared hinge
    loss; gradients w.r.t. Wb for binary weights. Evaluation: deterministic activations, running statistics.
    Returns (train_fn, val_fn, updates).
    """
    train_output = lasagne.layers.get_output(network, deterministic=False)
    loss = binary_connect.squared_hinge_loss(train_output, target_var)
    wrt = [r.binary_layer.Wb if r.binary_layer is not None else r.param for r in rules]
    with compat.no_creation_traces():  # a faster compile, the same functions (binary_connect.compile_functions)
        grads = theano.grad(loss, wrt)  # before the test graph: get_output replaces each layer's Wb
        updates = shift_adamax_updates(rules, grads, LR)
    test_output = lasagne.layers.get_output(network, deterministic=True)
    test_loss = binary_connect.squared_hinge_loss(test_output, target_var)
    errors = binary_connect.error_rate(test_output, target_var)
    with compat.no_creation_traces():
        train_fn = theano.function([input_var, target_var, LR], loss, updates=updates)
        val_fn = theano.function([input_var, target_var], [test_loss, errors])
    return train_fn, val_fn, updates


def train_and_report(network, rules, input_var, target_var, LR, hp, data, train_size, run=None, run_info=None):
    """What mnist.py, cifar10.py and svhn.py do with this method once the network is built (§6).

    Print the model file's counts, compile the Torch7 step, train with the archive's loop
    (binary_connect.train: results.json, log, checkpoint and --resume as for every method) using the halving
    schedule, the last partial minibatch and a fresh permutation of the training rows every epoch; print the
    test error at the best validation epoch beside the paper's. Returns the results summary.
    """
    counts = describe_rules(rules)
    print(f"#lrs==0: {counts['lrs_zero']}, #lrs~=0: {counts['lrs_nonzero']}, #clipV~=0: {counts['clipped']}, "
          f"==> {counts['parameters']} Parameters")
    train_fn, val_fn, updates = compile_functions(network, rules, input_var, target_var, LR)
    print("Training...")
    summary = binary_connect.train(
        train_fn, val_fn, network, hp["batch_size"], hp["LR_start"], halving_schedule(hp["LR_halving_epochs"]),
        hp["num_epochs"], data["X_train"][:train_size], data["y_train"][:train_size], data["X_val"], data["y_val"],
        data["X_test"], data["y_test"], shuffle_parts=hp.get("shuffle_parts", 1), run=run, run_info=run_info,
        state_vars=runfiles.state_variables(network, updates), partial_batch=True)
    paper_error = (run_info or {}).get("paper_test_error")
    print(f"Test error at the best validation epoch ({summary['best_epoch']}): {summary['test_error']}% "
          f"(paper, Torch7 column: {paper_error}%)")
    return summary
