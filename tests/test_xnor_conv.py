"""XnorConv2D (kernels/xnor_conv.py): CorrMM's numbers for +1/-1 inputs and filters, bit for bit, Theano's own
gradient ops, and the layers route only binary x binary convolutions to it (docs/speed.md)."""
import numpy as np
import pytest

from plumbing.compat import T, lasagne, theano
from plumbing import dnnl_conv  # after compat: Theano's flags
import binary_connect
import convnet
from kernels import xnor_conv
from kernels.cpu import KernelError
from kernels.xnor_conv import XnorConv2D
from theano.tensor.nnet.corr import CorrMM, CorrMM_gradInputs, CorrMM_gradWeights

X, W = T.tensor4("x"), T.tensor4("w")
_functions = {}


def signs(rng, shape):
    return np.where(rng.rand(*shape) < 0.5, -1, 1).astype(np.float32)


def compiled(kind, pad):
    """One compiled forward + gradients function per (op, pad): returns (out, d loss/dx, d loss/dw) for
    loss = sum(out * R)."""
    key = (kind, pad)
    if key not in _functions:
        op = XnorConv2D(border_mode=(pad, pad)) if kind == "xnor" else CorrMM(border_mode=(pad, pad))
        R = T.tensor4("r")
        out = op(X, W)
        dx, dw = theano.grad(T.sum(out * R), [X, W])
        _functions[key] = theano.function([X, W, R], [out, dx, dw])
    return _functions[key]


# batch, channels, image (h, w), filters, kernel (kh, kw), pad
SHAPES = [(1, 1, (1, 1), 2, (3, 3), 1), (2, 3, (2, 3), 3, (3, 3), 1), (3, 64, (5, 5), 4, (3, 3), 1),
          (2, 65, (7, 4), 5, (3, 1), 2), (1, 130, (5, 5), 3, (1, 1), 0), (3, 3, (7, 4), 2, (3, 3), 0),
          (2, 130, (2, 3), 4, (3, 3), 2), (1, 65, (1, 1), 3, (1, 1), 2), (2, 1, (5, 5), 3, (3, 1), 0),
          (1, 64, (7, 4), 6, (1, 1), 1)]


@pytest.mark.parametrize("n, c, image, m, kernel, pad", SHAPES)
def test_forward_and_gradients_equal_corrmm_bit_for_bit(n, c, image, m, kernel, pad):
    rng = np.random.RandomState(n * 1000 + c * 10 + pad)
    x, w = signs(rng, (n, c) + image), signs(rng, (m, c) + kernel)
    out_shape = (n, m, image[0] + 2 * pad - kernel[0] + 1, image[1] + 2 * pad - kernel[1] + 1)
    r = rng.randn(*out_shape).astype(np.float32)
    want = compiled("corr", pad)(x, w, r)
    got = compiled("xnor", pad)(x, w, r)
    assert want[0].shape == out_shape
    for name, a, b in zip(("output", "d/dx", "d/dw"), want, got):
        assert np.array_equal(a, b), name
    assert np.array_equal(xnor_conv.xnor_conv2d(x, w, (pad, pad)), want[0])  # the NumPy + C function itself


def test_gradient_is_built_from_corrmm_gradient_ops():
    gz = T.tensor4("gz")
    for pad in (0, 1):
        theirs = CorrMM(border_mode=(pad, pad)).grad([X, W], [gz])
        ours = XnorConv2D(border_mode=(pad, pad)).grad([X, W], [gz])
        assert [type(v.owner.op) for v in ours] == [CorrMM_gradInputs, CorrMM_gradWeights]
        assert [v.owner.op for v in ours] == [v.owner.op for v in theirs]  # equal props: border, stride, dilation


def test_border_correction_by_hand():
    """3x3 filter with tap sums 1..9 on a 2x2 image, pad 1: corner (0, 0) has taps of row 0 and column 0 in the
    padding, 1+2+3+4+7 = 17; (0, 1): row 0 and column 2, 1+2+3+6+9 = 21; (1, 0): row 2 and column 0, 7+8+9+1+4 =
    29; (1, 1): 7+8+9+3+6 = 33. A 1x1 image: every tap but the centre, 45 - 5 = 40."""
    w = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    assert np.array_equal(xnor_conv.border_correction(w, (2, 2), (1, 1)), [[[17, 21], [29, 33]]])
    assert np.array_equal(xnor_conv.border_correction(w, (1, 1), (1, 1)), [[[40]]])
    assert not xnor_conv.border_correction(w, (5, 5), (0, 0)).any()
    # split over two channels: the sums over channels count
    w2 = np.concatenate([w - 1, np.ones_like(w)], axis=1)
    assert np.array_equal(xnor_conv.border_correction(w2, (2, 2), (1, 1)), [[[17, 21], [29, 33]]])


def test_tiny_case_by_hand():
    """All +1, one channel, 2x2 image, 3x3 kernel, pad 1: each output sees the 4 pixels (and 5 padded taps), 4;
    one pixel -1 makes each output 2. The centre tap negative: every output reads its own pixel there, 4 - 2 = 2;
    tap (0, 0) negative instead: only output (1, 1) reads a pixel, (0, 0), through it."""
    x, w = np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 3, 3), np.float32)
    assert np.array_equal(xnor_conv.xnor_conv2d(x, w, (1, 1)), np.full((1, 1, 2, 2), 4, np.float32))
    x[0, 0, 0, 0] = -1
    assert np.array_equal(xnor_conv.xnor_conv2d(x, w, (1, 1)), np.full((1, 1, 2, 2), 2, np.float32))
    x[0, 0, 0, 0], w[0, 0, 1, 1] = 1, -1
    assert np.array_equal(xnor_conv.xnor_conv2d(x, w, (1, 1)), [[[[2, 2], [2, 2]]]])
    w[0, 0, 1, 1], w[0, 0, 0, 0] = 1, -1   # tap (0, 0) reads pixel (y - 1, x - 1): only output (1, 1) sees (0, 0)
    assert np.array_equal(xnor_conv.xnor_conv2d(x, w, (1, 1)), [[[[4, 4], [4, 2]]]])


@pytest.mark.parametrize("kwargs", [dict(subsample=(2, 2)), dict(filter_dilation=(2, 1)),
                                    dict(border_mode=(1, -1))])
def test_unsupported_settings_are_refused(kwargs):
    with pytest.raises(KernelError):
        XnorConv2D(**kwargs)


# --------------------------------------------------------------------------- routing in the layers
HP = dict(binary=True, H=1., W_LR_scale="Glorot", epsilon=1e-4, alpha=.1)
TINY = dict(widths=(2, 3, 2), dense_units=4, image_shape=(3, 8, 8))


def tiny_convnet(family, stochastic, seed=3):
    x = T.tensor4("inputs")
    lasagne.random.set_rng(np.random.RandomState(seed))
    try:
        return convnet.build_convnet(family, x, dict(HP, stochastic=stochastic), **TINY), x
    finally:
        lasagne.random.set_rng(np.random)


def conv_ops(outputs, inputs):
    """The forward convolutions of the compiled graph: XnorConv2D, or a float one (CorrMM, or its replacement by
    oneDNN, plumbing/dnnl_conv.py, both named 'float')."""
    nodes = theano.function(inputs, outputs).maker.fgraph.toposort()
    return ["XnorConv2D" if isinstance(node.op, XnorConv2D) else "float" for node in nodes
            if isinstance(node.op, (XnorConv2D, CorrMM))
            or (isinstance(node.op, dnnl_conv.DnnlCorr) and node.op.kind == "forward")]


def test_binarynet_routes_every_conv_but_the_first(monkeypatch):
    monkeypatch.delenv("BINARYNET_XNOR_CONV", raising=False)
    net, x = tiny_convnet("binarynet", stochastic=False)
    convs = [layer for layer in lasagne.layers.get_all_layers(net) if isinstance(layer, binary_connect.Conv2DLayer)]
    assert [layer.uses_xnor() for layer in convs] == [False] + [True] * 5
    ops = conv_ops(lasagne.layers.get_output(net), [x])
    assert sorted(ops) == ["XnorConv2D"] * 5 + ["float"]


def test_switch_off_and_binaryconnect_keep_float_convolutions(monkeypatch):
    monkeypatch.setenv("BINARYNET_XNOR_CONV", "0")
    net, x = tiny_convnet("binarynet", stochastic=False)
    assert conv_ops(lasagne.layers.get_output(net), [x]) == ["float"] * 6
    monkeypatch.delenv("BINARYNET_XNOR_CONV")
    for stochastic in (False, True):   # bc-det, bc-stoch: real-valued (ReLU) inputs
        net, x = tiny_convnet("binaryconnect", stochastic)
        assert conv_ops(lasagne.layers.get_output(net, deterministic=True), [x]) == ["float"] * 6


@pytest.mark.parametrize("value, on", [("0", False), (" 0 ", False), ("1", True), ("", True), ("yes", True)])
def test_the_switch_is_off_only_for_zero(value, on, monkeypatch):
    """BINARYNET_XNOR_CONV: 0 (spaces around it ignored, as for the other switches) is off, anything else on."""
    monkeypatch.setenv("BINARYNET_XNOR_CONV", value)
    layer = binary_connect.Conv2DLayer((None, 3, 6, 6), 2, (3, 3), binary=True, stochastic=False, H=1.,
                                       binary_inputs=True, pad=1)
    assert layer.uses_xnor() is on


@pytest.mark.parametrize("change", [dict(stochastic=True), dict(H=2.), dict(binary=False), dict(stride=(2, 2)),
                                    dict(pad="same"), dict(binary_inputs=False)])
def test_layer_uses_xnor_only_where_exact(change, monkeypatch):
    monkeypatch.delenv("BINARYNET_XNOR_CONV", raising=False)
    settings = dict(binary=True, stochastic=False, H=1., binary_inputs=True, pad=1)
    exact = binary_connect.Conv2DLayer((None, 3, 6, 6), 2, (3, 3), **settings)
    assert exact.uses_xnor()
    assert not binary_connect.Conv2DLayer((None, 3, 6, 6), 2, (3, 3), **dict(settings, **change)).uses_xnor()


def test_training_steps_identical_with_the_switch_on_and_off(monkeypatch):
    """Two Adam steps of a tiny BinaryNet ConvNet from the same seed: every parameter equal, on and off."""
    rng = np.random.RandomState(0)
    data = signs(rng, (4, 3, 8, 8)) * rng.rand(4, 3, 8, 8).astype(np.float32)
    targets = signs(rng, (4, 10))
    results = {}
    for switch in ("1", "0"):
        monkeypatch.setenv("BINARYNET_XNOR_CONV", switch)
        net, x = tiny_convnet("binarynet", stochastic=False, seed=5)
        t, lr = T.matrix("targets"), T.scalar("lr")
        train_fn, val_fn, _ = binary_connect.compile_functions(net, x, t, lr)
        ops = [type(node.op) for node in train_fn.maker.fgraph.toposort()]
        assert ops.count(XnorConv2D) == (5 if switch == "1" else 0)
        losses = [train_fn(data, targets, np.float32(0.01)) for _ in range(2)]
        results[switch] = (losses, val_fn(data, targets), lasagne.layers.get_all_param_values(net))
    on, off = results["1"], results["0"]
    assert np.array_equal(on[0], off[0]) and np.array_equal(on[1], off[1])
    assert len(on[2]) == len(off[2]) and all(np.array_equal(a, b) for a, b in zip(on[2], off[2]))
    assert not all(np.array_equal(a, b) for a, b in
                   zip(on[2], lasagne.layers.get_all_param_values(tiny_convnet("binarynet", False, seed=5)[0])))
