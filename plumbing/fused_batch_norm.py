"""Training-mode batch norm of a ConvNet layer in two C ops, one for the forward pass and one for its gradient
(docs/speed.md, item 23). The same function as the layers' Theano graph (batch_norm.py); Theano makes 15-20
passes over the activations for one layer's forward and backward, these ops make 9.

For x (N, C, H, W), per channel c, over its M = N*H*W values (sums accumulated in float64):

    forward   m = mean(x),  d = x - m,  v = mean(d*d)
              s = 1 / sqrt(v + eps)                       (kind 'lasagne': Lasagne 0.2, BinaryNet; spread = s)
              s = 1 / (sqrt(v) + eps)                      (kind 'binaryconnect'; spread = sqrt(v))
              z = d * gamma * s + beta,  y = max(z, 0) if relu else z
    backward  g = dy * relu'(z)  (1 where z > 0, 1/2 at z = 0, as Theano's rectify gradient; 1 without relu)
              dbeta = sum(g),  dgamma = s * sum(g*d)
              dv = gamma * sum(g*d) * ds/dv,  ds/dv = -s^3 / 2 ('lasagne') or -s^2 / (2 sqrt(v)) ('binaryconnect')
              dm = -gamma * s * sum(g) - dv * 2 * sum(d) / M
              dx = gamma * s * g + dv * 2 * d / M + dm / M

The forward pass computes m, v, s and y with the float32 operations of Theano's graph, in its order (each division
by N, H and W in turn, d*d rounded to float32 before it is summed), so its numbers match the graph's; only the
float64 sums are added in another order. The gradient is computed per element in float64 from per-channel
float64 constants: not Theano's float32 graph, so it differs from it at rounding level
(tests/test_fused_batch_norm.py measures both against the same graph in float64). `BINARYNET_BN=graph` keeps the
graph (tests/data/make_reference.py does, for its stored numbers). Channels are split over OpenMP threads.
"""
import theano
import theano.tensor as T
from theano.gradient import DisconnectedType, grad_not_implemented

from plumbing.switches import choice

VERSION = 4
KINDS = ("lasagne", "binaryconnect")
PARALLEL_MIN = 200000  # values from which the channels are split over OpenMP threads (as plumbing/fast_sum.py)


def wanted():
    """BINARYNET_BN: 'fused' (the default) or 'graph' (Theano's elementwise graph). Fused needs a C compiler."""
    return choice("BINARYNET_BN", "fused", "graph") == "fused" and bool(theano.config.cxx)


# Shared C code: the channel loop's header, and the float32 steps of the forward statistics.
SUPPORT = r"""
/* m, v and the spread and scale of one channel, with the float32 operations of Theano's graph. */
static void bn_fused_statistics(const npy_float32 *x, npy_intp n, npy_intp ch, npy_intp c, npy_intp hw,
                                npy_float32 fn, npy_float32 fh, npy_float32 fw, npy_float32 eps, int kind,
                                npy_float32 gamma, npy_float32 *mean, npy_float32 *spread, npy_float32 *scale)
{
    double acc = 0;
    for (npy_intp i = 0; i < n; i++) {
        const npy_float32 *p = x + (i * ch + c) * hw;
        #pragma omp simd reduction(+:acc)
        for (npy_intp j = 0; j < hw; j++) acc += (double)p[j];
    }
    npy_float32 m = (npy_float32)acc;
    m = m / fn; m = m / fh; m = m / fw;
    double acc2 = 0;
    for (npy_intp i = 0; i < n; i++) {
        const npy_float32 *p = x + (i * ch + c) * hw;
        #pragma omp simd reduction(+:acc2)
        for (npy_intp j = 0; j < hw; j++) {
            const npy_float32 d = p[j] - m;
            const npy_float32 dd = d * d;
            acc2 += (double)dd;
        }
    }
    npy_float32 v = (npy_float32)acc2;
    v = v / fn; v = v / fh; v = v / fw;
    *mean = m;
    if (kind == 0) {            /* Lasagne: inv_std = inv(sqrt(eps + v)); y = (x - m) * gamma * inv_std + beta */
        const npy_float32 root = sqrt(eps + v);
        const npy_float32 inv = 1.0 / root;
        *spread = inv;
        *scale = inv;
    } else {                    /* BinaryConnect: std = sqrt(v); y = (x - m) * (gamma / (eps + std)) + beta */
        const npy_float32 sd = sqrt(v);
        *spread = sd;
        *scale = gamma / (eps + sd);
    }
}

/* z from the centred value d, in the float32 operations of Theano's graph: (d * gamma) * inv_std + beta (Lasagne)
   or d * scale + beta (BinaryConnect, scale = gamma / (eps + std)). */
static inline npy_float32 bn_fused_z(npy_float32 d, npy_float32 gm, npy_float32 scale, npy_float32 bt, int kind)
{
    if (kind == 0) {
        const npy_float32 dg = d * gm;
        const npy_float32 dgs = dg * scale;
        return dgs + bt;
    }
    const npy_float32 ds = d * scale;
    return ds + bt;
}

/* Theano's gradient of rectify(z) = 0.5 * (z + |z|): 1 where z > 0, 0 where z < 0, 0.5 at 0 (without branches, so
   that the loops vectorize). */
static inline npy_float32 bn_fused_relu_slope(npy_float32 d, npy_float32 gm, npy_float32 scale, npy_float32 bt,
                                              int kind)
{
    const npy_float32 z = bn_fused_z(d, gm, scale, bt, kind);
    return 0.5f + 0.5f * (npy_float32)((z > 0) - (z < 0));
}

#define BN_DATA(array) ((npy_float32*)PyArray_DATA(array))

/* *array as a C-contiguous float32 array of shape dims: kept where it is one already (Theano hands back the last
   call's output), else allocated. 0 where the allocation failed. */
static int bn_fused_output(PyArrayObject **array, int nd, const npy_intp *dims)
{
    if (*array && PyArray_IS_C_CONTIGUOUS(*array) && PyArray_NDIM(*array) == nd &&
        PyArray_CompareLists(PyArray_DIMS(*array), dims, nd))
        return 1;
    Py_XDECREF(*array);
    *array = (PyArrayObject*)PyArray_EMPTY(nd, (npy_intp*)dims, NPY_FLOAT32, 0);
    return *array != NULL;
}
"""

FORWARD = r"""
{
    PyArrayObject *bn_x = PyArray_GETCONTIGUOUS(<X>), *bn_g = PyArray_GETCONTIGUOUS(<GAMMA>);
    PyArrayObject *bn_b = PyArray_GETCONTIGUOUS(<BETA>);
    const npy_intp *dims = PyArray_DIMS(bn_x);
    const npy_intp n = dims[0], ch = dims[1], h = dims[2], w = dims[3], hw = h * w;
    const char *err = NULL;
    if (PyArray_DIMS(bn_g)[0] != ch || PyArray_DIMS(bn_b)[0] != ch)
        err = "gamma and beta need one value per channel of the input";
    else if (n * hw == 0)
        err = "the input has no values to normalize (an empty batch or image)";
    if (!err && !bn_fused_output(&<Y>, 4, dims))
        err = "allocating the output";
    if (!err && !(bn_fused_output(&<MEAN>, 1, &ch) && bn_fused_output(&<SPREAD>, 1, &ch)))
        err = "allocating the statistics";
    if (!err) {
        const npy_float32 *x = BN_DATA(bn_x), *gamma = BN_DATA(bn_g), *beta = BN_DATA(bn_b);
        npy_float32 *y = BN_DATA(<Y>), *mean = BN_DATA(<MEAN>), *spread = BN_DATA(<SPREAD>);
        const npy_float32 fn = (npy_float32)n, fh = (npy_float32)h, fw = (npy_float32)w, eps = <EPS>;
        Py_BEGIN_ALLOW_THREADS
        #pragma omp parallel for schedule(static) if (n * ch * hw >= <PARALLEL_MIN>)
        for (npy_intp c = 0; c < ch; c++) {
            npy_float32 m, scale;
            bn_fused_statistics(x, n, ch, c, hw, fn, fh, fw, eps, <KIND>, gamma[c], &m, &spread[c], &scale);
            mean[c] = m;
            const npy_float32 gm = gamma[c], bt = beta[c];
            for (npy_intp i = 0; i < n; i++) {
                const npy_float32 *p = x + (i * ch + c) * hw;
                npy_float32 *q = y + (i * ch + c) * hw;
                for (npy_intp j = 0; j < hw; j++) {
                    npy_float32 z = bn_fused_z(p[j] - m, gm, scale, bt, <KIND>);
                    if (<RELU>) { const npy_float32 za = z + fabsf(z); z = 0.5f * za; }
                    q[j] = z;
                }
            }
        }
        Py_END_ALLOW_THREADS
    }
    Py_DECREF(bn_x);
    Py_DECREF(bn_g);
    Py_DECREF(bn_b);
    if (err) {
        PyErr_Format(PyExc_ValueError, "fused batch norm: %s; BINARYNET_BN=graph runs Theano's graph instead", err);
        <FAIL>
    }
}
"""

BACKWARD = r"""
{
    PyArrayObject *in[6] = {PyArray_GETCONTIGUOUS(<X>), PyArray_GETCONTIGUOUS(<DY>), PyArray_GETCONTIGUOUS(<GAMMA>),
                            PyArray_GETCONTIGUOUS(<BETA>), PyArray_GETCONTIGUOUS(<MEAN>),
                            PyArray_GETCONTIGUOUS(<SPREAD>)};
    const npy_intp *dims = PyArray_DIMS(in[0]);
    const npy_intp n = dims[0], ch = dims[1], h = dims[2], w = dims[3], hw = h * w;
    const char *err = NULL;
    if (!PyArray_CompareLists(PyArray_DIMS(in[1]), dims, 4))
        err = "the output gradient's shape differs from the input's";
    for (int k = 2; k < 6 && !err; k++)
        if (PyArray_DIMS(in[k])[0] != ch) err = "gamma, beta and the statistics need one value per channel";
    if (!err && n * hw == 0)
        err = "the input has no values to normalize (an empty batch or image)";
    if (!err && !bn_fused_output(&<DX>, 4, dims))
        err = "allocating the input gradient";
    if (!err && !(bn_fused_output(&<DGAMMA>, 1, &ch) && bn_fused_output(&<DBETA>, 1, &ch)))
        err = "allocating the parameter gradients";
    if (!err) {
        const npy_float32 *x = BN_DATA(in[0]), *dy = BN_DATA(in[1]), *gamma = BN_DATA(in[2]), *beta = BN_DATA(in[3]);
        const npy_float32 *mean = BN_DATA(in[4]), *spread = BN_DATA(in[5]);
        npy_float32 *dx = BN_DATA(<DX>), *dgamma = BN_DATA(<DGAMMA>), *dbeta = BN_DATA(<DBETA>);
        const npy_float32 eps = <EPS>;
        const double count = (double)n * (double)hw;
        Py_BEGIN_ALLOW_THREADS
        #pragma omp parallel for schedule(static) if (n * ch * hw >= <PARALLEL_MIN>)
        for (npy_intp c = 0; c < ch; c++) {
            const npy_float32 m = mean[c], gm = gamma[c], bt = beta[c];
            /* the forward pass's float32 scale, for z (and so the ReLU mask) exactly as it was */
            const npy_float32 scale = <KIND> == 0 ? spread[c] : gm / (eps + spread[c]);
            double sum_g = 0, sum_gd = 0, sum_d = 0;
            for (npy_intp i = 0; i < n; i++) {
                const npy_float32 *p = x + (i * ch + c) * hw, *q = dy + (i * ch + c) * hw;
                #pragma omp simd reduction(+:sum_g, sum_gd, sum_d)
                for (npy_intp j = 0; j < hw; j++) {
                    const npy_float32 d = p[j] - m;
                    const double g = (double)(<RELU> ? q[j] * bn_fused_relu_slope(d, gm, scale, bt, <KIND>) : q[j]);
                    sum_g += g;
                    sum_gd += g * d;
                    sum_d += d;
                }
            }
            double s, ds_dv;
            if (<KIND> == 0) {
                s = spread[c];
                ds_dv = -0.5 * s * s * s;
            } else {
                const double sd = spread[c];
                s = 1.0 / (sd + (double)eps);
                ds_dv = -s * s * 0.5 / sd;
            }
            const double a = (double)gm * s;
            const double dv = (double)gm * sum_gd * ds_dv;
            const double dm = -a * sum_g - dv * 2.0 * sum_d / count;
            const double b = dv * 2.0 / count, k = dm / count;
            dbeta[c] = (npy_float32)sum_g;
            dgamma[c] = (npy_float32)(s * sum_gd);
            for (npy_intp i = 0; i < n; i++) {
                const npy_float32 *p = x + (i * ch + c) * hw, *q = dy + (i * ch + c) * hw;
                npy_float32 *r = dx + (i * ch + c) * hw;
                for (npy_intp j = 0; j < hw; j++) {
                    const npy_float32 d = p[j] - m;
                    const double g = (double)(<RELU> ? q[j] * bn_fused_relu_slope(d, gm, scale, bt, <KIND>) : q[j]);
                    r[j] = (npy_float32)(a * g + b * d + k);
                }
            }
        }
        Py_END_ALLOW_THREADS
    }
    for (int k = 0; k < 6; k++) Py_DECREF(in[k]);
    if (err) {
        PyErr_Format(PyExc_ValueError, "fused batch norm gradient: %s; BINARYNET_BN=graph runs Theano's graph instead",
                     err);
        <FAIL>
    }
}
"""


class _FusedOp(theano.Op):
    """What the two ops share: kind, epsilon and relu as properties, C-only, compiled with OpenMP."""
    __props__ = ("kind", "epsilon", "relu")

    def __init__(self, kind, epsilon, relu=False):
        if kind not in KINDS:
            raise ValueError(f"fused batch norm kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.epsilon, self.relu = kind, float(epsilon), bool(relu)

    def perform(self, node, inputs, outputs):
        raise NotImplementedError("fused batch norm runs in C only; BINARYNET_BN=graph runs Theano's graph")

    def c_support_code(self):
        return SUPPORT

    def c_headers(self):
        return ["<math.h>"]

    def c_compile_args(self):
        return ["-fopenmp"]

    def c_code_cache_version(self):
        return (VERSION,)

    def _fill(self, code, names, sub):
        fields = dict(names, EPS=repr(float(T.constant(self.epsilon, dtype="float32").data)) + "f",
                      KIND=str(KINDS.index(self.kind)), RELU=str(int(self.relu)), PARALLEL_MIN=str(PARALLEL_MIN),
                      FAIL=sub["fail"])
        for field, value in fields.items():
            code = code.replace("<" + field + ">", value)
        return code


def _vector(v):
    v = T.as_tensor_variable(v)
    if v.ndim != 1 or v.dtype != "float32":
        raise TypeError(f"fused batch norm needs float32 vectors for gamma, beta and the statistics, got {v.type}")
    return v


class BatchNormTrain(_FusedOp):
    """(x, gamma, beta, *carried) -> (y, mean, spread): the forward formulas of the module docstring, x float32
    (N, C, H, W), gamma and beta (C,). spread is Lasagne's inv_std or BinaryConnect's std, for the running averages.
    `carried` inputs are not used: they put the layer's running-average variables (whose updates read mean and
    spread) into the graph, so that theano.function collects those updates."""

    def make_node(self, x, gamma, beta, *carried):
        x = T.as_tensor_variable(x)
        if x.ndim != 4 or x.dtype != "float32":
            raise TypeError(f"fused batch norm needs a float32 (N, C, H, W) input, got {x.type}")
        gamma, beta = _vector(gamma), _vector(beta)
        stats = T.TensorType("float32", (x.broadcastable[1],))
        inputs = [x, gamma, beta] + [T.as_tensor_variable(v) for v in carried]
        return theano.Apply(self, inputs, [x.type(), stats(), stats()])

    def infer_shape(self, node, shapes):
        return [shapes[0], (shapes[0][1],), (shapes[0][1],)]

    def connection_pattern(self, node):
        return [[True] * 3] * 3 + [[False] * 3] * (len(node.inputs) - 3)

    def grad(self, inputs, output_grads):
        x, gamma, beta = inputs[:3]
        dy, dmean, dspread = output_grads
        if not all(isinstance(g.type, DisconnectedType) for g in (dmean, dspread)):
            raise NotImplementedError("fused batch norm: the batch statistics are not differentiable here; "
                                      "BINARYNET_BN=graph runs Theano's graph")
        carried = [DisconnectedType()() for _ in inputs[3:]]
        if isinstance(dy.type, DisconnectedType):
            return [x.zeros_like(), gamma.zeros_like(), beta.zeros_like()] + carried
        y, mean, spread = self(*inputs)
        return BatchNormTrainGrad(self.kind, self.epsilon, self.relu)(x, dy, gamma, beta, mean, spread) + carried

    def c_code(self, node, name, inames, onames, sub):
        names = dict(zip(("X", "GAMMA", "BETA", "Y", "MEAN", "SPREAD"), inames[:3] + onames))
        return self._fill(FORWARD, names, sub)


class BatchNormTrainGrad(_FusedOp):
    """(x, dy, gamma, beta, mean, spread) -> (dx, dgamma, dbeta): the backward formulas of the module docstring."""

    def make_node(self, x, dy, gamma, beta, mean, spread):
        x, dy = T.as_tensor_variable(x), T.as_tensor_variable(dy)
        for v in (x, dy):
            if v.ndim != 4 or v.dtype != "float32":
                raise TypeError(f"fused batch norm gradient needs float32 (N, C, H, W) tensors, got {v.type}")
        vectors = [_vector(v) for v in (gamma, beta, mean, spread)]
        return theano.Apply(self, [x, dy] + vectors, [x.type(), vectors[0].type(), vectors[1].type()])

    def infer_shape(self, node, shapes):
        return [shapes[0], shapes[2], shapes[3]]

    def grad(self, inputs, output_grads):
        return [grad_not_implemented(self, i, v, "second derivatives of fused batch norm")
                for i, v in enumerate(inputs)]

    def c_code(self, node, name, inames, onames, sub):
        names = dict(zip(("X", "DY", "GAMMA", "BETA", "MEAN", "SPREAD", "DX", "DGAMMA", "DBETA"), inames + onames))
        return self._fill(BACKWARD, names, sub)


def batch_norm_train(x, gamma, beta, kind, epsilon, relu=False, carried=()):
    """(y, mean, spread) of the training-mode batch norm of x (N, C, H, W); gamma and beta (C,) vectors; `carried`
    variables enter the graph unused (BatchNormTrain)."""
    return BatchNormTrain(kind, epsilon, relu)(x, gamma, beta, *carried)
