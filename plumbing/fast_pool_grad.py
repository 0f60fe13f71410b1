"""Max pooling's gradient (Theano's MaxPoolGrad) for 4-D inputs without padding, one image plane at a time and
without jumps: the same numbers, bit for bit (docs/speed.md).

Theano's loop computes every element's address with PyArray_GETPTR4 from index arrays kept in memory, and adds
gz only where `x == max` behind a jump that, on real data, goes one way or the other at random: 12.5 ms for the
gradient of a 50x128x32x32 input here. The replacement runs the same loops with each plane's addresses and strides
in registers:

    gx = 0;  for every region (i, j) in row-major order, for every input (m0, m1) of the region, rows first:
             gx[m0, m1] += (x[m0, m1] == z[i, j]) ? gz[i, j] : +0      (the select as a bit mask, no jump)

Every element of gx receives the same additions in the same order as in Theano's loop (regions overlap when the
stride is below the window), plus additions of +0 where Theano added nothing. Those change nothing: gx starts at +0,
and a sum that starts at +0 never becomes -0 (in round-to-nearest, x + y is -0 only if both are -0), so gx + (+0)
is gx, NaN included. Planes (n, c) are independent and split over OpenMP threads as in Theano. With padding, and
for anything but 2-D pooling of float 4-D tensors, Theano's loop runs. 6.5 ms instead of 12.5 ms for the tensor
above.

The papers' pooling (2x2 windows at stride 2, all inside the image, rows contiguous; docs/speed.md, item 24) puts
each element of gx in exactly one window. There gx is allocated without Theano's zero fill and each element is
written once, +0 + (x == max ? gz : +0) with the select as a bit mask: the same value as +0 plus Theano's one
addition; the rows and columns outside every window (odd sizes) are written +0. In BinaryConnect SVHN's step,
2.88 -> 1.18 ms per call (written as `?:`, the select had compiled to a jump, mispredicted at random).

`install()` (called by plumbing/compat.py) adds the fast paths to every MaxPoolGrad compiled afterwards and a tag to
its cache version. tests/test_fast_pool_grad.py compares it with Theano's own code.
"""
from theano.tensor.signal import pool

from plumbing.fast_pool import ANCHOR, applies, fill

VERSION = ("binarynet-archive fast pool grad", 5)
THEANOS = {name: getattr(pool.MaxPoolGrad, name) for name in ("c_code", "c_code_cache_version")}
# Theano 1.0.5's MaxPoolGrad: the output is allocated zero-filled (or zero-filled when reused).
ALLOCATION = """        if (mem_nec)
        {
          Py_XDECREF(<GX>);
          <GX> = (PyArrayObject*) PyArray_ZEROS(4, PyArray_DIMS(<X>), x_typenum,0);
        }
        else {
          PyArray_FILLWBYTE(<GX>, 0);
        }"""

# The papers' pooling: 2x2 windows at stride 2, all inside the image, no padding, contiguous rows. Every element of
# gx is then written once by the 2x2 loop (below), so gx is allocated without the zero fill.
PAIRS = """        int fp_pairs;  /* no initializer: Theano's error paths jump over this declaration */
        fp_pairs = !nonzero_padding && ws[0] == 2 && ws[1] == 2 && st[0] == 2 && st[1] == 2 &&
            z[0] > 0 && z[1] > 0 && 2 * z[0] <= r[0] && 2 * z[1] <= r[1] && PyArray_STRIDES(<X>)[3] == sizeof(<T>) &&
            PyArray_STRIDES(<Z>)[3] == sizeof(<T>) && PyArray_STRIDES(<GZ>)[3] == sizeof(<T>);
        if (mem_nec)
        {
          Py_XDECREF(<GX>);
          <GX> = (PyArrayObject*) (fp_pairs ? PyArray_EMPTY(4, PyArray_DIMS(<X>), x_typenum, 0)
                                            : PyArray_ZEROS(4, PyArray_DIMS(<X>), x_typenum, 0));
        }
        else if (!fp_pairs) {
          PyArray_FILLWBYTE(<GX>, 0);
        }"""

FAST_PATH = """        if (z_prod && !nonzero_padding)
        {
            const npy_intp fp_n = PyArray_DIMS(<X>)[0], fp_planes = PyArray_DIMS(<X>)[0] * PyArray_DIMS(<X>)[1];
            const npy_intp* fp_xs = PyArray_STRIDES(<X>);
            const npy_intp* fp_zs = PyArray_STRIDES(<Z>);
            const npy_intp* fp_gzs = PyArray_STRIDES(<GZ>);
            const npy_intp* fp_gxs = PyArray_STRIDES(<GX>);
            <OMP>
            for (npy_intp t = 0; t < fp_planes; t++)
            {
                const npy_intp n = t % fp_n, c = t / fp_n;  /* Theano's order of the planes */
                const char* fp_x = PyArray_BYTES(<X>) + n * fp_xs[0] + c * fp_xs[1];
                const char* fp_z = PyArray_BYTES(<Z>) + n * fp_zs[0] + c * fp_zs[1];
                const char* fp_gz = PyArray_BYTES(<GZ>) + n * fp_gzs[0] + c * fp_gzs[1];
                char* fp_gx = PyArray_BYTES(<GX>) + n * fp_gxs[0] + c * fp_gxs[1];
                if (fp_pairs)
                {
                    /* each element of gx in one window: +0 + (x == max ? gz : +0), written once; the rows and
                       columns outside every window (odd sizes) get +0, as the zero fill would have given them */
                    const npy_intp fp_h = PyArray_DIMS(<X>)[2], fp_w = PyArray_DIMS(<X>)[3];
                    for (npy_intp i = 0; i < z[0]; i++)
                    {
                        const <T>* fp_x0 = (const <T>*)(fp_x + 2 * i * fp_xs[2]);
                        const <T>* fp_x1 = (const <T>*)(fp_x + (2 * i + 1) * fp_xs[2]);
                        <T>* fp_g0 = (<T>*)(fp_gx + 2 * i * fp_gxs[2]);
                        <T>* fp_g1 = (<T>*)(fp_gx + (2 * i + 1) * fp_gxs[2]);
                        const <T>* fp_zr = (const <T>*)(fp_z + i * fp_zs[2]);
                        const <T>* fp_gr = (const <T>*)(fp_gz + i * fp_gzs[2]);
                        for (npy_intp j = 0; j < z[1]; j++)
                        {
                            const <T> fp_max = fp_zr[j], fp_g = (<T>)0 + fp_gr[j];
                            <U> fp_gbits, fp_bits[4];
                            memcpy(&fp_gbits, &fp_g, sizeof fp_g);
                            /* the select as a bit mask, no jump (as below) */
                            fp_bits[0] = fp_gbits & -(<U>)(fp_x0[2 * j] == fp_max);
                            fp_bits[1] = fp_gbits & -(<U>)(fp_x0[2 * j + 1] == fp_max);
                            fp_bits[2] = fp_gbits & -(<U>)(fp_x1[2 * j] == fp_max);
                            fp_bits[3] = fp_gbits & -(<U>)(fp_x1[2 * j + 1] == fp_max);
                            memcpy(fp_g0 + 2 * j, fp_bits, 2 * sizeof(<T>));
                            memcpy(fp_g1 + 2 * j, fp_bits + 2, 2 * sizeof(<T>));
                        }
                        for (npy_intp k = 2 * z[1]; k < fp_w; k++)
                            fp_g0[k] = fp_g1[k] = (<T>)0;
                    }
                    for (npy_intp m0 = 2 * z[0]; m0 < fp_h; m0++)
                        for (npy_intp k = 0; k < fp_w; k++)
                            ((<T>*)(fp_gx + m0 * fp_gxs[2]))[k] = (<T>)0;
                    continue;
                }
                for (npy_intp i = 0; i < z[0]; i++)
                {
                    const npy_intp r0 = i * st[0], e0 = r0 + ws[0] < r[0] ? r0 + ws[0] : r[0];
                    for (npy_intp j = 0; j < z[1]; j++)
                    {
                        const npy_intp r1 = j * st[1], e1 = r1 + ws[1] < r[1] ? r1 + ws[1] : r[1];
                        const <T> fp_max = *(const <T>*)(fp_z + i * fp_zs[2] + j * fp_zs[3]);
                        const <T> fp_g = *(const <T>*)(fp_gz + i * fp_gzs[2] + j * fp_gzs[3]);
                        <U> fp_gbits;
                        memcpy(&fp_gbits, &fp_g, sizeof fp_g);
                        for (npy_intp m0 = r0; m0 < e0; m0++)
                        {
                            const char* fp_xrow = fp_x + m0 * fp_xs[2];
                            char* fp_gxrow = fp_gx + m0 * fp_gxs[2];
                            for (npy_intp m1 = r1; m1 < e1; m1++)
                            {
                                <T>* fp_out = (<T>*)(fp_gxrow + m1 * fp_gxs[3]);
                                /* gz where x is the maximum, else +0 (all bits cleared): no jump */
                                const <U> fp_bits = fp_gbits & -(<U>)(*(const <T>*)(fp_xrow + m1 * fp_xs[3]) == fp_max);
                                <T> fp_add;
                                memcpy(&fp_add, &fp_bits, sizeof fp_add);
                                *fp_out = *fp_out + fp_add;
                            }
                        }
                    }
                }
            }
        }
        else if (z_prod)
        {
            // will be used to hold start and end index of a region"""


def _c_code(self, node, name, inp, out, sub):
    code = THEANOS["c_code"](self, node, name, inp, out, sub)
    if not applies(self, node) or code.count(ANCHOR) != 1:
        return code
    fields = {"<X>": inp[0], "<Z>": inp[1], "<GZ>": inp[2], "<GX>": out[0],
              "<U>": {"float32": "npy_uint32", "float64": "npy_uint64"}[node.inputs[0].dtype]}
    fast, pairs, allocation = (fill(template, self, node, fields) for template in (FAST_PATH, PAIRS, ALLOCATION))
    if code.count(allocation) != 1:
        return code
    return code.replace(allocation, pairs).replace(ANCHOR, fast)


def _cache_version(self):
    return tuple(THEANOS["c_code_cache_version"](self)) + VERSION


def install():
    """Add the fast path to Theano's MaxPoolGrad (for every graph compiled afterwards)."""
    pool.MaxPoolGrad.c_code = _c_code
    pool.MaxPoolGrad.c_code_cache_version = _cache_version
