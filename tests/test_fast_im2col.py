"""plumbing/fast_im2col.py: CorrMM's forward pass and both gradients with the row-copy im2col/col2im must equal
Theano's own C code bit for bit, on ragged shapes (batch 1-3, channels 1-5, odd image sizes, kernels 3x3, 1x1, 5x3)
for each padding, stride and dilation compiled below; the C source must really be replaced.

Each border mode / stride / dilation is compiled into the op's C code (one module per op), the shapes are not: one
function per setting runs all shapes."""
import os
import subprocess
import sys

import numpy as np
import pytest

from plumbing import compat, dnnl_conv, fast_im2col  # noqa: F401  (compat first: Theano's flags)
from plumbing.compat import T, theano
from theano.tensor.nnet import corr

OPS = (corr.CorrMM, corr.CorrMM_gradWeights, corr.CorrMM_gradInputs)



def theanos_code(monkeypatch):
    """Put Theano's own C code back into the CorrMM ops (for graphs compiled afterwards, until the test ends)."""
    for name, method in fast_im2col.THEANOS.items():
        monkeypatch.setattr(corr.BaseCorrMM, name, method)

# (border_mode, subsample, filter_dilation, num_groups): the papers' 3x3 pad 1 first.
SETTINGS = [
    ((1, 1), (1, 1), (1, 1), 1),
    ("valid", (1, 1), (1, 1), 1),
    ((2, 2), (2, 2), (1, 1), 1),
    ("half", (1, 1), (2, 2), 1),
    ("full", (2, 1), (1, 1), 1),
    (((1, 2), (0, 1)), (1, 2), (2, 1), 1),   # asymmetric padding
    ((0, 2), (1, 1), (1, 2), 2),             # two groups
]
# (batch, channels, height, width, filters, kernel height, kernel width)
SHAPES = [(1, 1, 5, 7, 2, 3, 3), (3, 5, 9, 6, 3, 3, 3), (2, 3, 7, 11, 4, 1, 1), (2, 2, 13, 9, 2, 5, 3),
          (3, 4, 6, 5, 2, 3, 3), (1, 2, 3, 3, 3, 1, 1), (2, 1, 2, 1, 1, 5, 3)]


def functions(border_mode, subsample, dilation, groups, dtype="float32"):
    """One compiled function: forward, gradient of the weights and gradient of the inputs, as CorrMM ops (oneDNN's
    replacement, plumbing/dnnl_conv.py, left out)."""
    forward, grad_weights, grad_inputs = (cls(border_mode, subsample, dilation, groups) for cls in OPS)
    img, kern, top = (T.tensor4(name, dtype=dtype) for name in ("img", "kern", "top"))
    kernel_shape, image_shape = T.ivector("kernel_shape"), T.ivector("image_shape")
    outputs = [forward(img, kern), grad_weights(img, top, kernel_shape), grad_inputs(kern, top, image_shape)]
    return theano.function([img, kern, top, kernel_shape, image_shape], outputs,
                           mode=dnnl_conv.corrmm_mode())


def compiled_sources(fn):
    return [node.op.c_support_code_apply(node, "node") for node in fn.maker.fgraph.toposort()
            if isinstance(node.op, corr.BaseCorrMM)]


@pytest.mark.parametrize("border_mode, subsample, dilation, groups, dtype",
                         [setting + ("float32",) for setting in SETTINGS] + [SETTINGS[0] + ("float64",)])
def test_all_three_ops_equal_theanos(border_mode, subsample, dilation, groups, dtype, monkeypatch):
    ours = functions(border_mode, subsample, dilation, groups, dtype)
    sources = compiled_sources(ours)
    assert len(sources) == 3 and all("bna_valid_range" in s for s in sources)
    theanos_code(monkeypatch)
    theirs = functions(border_mode, subsample, dilation, groups, dtype)
    assert len(compiled_sources(theirs)) == 3 and not any("bna_valid_range" in s for s in compiled_sources(theirs))
    rng = np.random.RandomState(sum(map(ord, str((border_mode, subsample, dilation)))))
    checked = 0
    for batch, channels, height, width, filters, kh, kw in SHAPES:
        channels, filters = channels * groups, filters * groups
        img = rng.standard_normal((batch, channels, height, width)).astype(dtype)
        kern = rng.standard_normal((filters, channels // groups, kh, kw)).astype(dtype)
        probe = corr.CorrMM(border_mode, subsample, dilation, groups)(T.constant(img), T.constant(kern))
        top_shape = probe.shape.eval()
        if min(top_shape) <= 0:
            continue
        top = rng.standard_normal(top_shape).astype(dtype)
        args = (img, kern, top, np.array([kh, kw], "int32"), np.array([height, width], "int32"))
        a, b = ours(*args), theirs(*args)
        for x, y in zip(a, b):
            assert x.shape == y.shape and x.dtype == y.dtype == dtype
            assert np.array_equal(x, y)
        assert a[1].shape == kern.shape and a[2].shape == img.shape and np.abs(a[2]).max() > 0
        checked += 1
    assert checked >= 4


def test_forward_matches_numpy_correlation():
    """An independent reference for the papers' case: 3x3, stride 1, pad 1, as a NumPy sum over the kernel."""
    rng = np.random.RandomState(3)
    img = rng.standard_normal((2, 3, 5, 7)).astype("float32")
    kern = rng.standard_normal((4, 3, 3, 3)).astype("float32")
    fn = functions((1, 1), (1, 1), (1, 1), 1)
    top = np.zeros((2, 4, 5, 7), "float32")
    out = fn(img, kern, top, np.array([3, 3], "int32"), np.array([5, 7], "int32"))[0]
    padded = np.pad(img.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = sum(np.einsum("bchw,fc->bfhw", padded[:, :, i:i + 5, j:j + 7], kern[:, :, i, j].astype(np.float64))
                   for i in range(3) for j in range(3))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_cache_version():
    op = corr.CorrMM((1, 1))
    ours = op.c_code_cache_version()
    assert ours[-len(fast_im2col.VERSION):] == fast_im2col.VERSION
    assert fast_im2col.THEANOS["c_code_cache_version"](op) == ours[:-len(fast_im2col.VERSION)]


@pytest.mark.parametrize("switch, installed", [("0", False), ("1", True), (None, True)])
def test_switch(switch, installed):
    """BINARYNET_FAST_IM2COL=0 leaves Theano's C code in the CorrMM ops; unset or 1 installs the row copies."""
    env = {k: v for k, v in os.environ.items() if k != fast_im2col.SWITCH}
    if switch is not None:
        env[fast_im2col.SWITCH] = switch
    probe = ("from plumbing import compat, fast_im2col; from theano.tensor.nnet import corr; "
             "print(corr.BaseCorrMM.c_support_code_apply is not fast_im2col.THEANOS['c_support_code_apply'])")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.stdout.split()[-1] == str(installed)
