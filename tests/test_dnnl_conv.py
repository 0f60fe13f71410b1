"""plumbing/dnnl_conv.py: oneDNN's whole-batch convolutions compute CorrMM's three sums (checked against NumPy's
float64 and against Theano's CorrMM), for explicit, asymmetric and no padding, inputs that are views, a batch that
changes between calls, and they replace CorrMM only where they compute the same thing."""
import numpy as np
import pytest

from plumbing import compat  # noqa: F401  (first: Theano's flags; it installs the replacement)
from plumbing import dnnl_conv
from plumbing.compat import T, theano
from theano.tensor.nnet.corr import CorrMM, CorrMM_gradInputs, CorrMM_gradWeights

THEANO_OPS = dnnl_conv.corrmm_mode()
# Sums of at most 5 x 3 x 3 = 45 (forward, input gradient) or 3 x 7 x 6 = 126 (weight gradient) products of
# numbers in [-1, 1], rounded in float32: far below 1e-5.
TOLERANCE = 1e-5


def padded(img, pads):
    (top, bottom), (left, right) = pads
    return np.pad(img, ((0, 0), (0, 0), (top, bottom), (left, right)))


def numpy_forward(img, kern, pads):
    """out[n, k, y, x] = sum over c, i, j of img[n, c, y + i - top, x + j - left] * kern[k, c, i, j], in float64."""
    x = padded(img.astype(np.float64), pads)
    kh, kw = kern.shape[2:]
    oh, ow = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    out = np.zeros((img.shape[0], kern.shape[0], oh, ow))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,kc->nkhw", x[:, :, i:i + oh, j:j + ow], kern[:, :, i, j].astype(np.float64))
    return out


def numpy_input_gradient(kern, gz, pads, image_hw):
    """d(sum out * gz)/d img: each output's gradient sent back through the taps that made it, padding dropped."""
    (top, bottom), (left, right) = pads
    kh, kw = kern.shape[2:]
    gx = np.zeros((gz.shape[0], kern.shape[1], image_hw[0] + top + bottom, image_hw[1] + left + right))
    for i in range(kh):
        for j in range(kw):
            gx[:, :, i:i + gz.shape[2], j:j + gz.shape[3]] += np.einsum("nkhw,kc->nchw", gz.astype(np.float64),
                                                                        kern[:, :, i, j].astype(np.float64))
    return gx[:, :, top:top + image_hw[0], left:left + image_hw[1]]


def numpy_weight_gradient(img, gz, pads, kernel_hw):
    """gw[k, c, i, j] = sum over n, y, x of img[n, c, y + i - top, x + j - left] * gz[n, k, y, x], in float64."""
    x = padded(img.astype(np.float64), pads)
    oh, ow = gz.shape[2:]
    gw = np.zeros((gz.shape[1], img.shape[1]) + tuple(kernel_hw))
    for i in range(kernel_hw[0]):
        for j in range(kernel_hw[1]):
            gw[:, :, i, j] = np.einsum("nchw,nkhw->kc", x[:, :, i:i + oh, j:j + ow], gz.astype(np.float64))
    return gw


def uniform(shape, seed):
    return np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32)


def top_gradient(pads, seed=2):
    """A gradient of the output of 5 filters 3x3 over 3 images 7x6 padded by pads."""
    (top, bottom), (left, right) = pads
    return uniform((3, 5, 7 + top + bottom - 2, 6 + left + right - 2), seed)


def compiled(kind, pads, mode=None, hw=None):
    """The CorrMM op of `kind` over two float32 4-D inputs; hw: the image (input gradient) or kernel (weight
    gradient) height and width Theano's op is given."""
    a, b = T.tensor4("a"), T.tensor4("b")
    if kind == "forward":
        out = CorrMM(border_mode=pads)(a, b)
    elif kind == "input_gradient":
        out = CorrMM_gradInputs(border_mode=pads)(a, b, T.as_tensor_variable(hw))
    else:
        out = CorrMM_gradWeights(border_mode=pads)(a, b, T.as_tensor_variable(hw))
    return theano.function([a, b], out, mode=mode)


def op_names(fn):
    return [type(node.op).__name__ for node in fn.maker.fgraph.toposort()]


PADS = [((1, 1), (1, 1)),   # the papers' 3x3 'same' convolutions
        ((0, 2), (1, 0)),   # asymmetric
        ((0, 0), (0, 0))]   # 'valid'


def test_onednn_is_installed_and_on():
    """requirements.txt installs oneDNN; the tests run without BINARYNET_CONV=corrmm."""
    assert dnnl_conv.find_onednn() is not None and compat.DNNL_CONV


def test_hand_checked_case():
    """1 image 1x2x2 [[1, 2], [3, 4]], 1 filter [[1, 0], [0, -1]], no padding: one output, 1*1 + 4*(-1) = -3.
    Its gradients with gz = 2: the image's gradient is 2 * the filter, the filter's is 2 * the image."""
    img = np.array([[[[1, 2], [3, 4]]]], np.float32)
    kern = np.array([[[[1, 0], [0, -1]]]], np.float32)
    gz = np.array([[[[2]]]], np.float32)
    assert compiled("forward", "valid")(img, kern).tolist() == [[[[-3.0]]]]
    assert compiled("input_gradient", "valid", hw=(2, 2))(kern, gz).tolist() == (2 * kern).tolist()
    assert compiled("weight_gradient", "valid", hw=(2, 2))(img, gz).tolist() == (2 * img).tolist()


@pytest.mark.parametrize("pads", PADS)
def test_forward_is_the_correlation_sum(pads):
    img, kern = uniform((3, 4, 7, 6), 0), uniform((5, 4, 3, 3), 1)
    fn = compiled("forward", pads)
    assert "DnnlCorr" in op_names(fn) and "CorrMM" not in op_names(fn)
    out = fn(img, kern)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, numpy_forward(img, kern, pads), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("pads", PADS)
def test_input_gradient_sends_each_output_back_through_its_taps(pads):
    kern = uniform((5, 4, 3, 3), 1)
    gz = top_gradient(pads)
    fn = compiled("input_gradient", pads, hw=(7, 6))
    assert "DnnlCorr" in op_names(fn)
    np.testing.assert_allclose(fn(kern, gz), numpy_input_gradient(kern, gz, pads, (7, 6)), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("pads", PADS)
def test_weight_gradient_sums_over_the_batch_and_pixels(pads):
    img = uniform((3, 4, 7, 6), 0)
    gz = top_gradient(pads)
    fn = compiled("weight_gradient", pads, hw=(3, 3))
    assert "DnnlCorr" in op_names(fn)
    np.testing.assert_allclose(fn(img, gz), numpy_weight_gradient(img, gz, pads, (3, 3)), rtol=0, atol=TOLERANCE)


def test_same_as_theanos_corrmm_through_a_gradient_with_a_flipped_filter():
    """conv2d as Lasagne builds it (filters flipped, pad 1), with the gradient of a sum: CorrMM's ops and oneDNN's
    give the same values to rounding, and the graph has no CorrMM left."""
    x, w = T.tensor4("x"), T.tensor4("w")
    out = T.nnet.conv2d(x, w, border_mode=(1, 1))
    cost = (out ** 2).sum()
    outputs = [out] + theano.grad(cost, [x, w])
    ours, theirs = theano.function([x, w], outputs), theano.function([x, w], outputs, mode=THEANO_OPS)
    assert op_names(ours).count("DnnlCorr") == 3 and not any(n.startswith("CorrMM") for n in op_names(ours))
    assert op_names(theirs).count("DnnlCorr") == 0
    img, kern = uniform((4, 6, 8, 8), 3), uniform((7, 6, 3, 3), 4)
    for a, b in zip(ours(img, kern), theirs(img, kern)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_a_batch_of_another_size_rebuilds_the_primitive():
    fn = compiled("forward", ((1, 1), (1, 1)))
    kern = uniform((5, 4, 3, 3), 1)
    for n in (3, 5, 3, 1):
        img = uniform((n, 4, 6, 6), n)
        np.testing.assert_allclose(fn(img, kern), numpy_forward(img, kern, ((1, 1), (1, 1))), rtol=0, atol=TOLERANCE)


def test_views_are_read_as_their_values():
    """A filter flipped by a view (negative strides) and an image sliced along the channels."""
    a, b = T.tensor4("a"), T.tensor4("b")
    fn = theano.function([a, b], CorrMM(border_mode=(1, 1))(a[:, ::2], b[:, :, ::-1, ::-1]))
    assert "DnnlCorr" in op_names(fn)
    img, kern = uniform((2, 8, 5, 5), 5), uniform((3, 4, 3, 3), 6)
    expected = numpy_forward(img[:, ::2], kern[:, :, ::-1, ::-1], ((1, 1), (1, 1)))
    np.testing.assert_allclose(fn(img, kern), expected, rtol=0, atol=TOLERANCE)


def test_repeated_calls_give_the_same_bits():
    fn = compiled("weight_gradient", ((1, 1), (1, 1)), hw=(3, 3))
    img, gz = uniform((16, 8, 12, 12), 7), uniform((16, 8, 12, 12), 8)
    first = fn(img, gz)
    assert all(np.array_equal(first, fn(img, gz)) for _ in range(3))


@pytest.mark.parametrize("make", [
    lambda a, b: CorrMM(border_mode="half")(a, b),                  # padding from the filter's size: left alone
    lambda a, b: CorrMM(border_mode=(1, 1), subsample=(2, 2))(a, b),
    lambda a, b: CorrMM(border_mode=(1, 1), filter_dilation=(2, 2))(a, b),
])
def test_other_convolutions_stay_theanos(make):
    a, b = T.tensor4("a"), T.tensor4("b")
    assert "CorrMM" in op_names(theano.function([a, b], make(a, b))) and \
        "DnnlCorr" not in op_names(theano.function([a, b], make(a, b)))


def test_float64_stays_theanos():
    a, b = T.tensor4("a", dtype="float64"), T.tensor4("b", dtype="float64")
    assert op_names(theano.function([a, b], CorrMM(border_mode=(1, 1))(a, b))) == ["CorrMM"]


def test_mismatched_channels_fail_with_one_line_naming_the_fix():
    fn = compiled("forward", ((1, 1), (1, 1)))
    with pytest.raises(RuntimeError, match="channels.*BINARYNET_CONV=corrmm"):
        fn(uniform((2, 4, 5, 5), 0), uniform((3, 5, 3, 3), 1))


def test_a_filter_larger_than_the_padded_image_fails_with_one_line():
    fn = compiled("forward", "valid")
    with pytest.raises(RuntimeError, match="empty image, filter or output"):
        fn(uniform((2, 4, 2, 2), 0), uniform((3, 4, 3, 3), 1))


@pytest.mark.parametrize("value, expected", [("corrmm", False), ("dnnl", True), ("", True), (" DNNL ", True)])
def test_binarynet_conv_chooses(monkeypatch, value, expected):
    monkeypatch.setenv("BINARYNET_CONV", value)
    assert dnnl_conv.wanted() is expected


def test_binarynet_conv_rejects_other_values_in_one_line(monkeypatch):
    monkeypatch.setenv("BINARYNET_CONV", "winograd")
    with pytest.raises(SystemExit, match="BINARYNET_CONV='winograd' is not a choice; use dnnl"):
        dnnl_conv.wanted()


def test_find_onednn_needs_the_header_and_the_library(tmp_path):
    assert dnnl_conv.find_onednn(str(tmp_path)) is None
    (tmp_path / "include" / "oneapi" / "dnnl").mkdir(parents=True)
    (tmp_path / "include" / "oneapi" / "dnnl" / "dnnl.h").write_text("")
    assert dnnl_conv.find_onednn(str(tmp_path)) is None
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libdnnl.so.3").write_text("")
    assert dnnl_conv.find_onednn(str(tmp_path)) == (str(tmp_path / "include"), str(tmp_path / "lib"))


# --------------------------------------------------------------------------- the weight gradient flipped in the op
SAME = ((1, 1), (1, 1))


def reversed_gradients(fn):
    """The Subtensor nodes of `fn` that reverse both spatial axes of a DnnlCorr output."""
    return [node for node in fn.maker.fgraph.toposort() if dnnl_conv.reverses_both_spatial_axes(node)
            and node.inputs[0].owner is not None and isinstance(node.inputs[0].owner.op, dnnl_conv.DnnlCorr)]


def flips(fn):
    return [node.op.flip for node in fn.maker.fgraph.toposort() if isinstance(node.op, dnnl_conv.DnnlCorr)]


def test_flipped_weight_gradient_is_the_gradient_reversed_on_both_spatial_axes():
    """flip=True gives gw[:, :, ::-1, ::-1] bit for bit, as a contiguous array. By hand: one image [[1, 2], [3, 4]]
    padded by 1, a 3x3 filter, gz = 1 at the top left output only: gw is the padded image's top-left 3x3,
    [[0, 0, 0], [0, 1, 2], [0, 3, 4]], flipped [[4, 3, 0], [2, 1, 0], [0, 0, 0]]. Then random 3x3 and 2x3 filters
    (an odd and an even number of taps)."""
    a, b = T.tensor4("a"), T.tensor4("b")
    fn = theano.function([a, b], [dnnl_conv.DnnlCorr("weight_gradient", SAME, flip=True)(a, b),
                                  dnnl_conv.DnnlCorr("weight_gradient", SAME)(a, b)])
    assert sorted(flips(fn)) == [False, True]
    img = np.array([[[[1, 2], [3, 4]]]], np.float32)
    gz = np.array([[[[1, 0], [0, 0]]]], np.float32)
    flipped, plain = fn(img, gz)
    assert plain.tolist() == [[[[0, 0, 0], [0, 1, 2], [0, 3, 4]]]]
    assert flipped.tolist() == [[[[4, 3, 0], [2, 1, 0], [0, 0, 0]]]]
    img = uniform((3, 4, 7, 6), 0)
    for kernel_hw in ((3, 3), (2, 3)):
        gz = uniform((3, 5, 7 + 2 - kernel_hw[0] + 1, 6 + 2 - kernel_hw[1] + 1), 2)
        flipped, plain = fn(img, gz)
        assert flipped.shape == (5, 4) + kernel_hw and flipped.flags.c_contiguous
        assert np.array_equal(flipped.view(np.uint32), plain[:, :, ::-1, ::-1].view(np.uint32))
        assert not np.array_equal(flipped, plain)


def test_filter_gradient_of_a_lasagne_convolution_is_flipped_in_the_op():
    """The gradient of a Lasagne-style conv2d (filter_flip=True, pad 1) with respect to its filters: Theano's graph
    reverses CorrMM's weight gradient with a view; here the DnnlCorr weight gradient has flip=True and no view reverses
    it (the only reversing view left is the forward pass's, of the filters themselves). The values are CorrMM's up to
    1e-5 of the gradient's largest entry (oneDNN sums in another order)."""
    x, w = T.tensor4("x"), T.tensor4("w")
    out = T.nnet.conv2d(x, w, border_mode=(1, 1), filter_flip=True)
    gw = theano.grad((out ** 2).sum(), w)
    ours, theirs = theano.function([x, w], gw), theano.function([x, w], gw, mode=THEANO_OPS)
    assert sorted(flips(ours)) == [False, True] and reversed_gradients(ours) == []
    assert [node.inputs[0] for node in ours.maker.fgraph.toposort()
            if dnnl_conv.reverses_both_spatial_axes(node)] == ours.maker.fgraph.inputs[1:]
    assert flips(theirs) == [] and len([node for node in theirs.maker.fgraph.toposort()
                                        if dnnl_conv.reverses_both_spatial_axes(node)]) == 2
    img, kern = uniform((2, 3, 5, 4), 3), uniform((4, 3, 3, 3), 4)
    a, b = ours(img, kern), theirs(img, kern)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


@pytest.mark.parametrize("kind", ["forward", "input_gradient"])
def test_only_the_weight_gradient_flips(kind):
    with pytest.raises(ValueError, match="flips only the weight gradient"):
        dnnl_conv.DnnlCorr(kind, SAME, flip=True)


def test_no_flip_when_the_weight_gradient_has_another_client():
    """gw[:, :, ::-1, ::-1] alone becomes the op with flip=True; returned next to gw itself, the op must still give
    gw, so the view stays (and both values are right)."""
    a, b = T.tensor4("a"), T.tensor4("b")
    gw = dnnl_conv.DnnlCorr("weight_gradient", SAME)(a, b)
    alone, both = theano.function([a, b], gw[:, :, ::-1, ::-1]), theano.function([a, b], [gw[:, :, ::-1, ::-1], gw])
    assert flips(alone) == [True] and reversed_gradients(alone) == []
    assert flips(both) == [False] and len(reversed_gradients(both)) == 1
    img, gz = uniform((3, 4, 7, 6), 0), uniform((3, 5, 7, 6), 2)
    flipped, plain = both(img, gz)
    assert np.array_equal(flipped, plain[:, :, ::-1, ::-1]) and np.array_equal(alone(img, gz), flipped)
    np.testing.assert_allclose(plain, numpy_weight_gradient(img, gz, SAME, (3, 3)), rtol=0, atol=TOLERANCE)
