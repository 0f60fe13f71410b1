"""Max pooling (Theano's Pool) over 2x2 windows at stride 2, the papers' pooling, in a loop the compiler vectorizes:
the same numbers, bit for bit (docs/speed.md, item 24).

Theano's loop finds every element's address with PyArray_GETPTR4 from index arrays kept in memory, one window at a
time. Its maximum starts from the window's first element and takes each element in row-major order where it is
greater:

    m = x[2i, 2j];  m = x[2i, 2j+1] > m ? x[2i, 2j+1] : m;  then x[2i+1, 2j], then x[2i+1, 2j+1]

The replacement computes exactly that (so NaN, -0 and ties come out as in Theano) with each plane's rows as
pointers, for 4-D float inputs whose windows all lie inside the image, without padding, rows contiguous. Planes are
split over OpenMP threads as in Theano. Other pooling runs Theano's loop. `install()` (called by plumbing/compat.py)
adds the fast path to every Pool compiled afterwards and a tag to its cache version; tests/test_fast_pool.py
compares it with Theano's own code.
"""
from theano.tensor.signal import pool

VERSION = ("binarynet-archive fast pool", 1)
THEANOS = {name: getattr(pool.Pool, name) for name in ("c_code", "c_code_cache_version")}
# Theano 1.0.5's Pool and MaxPoolGrad: the general loop starts here (plumbing/fast_pool_grad.py uses it too).
ANCHOR = """        if (z_prod)
        {
            // will be used to hold start and end index of a region"""

FAST_PATH = """        if (z_prod && !nonzero_padding && ws[0] == 2 && ws[1] == 2 && st[0] == 2 && st[1] == 2 &&
            2 * z[0] <= r[0] && 2 * z[1] <= r[1] && PyArray_STRIDES(<X>)[3] == sizeof(<T>) &&
            PyArray_STRIDES(<Z>)[3] == sizeof(<T>))
        {
            const npy_intp fp_channels = PyArray_DIMS(<X>)[1], fp_planes = PyArray_DIMS(<X>)[0] * fp_channels;
            const npy_intp* fp_xs = PyArray_STRIDES(<X>);
            const npy_intp* fp_zs = PyArray_STRIDES(<Z>);
            <OMP>
            for (npy_intp t = 0; t < fp_planes; t++)
            {
                const npy_intp n = t / fp_channels, c = t % fp_channels;
                const char* fp_x = PyArray_BYTES(<X>) + n * fp_xs[0] + c * fp_xs[1];
                char* fp_z = PyArray_BYTES(<Z>) + n * fp_zs[0] + c * fp_zs[1];
                for (npy_intp i = 0; i < z[0]; i++)
                {
                    const <T>* fp_x0 = (const <T>*)(fp_x + 2 * i * fp_xs[2]);
                    const <T>* fp_x1 = (const <T>*)(fp_x + (2 * i + 1) * fp_xs[2]);
                    <T>* fp_out = (<T>*)(fp_z + i * fp_zs[2]);
                    for (npy_intp j = 0; j < z[1]; j++)
                    {
                        <T> m = fp_x0[2 * j];
                        m = fp_x0[2 * j + 1] > m ? fp_x0[2 * j + 1] : m;
                        m = fp_x1[2 * j] > m ? fp_x1[2 * j] : m;
                        m = fp_x1[2 * j + 1] > m ? fp_x1[2 * j + 1] : m;
                        fp_out[j] = m;
                    }
                }
            }
        }
        else if (z_prod)
        {
            // will be used to hold start and end index of a region"""


def applies(op, node):
    """2-D max pooling (or its gradient) of a float32 or float64 4-D tensor (the papers' ConvNets)."""
    x = node.inputs[0]
    return op.mode == "max" and op.ndim == 2 and x.ndim == 4 and x.dtype in ("float32", "float64")


def fill(template, op, node, fields):
    """The C template with `fields` ({"<X>": name, ...}), the element type <T> and the OpenMP pragma <OMP> filled."""
    fields = dict(fields, **{"<T>": node.inputs[0].type.dtype_specs()[1],
                             "<OMP>": "#pragma omp parallel for schedule(static)" if op.openmp else ""})
    for field, value in fields.items():
        template = template.replace(field, value)
    return template


def _c_code(self, node, name, inp, out, sub):
    code = THEANOS["c_code"](self, node, name, inp, out, sub)
    if not applies(self, node) or code.count(ANCHOR) != 1:
        return code
    return code.replace(ANCHOR, fill(FAST_PATH, self, node, {"<X>": inp[0], "<Z>": out[0]}))


def _cache_version(self):
    return tuple(THEANOS["c_code_cache_version"](self)) + VERSION


def install():
    """Add the fast path to Theano's Pool (for every graph compiled afterwards)."""
    pool.Pool.c_code = _c_code
    pool.Pool.c_code_cache_version = _cache_version
