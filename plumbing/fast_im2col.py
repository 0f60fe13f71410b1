"""Theano's CPU convolution (`CorrMM` and its two gradients) with im2col and col2im written as row copies and row
sums: the same numbers, bit for bit (docs/speed.md).

Theano's im2col visits every element of the column matrix and tests whether its image pixel lies inside the image
(else it writes 0); col2im does the same test before adding a column element into the image. The replacement
computes, once per row of the column matrix, the interval of output positions whose pixels lie inside the image
(`bna_valid_range`): rows outside the image are zero-filled with memset, inside rows are copied with memcpy (stride
1) or a strided loop without a test, and only the padded ends of a row are zeroed. col2im adds a whole inside row of
the column matrix onto its image row in one loop that g++ vectorizes (`-fvect-cost-model=dynamic`; without
-ffast-math every element gets the same single addition as before).

Why the numbers do not move: im2col copies; each element of the column matrix still receives the same pixel or
+0.0. col2im is a sum: each image element receives at most one addition per row block c of the column matrix (one
kernel position of one channel), and the blocks are still visited in Theano's order c = 0, 1, ..., so every image
element sees the same additions in the same order, starting from the same zeroed image (tests/test_fast_im2col.py
checks all three ops against Theano's own code).

`install()` (called by plumbing/compat.py) puts the two functions into the C code of every CorrMM op compiled
afterwards and adds a tag to the ops' cache version, so Theano never reuses a module built from its own loops.
BINARYNET_FAST_IM2COL=0 leaves Theano's code in place.
"""
from theano.tensor.nnet import corr

from plumbing.switches import switch_on

VERSION = ("binarynet-archive fast im2col", 2)
SWITCH = "BINARYNET_FAST_IM2COL"
# Theano's corr_gemm.c: im2col and col2im sit between these two lines (Theano 1.0.5).
FIRST_LINE = "// (borrowed from Caffe: https://github.com/BVLC/caffe/blob/master/src/caffe/util/im2col.cpp)"
LAST_LINE = "// Theano op code"

# FLOAT_T stands for the element type (npy_float or npy_double); the signatures are Theano's.
_LOOPS = """
// binarynet-archive (plumbing/fast_im2col.py): Theano's im2col and col2im as row copies and row sums.
// Output positions o = 0 .. n_out - 1 read input position o * stride - shift; [*lo, *hi) are those inside [0, size).
static inline void bna_valid_range(const int shift, const int stride, const int size, const int n_out,
                                   int* lo, int* hi) {
  int first = shift <= 0 ? 0 : (shift + stride - 1) / stride;   // smallest o with o * stride >= shift
  const int last = size - 1 + shift;                             // o * stride <= last
  int end = last < 0 ? 0 : last / stride + 1;
  if (end > n_out) end = n_out;
  if (first > end) first = end;
  *lo = first;
  *hi = end;
}

// Theano's output size of a padded, dilated, strided window along one axis (<= 0: no output).
static inline int bna_cols(const int size, const int pad_lo, const int pad_hi, const int kernel, const int dilation,
                           const int stride) {
  return (size + pad_lo + pad_hi - ((kernel - 1) * dilation + 1)) / stride + 1;
}

// Row block c of the column matrix: kernel position (h_offset, w_offset) of image channel c_im. Image row =
// h * stride_h - shift_h, image column = w * stride_w - shift_w; [h_lo, h_hi) x [w_lo, w_hi) read inside the image.
typedef struct { int c_im, shift_h, shift_w, h_lo, h_hi, w_lo, w_hi; } bna_block;

static inline bna_block bna_block_of(const int c, const int height, const int width, const int kernel_h,
                                     const int kernel_w, const int dilation_h, const int dilation_w,
                                     const int pad_hl, const int pad_wl, const int stride_h, const int stride_w,
                                     const int height_col, const int width_col) {
  bna_block b;
  const int w_offset = c % kernel_w;
  const int h_offset = (c / kernel_w) % kernel_h;
  b.c_im = c / kernel_h / kernel_w;
  b.shift_h = pad_hl - h_offset * dilation_h;
  b.shift_w = pad_wl - w_offset * dilation_w;
  bna_valid_range(b.shift_h, stride_h, height, height_col, &b.h_lo, &b.h_hi);
  bna_valid_range(b.shift_w, stride_w, width, width_col, &b.w_lo, &b.w_hi);
  return b;
}

void im2col(const FLOAT_T* data_im, const int channels,
    const int height, const int width, const int kernel_h, const int kernel_w,
    const int dilation_h, const int dilation_w,
    const int pad_hl, const int pad_hr, const int pad_wl, const int pad_wr,
    const int stride_h, const int stride_w,
    FLOAT_T* data_col) {
  const int height_col = bna_cols(height, pad_hl, pad_hr, kernel_h, dilation_h, stride_h);
  const int width_col = bna_cols(width, pad_wl, pad_wr, kernel_w, dilation_w, stride_w);
  if (height_col <= 0 || width_col <= 0) return;   // Theano's loops write nothing then
  const int channels_col = channels * kernel_h * kernel_w;
  for (int c = 0; c < channels_col; ++c) {
    const bna_block b = bna_block_of(c, height, width, kernel_h, kernel_w, dilation_h, dilation_w, pad_hl, pad_wl,
                                     stride_h, stride_w, height_col, width_col);
    const int shift_h = b.shift_h, shift_w = b.shift_w, h_lo = b.h_lo, h_hi = b.h_hi, w_lo = b.w_lo, w_hi = b.w_hi;
    FLOAT_T* col = data_col + (npy_intp)c * height_col * width_col;
    const FLOAT_T* im = data_im + (npy_intp)b.c_im * height * width;
    memset(col, 0, sizeof(FLOAT_T) * (npy_intp)h_lo * width_col);
    memset(col + (npy_intp)h_hi * width_col, 0, sizeof(FLOAT_T) * (npy_intp)(height_col - h_hi) * width_col);
    for (int h = h_lo; h < h_hi; ++h) {
      FLOAT_T* out = col + (npy_intp)h * width_col;
      const FLOAT_T* row = im + (npy_intp)(h * stride_h - shift_h) * width;
      for (int w = 0; w < w_lo; ++w) out[w] = 0;
      if (stride_w == 1) {
        if (w_hi > w_lo) memcpy(out + w_lo, row + (w_lo - shift_w), sizeof(FLOAT_T) * (w_hi - w_lo));
      } else {
        for (int w = w_lo; w < w_hi; ++w) out[w] = row[w * stride_w - shift_w];
      }
      for (int w = w_hi; w < width_col; ++w) out[w] = 0;
    }
  }
}

// dst[k] += src[k], k = 0 .. n - 1: one addition per element, vectorized.
static inline void bna_add_row(FLOAT_T* __restrict__ dst, const FLOAT_T* __restrict__ src, const int n) {
  for (int k = 0; k < n; ++k) dst[k] += src[k];
}

// As Theano's: data_im is zeroed by the caller and the columns are added into it, row block c after row block c.
void col2im(const FLOAT_T* data_col, const int channels,
    const int height, const int width, const int patch_h, const int patch_w,
    const int dilation_h, const int dilation_w,
    const int pad_hl, const int pad_hr, const int pad_wl, const int pad_wr,
    const int stride_h, const int stride_w,
    FLOAT_T* data_im) {
  const int height_col = bna_cols(height, pad_hl, pad_hr, patch_h, dilation_h, stride_h);
  const int width_col = bna_cols(width, pad_wl, pad_wr, patch_w, dilation_w, stride_w);
  if (height_col <= 0 || width_col <= 0) return;
  const int channels_col = channels * patch_h * patch_w;
  for (int c = 0; c < channels_col; ++c) {
    const bna_block b = bna_block_of(c, height, width, patch_h, patch_w, dilation_h, dilation_w, pad_hl, pad_wl,
                                     stride_h, stride_w, height_col, width_col);
    const int shift_h = b.shift_h, shift_w = b.shift_w, h_lo = b.h_lo, h_hi = b.h_hi, w_lo = b.w_lo, w_hi = b.w_hi;
    if (w_hi <= w_lo) continue;
    const FLOAT_T* col = data_col + (npy_intp)c * height_col * width_col;
    FLOAT_T* im = data_im + (npy_intp)b.c_im * height * width;
    for (int h = h_lo; h < h_hi; ++h) {
      const FLOAT_T* in = col + (npy_intp)h * width_col;
      FLOAT_T* row = im + (npy_intp)(h * stride_h - shift_h) * width;
      if (stride_w == 1) {
        bna_add_row(row + (w_lo - shift_w), in + w_lo, w_hi - w_lo);
      } else {
        for (int w = w_lo; w < w_hi; ++w) row[w * stride_w - shift_w] += in[w];
      }
    }
  }
}

"""


def loops(float_type):
    """The C source of the two functions for one element type ('npy_float' or 'npy_double')."""
    return _LOOPS.replace("FLOAT_T", float_type)


def replace_loops(code, float_type):
    """Theano's corr_gemm.c source (formatted) with its im2col and col2im replaced; unchanged if not found."""
    start, end = code.find(FIRST_LINE), code.find(LAST_LINE)
    if start < 0 or end < start:
        return code
    return code[:start] + loops(float_type) + code[end:]


THEANOS = {name: getattr(corr.BaseCorrMM, name)
           for name in ("c_support_code_apply", "c_compile_args", "c_code_cache_version")}  # kept for the tests


def _support_code_apply(self, node, nodename):
    float_type = "npy_float" if node.inputs[0].dtype == "float32" else "npy_double"
    return replace_loops(THEANOS["c_support_code_apply"](self, node, nodename), float_type)


def _compile_args(self):
    # Theano's modules compile at -O2 here (gcc.cxxflags, plumbing/compat.py), and GCC 12's -O2 vectorizes only loops
    # whose length is a known multiple of the vector length: a row's length is known at run time only.
    return THEANOS["c_compile_args"](self) + ["-fvect-cost-model=dynamic"]


def _cache_version(self):
    return tuple(THEANOS["c_code_cache_version"](self)) + VERSION


def enabled():
    """False where BINARYNET_FAST_IM2COL=0 asks for Theano's own loops."""
    return switch_on(SWITCH)


def install():
    """Swap im2col and col2im in Theano's CorrMM ops (for every graph compiled afterwards), unless switched off."""
    if not enabled():
        return
    corr.BaseCorrMM.c_support_code_apply = _support_code_apply
    corr.BaseCorrMM.c_compile_args = _compile_args
    corr.BaseCorrMM.c_code_cache_version = _cache_version
