"""Batch normalization, one of the papers' rules: the two layers the originals used, and the block that puts
batch norm and the activation after every weight layer.

Lasagne 0.1 has no batch norm. BinaryConnect shipped its own `batch_norm.py` (`BCBatchNormLayer` here); the
BinaryNet scripts used Lasagne 0.2's `BatchNormLayer` followed by a separate activation layer (ORIGINALS.md §1.7).
In training mode on ConvNet activations (N, C, H, W) both layers compute the same function through the two C ops of
plumbing/fused_batch_norm.py (docs/speed.md, item 23); `BINARYNET_BN=graph` builds the graph below instead.
"""
from plumbing import compat  # noqa: F401  (Theano flags and Lasagne patches come first)
from plumbing import fused_batch_norm
from plumbing.compat import T, lasagne
from lasagne import init
from lasagne.layers import Layer

import binary_net


def _norm_axes(axes, ndim):
    if axes == "auto":
        return (0,) + tuple(range(2, ndim))
    return (axes,) if isinstance(axes, int) else tuple(axes)


class BatchNormLayer(Layer):
    """Batch normalization as in Lasagne 0.2 (used by every BinaryNet script; ORIGINALS.md §1.7.2).

    Training:  y = (x - mean_B) * gamma / sqrt(var_B + epsilon) + beta, with mean_B and the biased var_B over
               `axes` (all but axis 1 by default), and running averages updated once per training call:
               mean <- (1 - alpha) mean + alpha mean_B,  inv_std <- (1 - alpha) inv_std + alpha / sqrt(var_B + eps).
    Test (deterministic=True): y = (x - mean) * gamma * inv_std + beta.
    Parameters, in this order: beta (0), gamma (1), mean (0), inv_std (1); shapes drop the normalized axes.
    No nonlinearity (BinaryNet adds its own NonlinearityLayer).
    """

    def __init__(self, incoming, axes="auto", epsilon=1e-4, alpha=0.1, **kwargs):
        super(BatchNormLayer, self).__init__(incoming, **kwargs)
        self.axes = _norm_axes(axes, len(self.input_shape))
        self.epsilon, self.alpha = epsilon, alpha
        shape = [size for axis, size in enumerate(self.input_shape) if axis not in self.axes]
        self.beta = self.add_param(init.Constant(0), shape, "beta", trainable=True, regularizable=False)
        self.gamma = self.add_param(init.Constant(1), shape, "gamma", trainable=True, regularizable=True)
        self.mean = self.add_param(init.Constant(0), shape, "mean", trainable=False, regularizable=False)
        self.inv_std = self.add_param(init.Constant(1), shape, "inv_std", trainable=False, regularizable=False)

    def _broadcast(self, param, ndim):
        pattern = []
        kept = iter(range(param.ndim))
        for axis in range(ndim):
            pattern.append("x" if axis in self.axes else next(kept))
        return param.dimshuffle(pattern)

    def get_output_for(self, input, deterministic=False, **kwargs):
        if deterministic:
            mean, inv_std = self.mean, self.inv_std
        elif _fused(input, self.axes):
            return _fused_output(self, input, "lasagne", self.gamma, self.beta, self.inv_std, False)
        else:
            mean = input.mean(self.axes)
            inv_std = T.inv(T.sqrt(input.var(self.axes) + self.epsilon))
            # The running averages enter the graph with weight 0 so that theano.function collects them.
            mean = mean + 0 * _running_average(self.mean, mean, self.alpha)
            inv_std = inv_std + 0 * _running_average(self.inv_std, inv_std, self.alpha)
        b = lambda p: self._broadcast(p, input.ndim)  # noqa: E731
        return (input - b(mean)) * (b(self.gamma) * b(inv_std)) + b(self.beta)


class BCBatchNormLayer(Layer):
    """BinaryConnect's own batch normalization (ORIGINALS.md §1.7.1).

    Training:  y = f((x - mean_B) * gamma / (std_B + epsilon) + beta), std_B the biased batch standard
               deviation (epsilon is added to the *standard deviation*), running averages per training call:
               mean <- (1 - alpha) mean + alpha mean_B,  std <- (1 - alpha) std + alpha std_B.
    Test (deterministic=True): the stored mean and std.
    Parameters, in this order: mean (0), std (1), beta (0), gamma (1); shapes keep the normalized axes with
    size 1 (dense (1, U), conv (1, C, 1, 1)). f is the layer's nonlinearity (ReLU or identity in BC).
    """

    def __init__(self, incoming, axes=None, epsilon=0.01, alpha=0.5, nonlinearity=None, **kwargs):
        super(BCBatchNormLayer, self).__init__(incoming, **kwargs)
        self.axes = _norm_axes("auto" if axes is None else axes, len(self.input_shape))
        self.epsilon, self.alpha = epsilon, alpha
        self.nonlinearity = nonlinearity if nonlinearity is not None else lasagne.nonlinearities.identity
        shape = [1 if axis in self.axes else size for axis, size in enumerate(self.input_shape)]
        self.mean = self.add_param(init.Constant(0), shape, "mean", trainable=False, regularizable=False)
        self.std = self.add_param(init.Constant(1), shape, "std", trainable=False, regularizable=False)
        self.beta = self.add_param(init.Constant(0), shape, "beta", trainable=True, regularizable=True)
        self.gamma = self.add_param(init.Constant(1), shape, "gamma", trainable=True, regularizable=False)

    def get_output_for(self, input, deterministic=False, **kwargs):
        b = lambda p: T.addbroadcast(p, *self.axes)  # noqa: E731  (size-1 axes broadcast over the batch)
        if deterministic:
            mean, std = b(self.mean), b(self.std)
        elif _fused(input, self.axes):
            relu = self.nonlinearity is lasagne.nonlinearities.rectify
            y = _fused_output(self, input, "binaryconnect", self.gamma.flatten(), self.beta.flatten(), self.std, relu)
            return y if relu else self.nonlinearity(y)
        else:
            mean = input.mean(self.axes, keepdims=True)
            std = T.sqrt(input.var(self.axes, keepdims=True))
            mean = mean + 0 * b(_running_average(self.mean, mean, self.alpha))
            std = std + 0 * b(_running_average(self.std, std, self.alpha))
        return self.nonlinearity((input - mean) * (b(self.gamma) / (std + self.epsilon)) + b(self.beta))


def _fused(input, axes):
    """True where a training-mode batch norm runs as plumbing/fused_batch_norm.py's C ops: a float32 ConvNet
    activation (N, C, H, W) normalized per channel, unless BINARYNET_BN=graph."""
    return input.ndim == 4 and tuple(axes) == (0, 2, 3) and input.dtype == "float32" and fused_batch_norm.wanted()


def _fused_output(layer, input, kind, gamma, beta, spread_param, relu):
    """The layer's training output by the fused ops (same formulas as the graph), with its running averages of the
    mean and of the spread (Lasagne's inv_std, BinaryConnect's std) updated as in the graph path."""
    averages = [_alias(layer.mean), _alias(spread_param)]
    # The aliases are carried by the op (it ignores them) so that theano.function collects their updates.
    y, mean, spread = fused_batch_norm.batch_norm_train(input, gamma, beta, kind, layer.epsilon, relu, averages)
    for alias, batch_value in zip(averages, (mean, spread)):
        _average_into(alias, batch_value.reshape(alias.get_value(borrow=True).shape), layer.alpha)
    return y


def _alias(shared):
    """A variable on the same storage as `shared`, to carry a default update."""
    alias = shared.clone()
    alias.container = shared.container
    return alias


def _running_average(shared, batch_value, alpha):
    """An alias of `shared` (same storage) whose default update is the running average with `batch_value`.

    theano.function applies the `default_update` of every shared variable in its graph, so a training
    function that contains the alias updates the statistic; the test graph never builds one.
    """
    alias = _alias(shared)
    _average_into(alias, batch_value, alpha)
    return alias


def _average_into(alias, batch_value, alpha):
    """The alias's default update: the running average (1 - alpha) * alias + alpha * batch_value."""
    alias.default_update = ((1 - alpha) * alias + alpha * batch_value).astype(alias.dtype)


def batch_norm_and_activation(family, layer, epsilon, alpha, last=False):
    """What follows every weight layer (ORIGINALS.md §1.7, §2.1).

    family 'binarynet': Lasagne-0.2 batch norm, then a separate binary_tanh layer (none after the output layer);
    family 'binaryconnect': BinaryConnect's own batch norm with ReLU inside (identity for the output layer).
    """
    if family == "binarynet":
        layer = BatchNormLayer(layer, epsilon=epsilon, alpha=alpha)
        if last:
            return layer
        return lasagne.layers.NonlinearityLayer(layer, nonlinearity=binary_net.binary_tanh_unit)
    nonlinearity = lasagne.nonlinearities.identity if last else lasagne.nonlinearities.rectify
    return BCBatchNormLayer(layer, epsilon=epsilon, alpha=alpha, nonlinearity=nonlinearity)
