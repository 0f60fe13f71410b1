"""Theano's three CPU convolution ops computed by oneDNN over the whole batch (docs/speed.md, item 22).

Theano's `CorrMM`, `CorrMM_gradInputs` and `CorrMM_gradWeights` run one image per OpenMP thread: im2col, then one
single-threaded sgemm per image. oneDNN (Intel's deep-learning library, from PyPI as `onednn-cpu-gomp`; the same
library TensorFlow runs on x86 CPUs) has direct AVX-512 / AVX2 convolutions over the whole batch, with the data
reordered into its blocked layouts (NHWC for the input gradient). With stride 1 and no dilation (every paper
ConvNet), for float32:

    forward         out[n, k, y, x] = sum over c, i, j of  img[n, c, y + i - p, x + j - q] * kern[k, c, i, j]
    input gradient   gi[n, c, y, x] = sum over k, i, j of   gz[n, k, y - i + p, x - j + q] * kern[k, c, i, j]
    weight gradient  gw[k, c, i, j] = sum over n, y, x of  img[n, c, y + i - p, x + j - q] * gz[n, k, y, x]

with zeros outside the image (p, q: the padding above and left; below and right may differ). These are CorrMM's
sums; only their order differs, so the float32 results differ from Theano's at rounding level
(tests/test_dnnl_conv.py: both against NumPy's float64). Not bit for bit, so `BINARYNET_CONV=corrmm` keeps Theano's
ops (tests/data/make_reference.py does, for its stored numbers).

`install()` (plumbing/compat.py) registers a graph optimization that replaces each float32 CorrMM op of that kind
(stride 1, no dilation, one group, shared weights, explicit or 'valid' padding) by `DnnlCorr` right after Theano
has chosen CorrMM. It is installed only where oneDNN 3's header and library are in the Python environment (Linux
on x86-64); elsewhere Theano's ops stay. Each compiled op keeps its oneDNN primitives for the last shape it ran
and builds them again when the shape changes; its blocked buffers are allocated for each call (see SUPPORT).
"""
import os
import platform
import sysconfig

import theano
import theano.tensor as T
from theano.compile import optdb
from theano.gof.opt import in2out, local_optimizer
from theano.tensor.basic import NotScalarConstantError, get_scalar_constant_value
from theano.tensor.nnet.corr import CorrMM, CorrMM_gradInputs, CorrMM_gradWeights
from theano.tensor.subtensor import get_idx_list

from plumbing.switches import choice

VERSION = 5
OPT_NAME = "binarynet_dnnl_conv"
KINDS = ("forward", "input_gradient", "weight_gradient")
# After Theano's conv optimizations (specialize_device, 48.6), before elementwise fusion (49).
OPT_POSITION = 48.65
FLIP_NAME, FLIP_POSITION = "binarynet_dnnl_flip", 48.66


def find_onednn(prefix=None):
    """(include dir, lib dir) of oneDNN 3 in the Python environment (pip puts the wheels' files under its data
    prefix), or None where it is not installed."""
    prefix = prefix or sysconfig.get_paths()["data"]
    include, lib = os.path.join(prefix, "include"), os.path.join(prefix, "lib")
    if os.path.exists(os.path.join(include, "oneapi", "dnnl", "dnnl.h")) and \
            os.path.exists(os.path.join(lib, "libdnnl.so.3")):
        return include, lib
    return None


def wanted():
    """BINARYNET_CONV: 'dnnl' (the default) or 'corrmm' (Theano's ops). oneDNN needs x86-64 Linux and a C compiler."""
    return (choice("BINARYNET_CONV", "dnnl", "corrmm") == "dnnl" and platform.system() == "Linux"
            and platform.machine() in ("x86_64", "AMD64") and bool(theano.config.cxx))


def explicit_pads(border_mode):
    """((top, bottom), (left, right)) of a CorrMM border_mode, or None for 'half' and 'full' (left to CorrMM)."""
    if border_mode == "valid":
        return ((0, 0), (0, 0))
    if isinstance(border_mode, tuple) and all(isinstance(pair, tuple) for pair in border_mode):
        return tuple((int(a), int(b)) for a, b in border_mode)
    return None


# The C code shared by the three kinds. A state holds the primitive for one shape and, for each of its three
# arguments (two inputs, one output), a memory on the NumPy array's data, the primitive's own (blocked) memory and
# the reorder between them; where the primitive takes the plain layout, the two memories are one.
SUPPORT = r"""
typedef struct {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    npy_intp key[8];
    dnnl_primitive_t conv;
    dnnl_memory_t plain[3], blocked[3];
    dnnl_primitive_t reorder[3];
    size_t bytes[3];  /* size of each blocked memory, allocated for each call */
} bn_dnnl_state;

static void bn_dnnl_release(bn_dnnl_state *s)
{
    if (s->conv) dnnl_primitive_destroy(s->conv);
    for (int r = 0; r < 3; r++) {
        if (s->reorder[r]) dnnl_primitive_destroy(s->reorder[r]);
        if (s->blocked[r] && s->blocked[r] != s->plain[r]) dnnl_memory_destroy(s->blocked[r]);
        if (s->plain[r]) dnnl_memory_destroy(s->plain[r]);
        s->reorder[r] = NULL; s->blocked[r] = s->plain[r] = NULL; s->bytes[r] = 0;
    }
    s->conv = NULL;
    memset(s->key, 0, sizeof s->key);
}

#define BN_DNNL(call) do { if ((call) != dnnl_success) return #call; } while (0)

/* Argument r of the primitive: a memory on the user's plain array (data set at each call) and, where the
   primitive wants another layout, a memory in that layout and the reorder (into it for inputs, out of it for the
   output). The blocked memory's buffer is allocated for each call and freed after it, so all ops of a function
   share the same freed heap memory (plumbing/compat.py keeps freed memory mapped) instead of each keeping its own. */
static const char *bn_dnnl_argument(bn_dnnl_state *s, int r, const dnnl_dims_t dims, dnnl_format_tag_t tag,
                                    const_dnnl_primitive_desc_t pd, dnnl_query_t query, int is_output)
{
    dnnl_memory_desc_t plain_md;
    BN_DNNL(dnnl_memory_desc_create_with_tag(&plain_md, 4, dims, dnnl_f32, tag));
    const_dnnl_memory_desc_t want = dnnl_primitive_desc_query_md(pd, query, 0);
    dnnl_status_t made = dnnl_memory_create(&s->plain[r], plain_md, s->engine, DNNL_MEMORY_NONE);
    int same = want && dnnl_memory_desc_equal(plain_md, want);
    if (made == dnnl_success && !same && want) {
        dnnl_primitive_desc_t rpd;
        made = dnnl_memory_create(&s->blocked[r], want, s->engine, DNNL_MEMORY_NONE);
        s->bytes[r] = dnnl_memory_desc_get_size(want);
        if (made == dnnl_success)
            made = is_output ? dnnl_reorder_primitive_desc_create(&rpd, want, s->engine, plain_md, s->engine, NULL)
                             : dnnl_reorder_primitive_desc_create(&rpd, plain_md, s->engine, want, s->engine, NULL);
        if (made == dnnl_success) {
            made = dnnl_primitive_create(&s->reorder[r], rpd);
            dnnl_primitive_desc_destroy(rpd);
        }
    } else {
        s->blocked[r] = s->plain[r];
    }
    dnnl_memory_desc_destroy(plain_md);
    return made == dnnl_success ? NULL : "creating a memory or reorder";
}

/* Build the primitive of `kind` (0 forward, 1 input gradient, 2 weight gradient) for images (N, C, H, W),
   filters (K, C, kh, kw) and outputs (N, K, oh, ow), stride 1, padding (top, left) / (bottom, right). */
static const char *bn_dnnl_build(bn_dnnl_state *s, int kind, const dnnl_dims_t img, const dnnl_dims_t kern,
                                 const dnnl_dims_t top, const dnnl_dims_t pad_l, const dnnl_dims_t pad_r)
{
    static const dnnl_dims_t strides = {1, 1}, dilates = {0, 0};
    const char *err = NULL;
    bn_dnnl_release(s);
    if (!s->engine) {
        BN_DNNL(dnnl_engine_create(&s->engine, dnnl_cpu, 0));
        BN_DNNL(dnnl_stream_create(&s->stream, s->engine, dnnl_stream_default_flags));
    }
    dnnl_memory_desc_t img_md, kern_md, top_md;
    /* oneDNN picks its layouts ("any": the blocked one), except for the input gradient: in the NHWC layout it runs
       its brgemm kernel there, 7 % faster per call with the reorders on the CIFAR-10 layers (docs/speed.md, 23). */
    const dnnl_format_tag_t images = kind == 1 ? dnnl_nhwc : dnnl_format_tag_any;
    BN_DNNL(dnnl_memory_desc_create_with_tag(&img_md, 4, img, dnnl_f32, images));
    BN_DNNL(dnnl_memory_desc_create_with_tag(&kern_md, 4, kern, dnnl_f32, dnnl_format_tag_any));
    BN_DNNL(dnnl_memory_desc_create_with_tag(&top_md, 4, top, dnnl_f32, images));
    dnnl_primitive_desc_t fwd = NULL, pd = NULL;
    dnnl_status_t st = dnnl_convolution_forward_primitive_desc_create(
        &fwd, s->engine, dnnl_forward_training, dnnl_convolution_direct, img_md, kern_md, NULL, top_md,
        strides, dilates, pad_l, pad_r, NULL);
    if (st == dnnl_success && kind == 0) {
        pd = fwd;
        fwd = NULL;
    } else if (st == dnnl_success && kind == 1) {
        st = dnnl_convolution_backward_data_primitive_desc_create(
            &pd, s->engine, dnnl_convolution_direct, img_md, kern_md, top_md, strides, dilates, pad_l, pad_r,
            fwd, NULL);
    } else if (st == dnnl_success) {
        st = dnnl_convolution_backward_weights_primitive_desc_create(
            &pd, s->engine, dnnl_convolution_direct, img_md, kern_md, NULL, top_md, strides, dilates, pad_l, pad_r,
            fwd, NULL);
    }
    dnnl_memory_desc_destroy(img_md);
    dnnl_memory_desc_destroy(kern_md);
    dnnl_memory_desc_destroy(top_md);
    if (fwd) dnnl_primitive_desc_destroy(fwd);
    if (st != dnnl_success) return "creating the convolution's primitive descriptor";
    /* Arguments in the order of the op's inputs and output. */
    if (kind == 0) {
        err = bn_dnnl_argument(s, 0, img, dnnl_nchw, pd, dnnl_query_src_md, 0);
        if (!err) err = bn_dnnl_argument(s, 1, kern, dnnl_oihw, pd, dnnl_query_weights_md, 0);
        if (!err) err = bn_dnnl_argument(s, 2, top, dnnl_nchw, pd, dnnl_query_dst_md, 1);
    } else if (kind == 1) {
        err = bn_dnnl_argument(s, 0, kern, dnnl_oihw, pd, dnnl_query_weights_md, 0);
        if (!err) err = bn_dnnl_argument(s, 1, top, dnnl_nchw, pd, dnnl_query_diff_dst_md, 0);
        if (!err) err = bn_dnnl_argument(s, 2, img, dnnl_nchw, pd, dnnl_query_diff_src_md, 1);
    } else {
        err = bn_dnnl_argument(s, 0, img, dnnl_nchw, pd, dnnl_query_src_md, 0);
        if (!err) err = bn_dnnl_argument(s, 1, top, dnnl_nchw, pd, dnnl_query_diff_dst_md, 0);
        if (!err) err = bn_dnnl_argument(s, 2, kern, dnnl_oihw, pd, dnnl_query_diff_weights_md, 1);
    }
    if (!err && dnnl_primitive_create(&s->conv, pd) != dnnl_success) err = "creating the convolution";
    dnnl_primitive_desc_destroy(pd);
    if (err) bn_dnnl_release(s);
    return err;
}

static void bn_dnnl_reorder(bn_dnnl_state *s, int r, dnnl_memory_t from, dnnl_memory_t to, dnnl_status_t *st)
{
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    if (s->reorder[r] && *st == dnnl_success) *st = dnnl_primitive_execute(s->reorder[r], s->stream, 2, args);
}

/* One call: the two inputs' and the output's data (C-contiguous float32), argument ids in that order. */
static const char *bn_dnnl_run(bn_dnnl_state *s, void *in0, void *in1, void *out, const int *arg_ids)
{
    void *data[3] = {in0, in1, out}, *own[3] = {NULL, NULL, NULL};
    dnnl_status_t st = dnnl_success;
    for (int r = 0; r < 3 && st == dnnl_success; r++) {
        st = dnnl_memory_set_data_handle(s->plain[r], data[r]);
        if (s->bytes[r] && st == dnnl_success) {
            own[r] = aligned_alloc(64, (s->bytes[r] + 63) / 64 * 64);
            st = own[r] ? dnnl_memory_set_data_handle(s->blocked[r], own[r]) : dnnl_out_of_memory;
        }
    }
    bn_dnnl_reorder(s, 0, s->plain[0], s->blocked[0], &st);
    bn_dnnl_reorder(s, 1, s->plain[1], s->blocked[1], &st);
    dnnl_exec_arg_t args[3] = {{arg_ids[0], s->blocked[0]}, {arg_ids[1], s->blocked[1]}, {arg_ids[2], s->blocked[2]}};
    if (st == dnnl_success) st = dnnl_primitive_execute(s->conv, s->stream, 3, args);
    bn_dnnl_reorder(s, 2, s->blocked[2], s->plain[2], &st);
    if (st == dnnl_success) st = dnnl_stream_wait(s->stream);
    for (int r = 0; r < 3; r++)
        free(own[r]);
    return st == dnnl_success ? NULL : "running the convolution";
}
"""

# Per kind: how the image, filter and output dims come from the two inputs (a, b), and oneDNN's argument ids.
# a, b: forward (img, kern); input gradient (kern, topgrad); weight gradient (img, topgrad). pt, pb, pl, pr: pads.
DIMS = {
    "forward": ("img[0] = a[0]; img[1] = a[1]; img[2] = a[2]; img[3] = a[3];",
                "kern[0] = b[0]; kern[1] = b[1]; kern[2] = b[2]; kern[3] = b[3];",
                "top[0] = a[0]; top[1] = b[0]; top[2] = a[2] + pt + pb - b[2] + 1; top[3] = a[3] + pl + pr - b[3] + 1;",
                "DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST", "top"),
    "input_gradient": ("img[0] = b[0]; img[1] = a[1]; img[2] = b[2] + a[2] - 1 - pt - pb; "
                       "img[3] = b[3] + a[3] - 1 - pl - pr;",
                       "kern[0] = a[0]; kern[1] = a[1]; kern[2] = a[2]; kern[3] = a[3];",
                       "top[0] = b[0]; top[1] = b[1]; top[2] = b[2]; top[3] = b[3];",
                       "DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_SRC", "img"),
    "weight_gradient": ("img[0] = a[0]; img[1] = a[1]; img[2] = a[2]; img[3] = a[3];",
                        "kern[0] = b[1]; kern[1] = a[1]; kern[2] = a[2] + pt + pb - b[2] + 1; "
                        "kern[3] = a[3] + pl + pr - b[3] + 1;",
                        "top[0] = b[0]; top[1] = b[1]; top[2] = b[2]; top[3] = b[3];",
                        "DNNL_ARG_SRC, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_WEIGHTS", "kern"),
}

CODE = r"""
{
    const npy_intp pt = <PT>, pb = <PB>, pl = <PL>, pr = <PR>;
    PyArrayObject *ca = PyArray_GETCONTIGUOUS(<A>), *cb = PyArray_GETCONTIGUOUS(<B>);
    const npy_intp *a = PyArray_DIMS(ca), *b = PyArray_DIMS(cb);
    dnnl_dims_t img, kern, top, pad_l = {pt, pl}, pad_r = {pb, pr};
    <IMG>
    <KERN>
    <TOP>
    const dnnl_dim_t *out_dims = <OUT_DIMS>;
    const int arg_ids[3] = {<ARG_IDS>};
    const char *err = NULL;
    if (<KIND> == 0 && a[1] != b[1]) err = "the image's channels and the filters' differ";
    if (<KIND> == 1 && a[0] != b[1]) err = "the filters' count and the gradient's channels differ";
    if (<KIND> == 2 && a[0] != b[0]) err = "the images' and the gradient's batch sizes differ";
    for (int d = 0; d < 4 && !err; d++)
        if (img[d] <= 0 || kern[d] <= 0 || top[d] <= 0) err = "the shapes give an empty image, filter or output";
    npy_intp out_shape[4] = {out_dims[0], out_dims[1], out_dims[2], out_dims[3]};
    if (!err && !(<OUT> && PyArray_IS_C_CONTIGUOUS(<OUT>) && PyArray_DIMS(<OUT>)[0] == out_shape[0] &&
                  PyArray_DIMS(<OUT>)[1] == out_shape[1] && PyArray_DIMS(<OUT>)[2] == out_shape[2] &&
                  PyArray_DIMS(<OUT>)[3] == out_shape[3])) {
        Py_XDECREF(<OUT>);
        <OUT> = (PyArrayObject*)PyArray_EMPTY(4, out_shape, NPY_FLOAT32, 0);
        if (!<OUT>) err = "allocating the output";
    }
    npy_intp key[8] = {img[0], img[1], img[2], img[3], kern[0], kern[2], kern[3], 1};
    if (!err && memcmp(key, <STATE>.key, sizeof key) != 0) {
        err = bn_dnnl_build(&<STATE>, <KIND>, img, kern, top, pad_l, pad_r);
        if (!err) memcpy(<STATE>.key, key, sizeof key);
    }
    if (!err) {
        Py_BEGIN_ALLOW_THREADS
        err = bn_dnnl_run(&<STATE>, PyArray_DATA(ca), PyArray_DATA(cb), PyArray_DATA(<OUT>), arg_ids);
        Py_END_ALLOW_THREADS
    }
    if (!err && <FLIP>) {
        /* Both spatial axes reversed = each filter's kh*kw block reversed in row-major order. */
        const npy_intp block = out_dims[2] * out_dims[3], blocks = out_dims[0] * out_dims[1];
        float *w = (float*)PyArray_DATA(<OUT>);
        for (npy_intp b = 0; b < blocks; b++)
            for (npy_intp t = 0, u = block - 1; t < u; t++, u--) {
                const float keep = w[b * block + t];
                w[b * block + t] = w[b * block + u];
                w[b * block + u] = keep;
            }
    }
    Py_DECREF(ca);
    Py_DECREF(cb);
    if (err) {
        PyErr_Format(PyExc_RuntimeError, "oneDNN convolution (<KIND_NAME>, image %ldx%ldx%ldx%ld, filters "
                     "%ldx%ldx%ldx%ld): %s failed; BINARYNET_CONV=corrmm runs Theano's CorrMM instead",
                     (long)img[0], (long)img[1], (long)img[2], (long)img[3],
                     (long)kern[0], (long)kern[1], (long)kern[2], (long)kern[3], err);
        <FAIL>
    }
}
"""


class DnnlCorr(theano.Op):
    """CorrMM (kind 'forward'), CorrMM_gradInputs ('input_gradient') or CorrMM_gradWeights ('weight_gradient')
    with stride 1 and padding pads = ((top, bottom), (left, right)), computed by oneDNN; the module docstring has
    the sums. Inputs as CorrMM's without the shape: (img, kern), (kern, topgrad), (img, topgrad).
    flip=True (weight gradient only): the result with both spatial axes reversed, gw[:, :, ::-1, ::-1], written
    contiguous (the gradient of a Lasagne layer's filters, which Theano's convolution flips; `local_dnnl_flip`)."""
    __props__ = ("kind", "pads", "flip")

    def __init__(self, kind, pads, flip=False):
        if kind not in KINDS:
            raise ValueError(f"DnnlCorr kind must be one of {KINDS}, got {kind!r}")
        if flip and kind != "weight_gradient":
            raise ValueError("DnnlCorr flips only the weight gradient")
        self.kind, self.pads, self.flip = kind, tuple((int(a), int(b)) for a, b in pads), bool(flip)

    def make_node(self, a, b):
        a, b = T.as_tensor_variable(a), T.as_tensor_variable(b)
        for v in (a, b):
            if v.ndim != 4 or v.dtype != "float32":
                raise TypeError(f"DnnlCorr needs float32 4-D tensors, got {v.type}")
        # The broadcastable patterns of CorrMM, CorrMM_gradInputs and CorrMM_gradWeights.
        first, second = {"forward": (a.broadcastable[0], b.broadcastable[0]),
                         "input_gradient": (b.broadcastable[0], a.broadcastable[1]),
                         "weight_gradient": (b.broadcastable[1], a.broadcastable[1])}[self.kind]
        return theano.Apply(self, [a, b], [T.TensorType("float32", (first, second, False, False))()])

    def infer_shape(self, node, shapes):
        a, b = shapes
        (pt, pb), (pl, pr) = self.pads
        if self.kind == "forward":
            return [(a[0], b[0], a[2] + pt + pb - b[2] + 1, a[3] + pl + pr - b[3] + 1)]
        if self.kind == "input_gradient":
            return [(b[0], a[1], b[2] + a[2] - 1 - pt - pb, b[3] + a[3] - 1 - pl - pr)]
        return [(b[1], a[1], a[2] + pt + pb - b[2] + 1, a[3] + pl + pr - b[3] + 1)]

    def perform(self, node, inputs, outputs):
        raise NotImplementedError("DnnlCorr runs in C only; BINARYNET_CONV=corrmm runs Theano's CorrMM")

    def c_headers(self):
        return ["<oneapi/dnnl/dnnl.h>", "<stdlib.h>", "<string.h>"]

    def c_header_dirs(self):
        return [find_onednn()[0]]

    def c_lib_dirs(self):
        return [find_onednn()[1]]

    def c_libraries(self):
        return ["dnnl"]

    def c_compile_args(self):
        return ["-Wl,-rpath," + find_onednn()[1]]

    def c_support_code(self):
        return SUPPORT

    def c_support_code_struct(self, node, name):
        return f"bn_dnnl_state state_{name};"

    def c_init_code_struct(self, node, name, sub):
        return f"memset(&state_{name}, 0, sizeof state_{name});"

    def c_cleanup_code_struct(self, node, name):
        return (f"bn_dnnl_release(&state_{name});\n"
                f"if (state_{name}.stream) dnnl_stream_destroy(state_{name}.stream);\n"
                f"if (state_{name}.engine) dnnl_engine_destroy(state_{name}.engine);")

    def c_code(self, node, name, inputs, outputs, sub):
        (pt, pb), (pl, pr) = self.pads
        img, kern, top, arg_ids, out_dims = DIMS[self.kind]
        fields = {"<PT>": str(pt), "<PB>": str(pb), "<PL>": str(pl), "<PR>": str(pr),
                  "<IMG>": img, "<KERN>": kern, "<TOP>": top, "<ARG_IDS>": arg_ids, "<OUT_DIMS>": out_dims,
                  "<KIND>": str(KINDS.index(self.kind)), "<KIND_NAME>": self.kind,
                  "<FLIP>": str(int(self.flip)), "<A>": inputs[0], "<B>": inputs[1], "<OUT>": outputs[0],
                  "<STATE>": f"state_{name}",
                  "<FAIL>": sub["fail"]}
        code = CODE
        for field, value in fields.items():
            code = code.replace(field, value)
        return code

    def c_code_cache_version(self):
        return (VERSION,)


REPLACED = {CorrMM: "forward", CorrMM_gradInputs: "input_gradient", CorrMM_gradWeights: "weight_gradient"}


@local_optimizer(list(REPLACED))
def local_dnnl_corr(node):
    """Replace a CorrMM op that oneDNN computes the same way (see the module docstring) by DnnlCorr."""
    op = node.op
    kind = REPLACED.get(type(op))
    if kind is None:
        return False
    pads = explicit_pads(op.border_mode)
    if (pads is None or tuple(op.subsample) != (1, 1) or tuple(op.filter_dilation) != (1, 1)
            or op.num_groups != 1 or op.unshared or node.outputs[0].dtype != "float32"
            or any(v.ndim != 4 or v.dtype != "float32" for v in node.inputs[:2])):
        return False
    new = DnnlCorr(kind, pads)(*node.inputs[:2])
    if new.type != node.outputs[0].type:
        return False
    return [new]


def reverses_both_spatial_axes(node):
    """Whether the Subtensor `node` is x[:, :, ::-1, ::-1] of a 4-D x."""
    if not isinstance(node.op, T.Subtensor) or node.inputs[0].ndim != 4:
        return False
    index = get_idx_list(node.inputs, node.op.idx_list)
    if len(index) != 4 or not all(isinstance(i, slice) for i in index):
        return False

    def constant(v):
        try:
            return None if v is None else int(get_scalar_constant_value(v))
        except NotScalarConstantError:
            return "unknown"
    return all((constant(i.start), constant(i.stop), constant(i.step)) == (None, None, step)
               for i, step in zip(index, (None, None, -1, -1)))


@local_optimizer([T.Subtensor])
def local_dnnl_flip(node):
    """x[:, :, ::-1, ::-1] of a DnnlCorr weight gradient used nowhere else -> the op with flip=True: one contiguous
    array instead of a view with negative strides, which Theano's elementwise loops walk element by element."""
    if not reverses_both_spatial_axes(node):
        return False
    source = node.inputs[0]
    op = getattr(source.owner, "op", None)
    if not (isinstance(op, DnnlCorr) and op.kind == "weight_gradient" and not op.flip
            and len(source.clients) == 1):
        return False
    new = DnnlCorr(op.kind, op.pads, flip=True)(*source.owner.inputs)
    return [new] if new.type == node.outputs[0].type else False


def corrmm_mode():
    """Theano's default mode without the replacement: a function compiled with it keeps Theano's CorrMM ops."""
    return theano.compile.get_default_mode().excluding(OPT_NAME, FLIP_NAME)


def install():
    """Register the replacement in Theano's optimizer (for every graph compiled afterwards), where wanted() and
    oneDNN is installed. Returns whether it was registered. Compile with `mode=corrmm_mode()` to keep Theano's ops
    in one function."""
    if not wanted() or find_onednn() is None:
        return False
    if OPT_NAME not in optdb.__db__:
        optdb.register(OPT_NAME, in2out(local_dnnl_corr), OPT_POSITION, "fast_run")
        optdb.register(FLIP_NAME, in2out(local_dnnl_flip), FLIP_POSITION, "fast_run")
    return True
