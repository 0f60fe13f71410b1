"""Make the 2016 Theano + Lasagne code base run on today's stack.

Import this module before anything imports theano or lasagne:

    import compat                      # sets Theano flags, patches Lasagne 0.1
    from compat import lasagne, theano, T

What it does (ORIGINALS.md §7, ENVIRONMENT.md "Theano 1.0.5 and Lasagne"):

* Theano flags: floatX=float32 and a BLAS that uses this CPU's vector units. Theano's own BLAS detection
  crashes under NumPy 1.23, so `blas.ldflags` is set here: Intel MKL from PyPI (`libmkl_rt`, installed by
  requirements.txt into the virtual environment), else a system OpenBLAS, else Theano's slow fallback.
  Anything the user puts in THEANO_FLAGS wins over these defaults.
* Lasagne 0.1 imports `theano.tensor.signal.downsample`, removed in Theano 0.9. A stand-in module with
  `max_pool_2d` on top of `theano.tensor.signal.pool.pool_2d` is registered before Lasagne is imported.
* Two batch-normalization layers (Lasagne 0.1 has none): `BatchNormLayer` (Lasagne 0.2 semantics, used by
  BinaryNet) and `BCBatchNormLayer` (BinaryConnect's own layer).
* `round_half_away_from_zero`: Theano 1.0 rounds half to even by default; the originals relied on the
  2016 default, half away from zero (so hard_sigmoid(0) = 0.5 rounds to 1).
"""
import ctypes
import ctypes.util
import glob
import os
import sys
import types
import warnings


def _blas_flags():
    """Linker flags for the fastest BLAS found, and a short name of it (printed by benchmarks)."""
    venv_lib = os.path.join(sys.prefix, "lib")
    mkl = sorted(glob.glob(os.path.join(venv_lib, "libmkl_rt.so*")))
    if mkl:
        # Theano's ldflags take no rpath (it splits on commas), so the library is loaded here once, globally:
        # the compiled modules then find it already loaded under its soname.
        ctypes.CDLL(mkl[-1], mode=ctypes.RTLD_GLOBAL)
        name = os.path.basename(mkl[-1])
        return "-L{} -l:{}".format(venv_lib, name), "MKL ({})".format(name)
    if ctypes.util.find_library("openblas"):
        return "-lopenblas", "OpenBLAS (system)"
    return "", "none (Theano's NumPy fallback)"


BLAS_LDFLAGS, BLAS_NAME = _blas_flags()


def _configure_theano():
    compiledir = os.environ.get("BINARYNET_THEANO_CACHE", os.path.expanduser("~/.cache/binarynet-archive/theano"))
    # Speed, not semantics: local_dot22_to_dot22scalar makes Theano compute the same big product once per
    # scalar factor that consumes it (21 instead of 11 products per BinaryNet MLP step); openmp runs large
    # elementwise ops (binarization, Adam) on all cores. Together: 1.0 s -> 0.3 s per MNIST minibatch here.
    defaults = ["floatX=float32", "device=cpu", "base_compiledir=" + compiledir, "blas.ldflags=" + BLAS_LDFLAGS,
                "gcc.cxxflags=-O2 -Wno-cpp", "openmp=True", "optimizer_excluding=local_dot22_to_dot22scalar"]
    user = os.environ.get("THEANO_FLAGS", "")
    os.environ["THEANO_FLAGS"] = ",".join(defaults + ([user] if user else []))
    # MKL's default threading layer is Intel OpenMP; Theano's own C code uses GNU OpenMP. Use one runtime.
    os.environ.setdefault("MKL_THREADING_LAYER", "GNU")


if "theano" in sys.modules and sys.modules["theano"].config.floatX != "float32":
    raise ImportError("compat must be imported before theano (floatX is not float32)")
_configure_theano()

import logging  # noqa: E402

import numpy as np  # noqa: E402
import theano  # noqa: E402
import theano.tensor as T  # noqa: E402
from theano.tensor.signal import pool  # noqa: E402


def _install_downsample_shim():
    """Register `theano.tensor.signal.downsample` (removed in Theano 0.9) for Lasagne 0.1."""
    if "theano.tensor.signal.downsample" in sys.modules:
        return
    shim = types.ModuleType("theano.tensor.signal.downsample")

    def max_pool_2d(input, ds, ignore_border=None, st=None, padding=(0, 0), mode="max"):
        return pool.pool_2d(input, ws=ds, ignore_border=ignore_border, stride=st, pad=padding, mode=mode)

    shim.max_pool_2d = max_pool_2d
    sys.modules[shim.__name__] = shim
    theano.tensor.signal.downsample = shim


_install_downsample_shim()
# Theano warns that it cannot find "libmkl_rt.so" in the library dir: the versioned file is linked on purpose.
logging.getLogger("theano.tensor.blas").addFilter(
    lambda record: "did not find a dynamic library" not in record.getMessage())
# Lasagne 0.1 passes conv2d's old keyword `image_shape`; Theano 1.0 accepts it with a warning on every conv layer.
warnings.filterwarnings("ignore", message="The `image_shape` keyword argument", category=UserWarning)
import lasagne  # noqa: E402
from lasagne import init  # noqa: E402
from lasagne.layers import Layer  # noqa: E402


def round_half_away_from_zero(x):
    """Elementwise round with ties away from zero: 0.5 -> 1, -0.5 -> -1 (the pre-2017 Theano default)."""
    return T.round(x, mode="half_away_from_zero")


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
        else:
            mean = input.mean(self.axes, keepdims=True)
            std = T.sqrt(input.var(self.axes, keepdims=True))
            mean = mean + 0 * b(_running_average(self.mean, mean, self.alpha))
            std = std + 0 * b(_running_average(self.std, std, self.alpha))
        return self.nonlinearity((input - mean) * (b(self.gamma) / (std + self.epsilon)) + b(self.beta))


def _running_average(shared, batch_value, alpha):
    """An alias of `shared` (same storage) whose default update is the running average with `batch_value`.

    theano.function applies the `default_update` of every shared variable in its graph, so a training
    function that contains the alias updates the statistic; the test graph never builds one.
    """
    alias = shared.clone()
    alias.container = shared.container
    alias.default_update = ((1 - alpha) * alias + alpha * batch_value).astype(shared.dtype)
    return alias


__all__ = ["theano", "T", "np", "lasagne", "BLAS_NAME", "BLAS_LDFLAGS", "BatchNormLayer", "BCBatchNormLayer",
           "round_half_away_from_zero"]
