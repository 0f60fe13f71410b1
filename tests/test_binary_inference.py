"""Tests of binary_inference.py: Theano run-time inference, folded thresholds and the packed model.

References are independent: a float64 NumPy sign-network, hand-computed thresholds, and brute force over every
integer pre-activation. Inputs are multiples of 1/64 so that every float32 sum in the first layer is exact and
all products agree to the bit whatever the summation order.
"""
import os

import numpy as np
import pytest

import binary_inference as bi
from plumbing import cli

WIDTHS = (784, 96, 80, 64, 10)  # hidden widths not multiples of 64: exercises the padding bits


def random_blocks(rng, widths=WIDTHS, X=None):
    """Random model in the original layout, some gamma < 0, two gamma == 0, weights exactly 0 in one row.

    BN statistics are realistic: mean and inv_std are those of the pre-activations on inputs X (random ones
    if not given), jittered, as after training."""
    X = dyadic_inputs(rng, 200, widths[0]) if X is None else X
    blocks, a = [], X.astype(np.float64)
    for k, (fan_in, units) in enumerate(zip(widths[:-1], widths[1:])):
        W = rng.uniform(-1, 1, (fan_in, units))
        W[0, :] = 0.0  # sign(0) = +1 for weights too
        b = rng.normal(0, 0.5, units)
        x = a @ np.where(W >= 0, 1.0, -1.0) + b
        gamma = rng.normal(1.0, 0.5, units)
        gamma[rng.rand(units) < 0.2] *= -1
        beta = rng.normal(0.0, 0.3, units)
        if units > 4:
            gamma[1], beta[1] = 0.0, -0.3  # constant -1
            gamma[2], beta[2] = 0.0, 0.0   # constant BN output 0 -> +1
        mean = x.mean(axis=0) + rng.normal(0, 0.1, units) * x.std(axis=0)
        inv_std = rng.uniform(0.8, 1.2, units) / np.sqrt(x.var(axis=0) + 1e-4)
        block = bi.Block(*[v.astype(np.float32) for v in (W, b, beta, gamma, mean, inv_std)])
        blocks.append(block)
        a = np.where((x - block.mean) * (block.gamma.astype(np.float64) * block.inv_std) + block.beta >= 0, 1.0, -1.0)
    return blocks


def dyadic_inputs(rng, n, fan_in=WIDTHS[0]):
    return (rng.randint(-64, 65, (n, fan_in)) / 64.0).astype(np.float32)


def reference_predictions(blocks, X):
    """float64 sign network of ORIGINALS.md §4.5, written independently of binary_inference."""
    a = X.astype(np.float64)
    for k, block in enumerate(blocks):
        x = a @ np.where(block.W >= 0, 1.0, -1.0) + block.b
        y = (x - block.mean) * (block.gamma.astype(np.float64) * block.inv_std) + block.beta
        a = np.where(y >= 0, 1.0, -1.0) if k < len(blocks) - 1 else y
    return np.argmax(a, axis=1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.RandomState(7)
    X = dyadic_inputs(rng, 300)
    blocks = random_blocks(rng, WIDTHS, X)
    path = str(tmp_path_factory.mktemp("model") / "model.npz")
    bi.save_blocks(blocks, path)
    return {"blocks": blocks, "path": path, "X": X, "reference": reference_predictions(blocks, X)}


@pytest.fixture(scope="module")
def packed(model, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("packed") / "model.packed.npz")
    sizes = bi.export_packed(model["path"], out)
    return {"path": out, "sizes": sizes}


# ---------------------------------------------------------------------------------------------------- loading

def test_load_blocks_round_trip(model):
    blocks = bi.load_blocks(model["path"])
    assert [b.W.shape for b in blocks] == [(784, 96), (96, 80), (80, 64), (64, 10)]
    with np.load(model["path"]) as data:
        assert sorted(data.files, key=lambda s: int(s[4:])) == [f"arr_{i}" for i in range(24)]
        np.testing.assert_array_equal(blocks[2].gamma, data["arr_15"])  # block 3: arr_12..17, gamma 4th
    assert blocks[0].gamma[2] == 0.0 and (blocks[1].gamma < 0).any()
    assert len(np.unique(model["reference"])) >= 6  # the random model is not a constant classifier


# ---------------------------------------------------------------------------------------- Theano inference (a)

def test_each_kernel_matches_float64_reference(model, capsys):
    labels = model["reference"].copy()
    labels[:30] = (labels[:30] + 1) % 10  # 10 % error by construction
    results = bi.evaluate(model["blocks"], model["X"], labels, kernels=("blas", "baseline", "xnor"))
    for kernel in ("blas", "baseline", "xnor"):
        np.testing.assert_array_equal(results[kernel]["predictions"], model["reference"])
        assert results[kernel]["error"] == pytest.approx(10.0)
    out = capsys.readouterr().out
    assert "identical predictions" in out and "xnor" in out


def test_mismatching_kernels_are_reported_loudly(capsys):
    results = {"blas": {"predictions": np.array([1, 2, 3])}, "xnor": {"predictions": np.array([1, 2, 4])}}
    with pytest.raises(bi.InferenceError, match="xnor differs from blas on 1 examples"):
        bi._check_identical(results)
    assert "PREDICTIONS DIFFER" in capsys.readouterr().out


def test_unknown_kernel_and_wrong_input_width(model):
    with pytest.raises(bi.InferenceError, match="unknown kernel"):
        bi.evaluate(model["blocks"], model["X"], model["reference"], kernels="blas,cublas")
    with pytest.raises(bi.InferenceError, match="expects 784"):
        bi.evaluate(model["blocks"], model["X"][:, :100], model["reference"], kernels="blas")


def test_gpu_device_without_gpu_is_one_clear_error(model, capsys):
    usable = bi.resolve_device("auto") == "gpu"
    if usable:  # a GPU host: the 'gpu' device must then be accepted
        assert bi.resolve_device("gpu") == "gpu"
    else:
        assert "running on the CPU" in capsys.readouterr().out
        with pytest.raises(bi.InferenceError, match="--device gpu: no usable GPU"):
            bi.resolve_device("gpu")


# ------------------------------------------------------------------------------------------ folded thresholds (b, c)

def test_fold_threshold_hand_computed_units():
    # b = 0.5, mean = 3, gamma·inv_std = 2·0.25 = 0.5:  BN = (s + 0.5 − 3)·0.5 + beta
    n = 10
    bias = [0.5, 0.5, 0.5, 0.5, 0.5]
    mean = [3.0, 3.0, 2.5, 3.0, 3.0]
    scale = [0.5, -0.5, 0.5, 0.0, 0.0]
    beta = [-1.0, -1.0, 0.0, -0.3, 0.0]
    direction, tau = bi.fold_threshold(bias, mean, scale, beta, n)
    # unit 0: (s − 2.5)·0.5 − 1 >= 0  <=>  s >= 4.5  <=>  s >= 5
    # unit 1: −(s − 2.5)·0.5 − 1 >= 0  <=>  s <= 0.5  <=>  −s >= 0
    # unit 2: (s − 2)·0.5 >= 0  <=>  s >= 2  (BN exactly 0 at s = 2 counts as +1)
    # unit 3: constant −0.3 -> never +1 (tau = n + 1);  unit 4: constant 0 -> always +1 (tau = −n)
    np.testing.assert_array_equal(direction, [1, -1, 1, 1, 1])
    np.testing.assert_array_equal(tau, [5, 0, 2, n + 1, -n])


def test_thresholds_agree_with_batch_norm_on_every_integer(model):
    for block in model["blocks"][1:3]:
        n = block.W.shape[0]
        direction, tau = bi.fold_threshold(block.b, block.mean, block.scale, block.beta, n)
        s = np.arange(-n, n + 1, dtype=np.float32)[:, None]
        bn = ((s + block.b) - block.mean) * block.scale + block.beta  # float32, §1.7.2 order
        np.testing.assert_array_equal(direction * s >= tau, bn >= 0)
        # Exact-arithmetic derivation: tau = ceil(mean − b − beta/g) for g > 0, −floor(...) for g < 0.
        g = block.gamma.astype(np.float64) * block.inv_std
        boundary = block.mean - block.b - block.beta / np.where(g == 0, 1, g)
        expected = np.clip(np.where(g > 0, np.ceil(boundary), -np.floor(boundary)), -n, n + 1)
        clear = (g != 0) & (np.abs(boundary - np.round(boundary)) > 1e-3)  # not within float rounding of an integer
        assert clear.sum() >= len(g) - 5
        np.testing.assert_array_equal(tau[clear], expected[clear])
        assert set(direction[g == 0]) == {1} and set(tau[g == 0]) == {-n, n + 1}


def test_preactivation_exactly_at_threshold_gives_plus_one(tmp_path):
    """Hidden unit 0 of block 2 has BN output exactly 0 for some examples; the output layer reads it out:
    class 0 wins iff that unit is +1 (output columns differ only in that unit's weight)."""
    rng = np.random.RandomState(3)
    X = dyadic_inputs(rng, 200)
    blocks = random_blocks(rng, (784, 64, 64, 2), X)
    first = blocks[0]
    first.gamma[1:3] = 1.0  # no constant units before the unit under test: only it sits exactly at 0
    a1 = np.where(bi.batch_norm_float32(X @ bi.sign_numpy(first.W), first.b, first.mean, first.scale,
                                        first.beta) >= 0, 1.0, -1.0)
    s = a1 @ bi.sign_numpy(blocks[1].W[:, 0])
    values, counts = np.unique(s, return_counts=True)
    s0 = values[np.argmax(counts)]
    hidden = blocks[1]
    hidden.b[0], hidden.mean[0], hidden.gamma[0], hidden.inv_std[0], hidden.beta[0] = 0.25, s0 + 0.25, 2, 0.5, 0
    out = blocks[2]
    out.W[:] = 0.5
    out.W[0, 1] = -0.5
    out.b[:], out.mean[:], out.gamma[:], out.inv_std[:], out.beta[:] = 0.0, 0.0, 1.0, 1.0, 0.0
    expected = np.where(s >= s0, 0, 1)  # s == s0: BN output exactly 0 -> +1 -> class 0
    assert np.sum(s == s0) > 5 and np.sum(s < s0) > 5
    np.testing.assert_array_equal(reference_predictions(blocks, X), expected)
    path, packed_path = str(tmp_path / "edge.npz"), str(tmp_path / "edge.packed.npz")
    bi.save_blocks(blocks, path)
    bi.export_packed(path, packed_path)
    np.testing.assert_array_equal(bi.run_packed(packed_path, X), expected)
    results = bi.evaluate(blocks, X, expected, kernels=("blas", "xnor"))
    np.testing.assert_array_equal(results["xnor"]["predictions"], expected)


# ------------------------------------------------------------------------------------------------ packed model (b, d)

def test_packed_model_predictions_equal_float_inference(model, packed):
    np.testing.assert_array_equal(bi.run_packed(packed["path"], model["X"]), model["reference"])
    images = model["X"].reshape(-1, 1, 28, 28)  # the data sets' shape is accepted too
    np.testing.assert_array_equal(bi.run_packed(packed["path"], images), model["reference"])


def test_packed_weight_bits_unpack_to_the_signs(model, packed):
    with np.load(packed["path"]) as data:
        for k, block in enumerate(model["blocks"]):
            bits = data[f"w{k}"]
            assert bits.dtype == np.uint64 and bits.shape == (block.W.shape[1], -(-block.W.shape[0] // 64))
            np.testing.assert_array_equal(bi.unpack_weights(bits, block.W.shape[0]), bi.sign_numpy(block.W))
        # bit j of word w of row u is [W[64w + j, u] >= 0], checked by hand on two entries of the first layer
        W0, bits0 = model["blocks"][0].W, data["w0"]
        assert (int(bits0[3, 1]) >> 5) & 1 == int(W0[64 + 5, 3] >= 0)
        assert (int(bits0[7, 12]) >> 15) & 1 == int(W0[12 * 64 + 15, 7] >= 0)
        assert int(bits0[7, 12]) >> 16 == 0  # padding past 784 = 12·64 + 16 is zero


def test_packed_file_is_about_32_times_smaller_on_the_weights(tmp_path):
    widths = (784, 256, 256, 256, 10)
    blocks = random_blocks(np.random.RandomState(1), widths)
    path, out = str(tmp_path / "m.npz"), str(tmp_path / "m.packed.npz")
    bi.save_blocks(blocks, path)
    float_bytes, packed_bytes = bi.export_packed(path, out)
    weights = sum(i * o for i, o in zip(widths[:-1], widths[1:]))
    bit_bytes = sum(o * 8 * -(-i // 64) for i, o in zip(widths[:-1], widths[1:]))
    assert float_bytes > 4 * weights
    assert 4 * weights / bit_bytes > 30  # 32 minus padding: 784 inputs fill 13 words = 832 bits
    with np.load(out) as data:
        assert sum(data[f"w{k}"].nbytes for k in range(4)) == bit_bytes
        stored = sum(data[key].nbytes for key in data.files)
    assert packed_bytes - stored < 4096  # only zip headers besides the arrays
    assert float_bytes / packed_bytes > 20
    assert (float_bytes, packed_bytes) == (os.path.getsize(path), os.path.getsize(out))


# -------------------------------------------------------------------------------------------------- bad files (e)

def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def test_bad_model_files_give_one_line_errors(tmp_path, model):
    blocks = model["blocks"]
    arrays = [a for block in blocks for a in block.arrays()]
    cases = {
        "missing": (str(tmp_path / "nope.npz"), "does not exist"),
        "text": (_write(tmp_path / "text.npz", b"not a zip file"), "is not a .npz file"),
        "count": (None, "6 arrays per"), "keys": (None, "6 arrays per"), "shape": (None, "W has shape"),
        "vector": (None, "gamma has shape"), "nan": (None, "not a finite"), "one": (None, "at least 2"),
    }
    np.savez(str(tmp_path / "count.npz"), *arrays[:7])
    np.savez(str(tmp_path / "keys.npz"), W=arrays[0], b=arrays[1], beta=arrays[2], gamma=arrays[3],
             mean=arrays[4], inv_std=arrays[5])
    np.savez(str(tmp_path / "shape.npz"), *(arrays[:6] + [arrays[6][:50]] + arrays[7:]))
    np.savez(str(tmp_path / "vector.npz"), *(arrays[:3] + [arrays[3][:5]] + arrays[4:]))
    nan = [a.copy() for a in arrays]
    nan[10][0] = np.nan
    np.savez(str(tmp_path / "nan.npz"), *nan)
    np.savez(str(tmp_path / "one.npz"), *arrays[:6])
    for name, (path, message) in cases.items():
        path = path or str(tmp_path / (name + ".npz"))
        with pytest.raises(bi.InferenceError, match=message) as info:
            bi.load_blocks(path)
        assert "\n" not in str(info.value), name


def test_bad_packed_file_and_cli_error_line(tmp_path, model, capsys):
    with pytest.raises(bi.InferenceError, match="not a packed BinaryNet model"):
        bi.run_packed(model["path"], model["X"])
    bad = _write(tmp_path / "bad.npz", b"\x00" * 10)
    assert cli.main_guard(bi.main, ["--model", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert cli.main_guard(bi.main, ["--model", model["path"], "--kernels", "fast"]) == 2
    assert "unknown kernel" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------------- CLI (f)

def test_cli_on_a_tiny_mnist_folder(tmp_path, model, write_mnist, capsys):
    test_pixels = (np.round((model["X"][:60].reshape(-1, 28, 28) + 1) * 127.5)).astype(np.uint8)
    X = test_pixels.reshape(60, -1).astype(np.float32) / 255.0 * 2 - 1  # what load_mnist('pm1') returns
    labels = reference_predictions(model["blocks"], X)
    labels[:6] = (labels[:6] + 1) % 10  # 10 % error
    write_mnist(str(tmp_path), n_train=100, gz=False, test_images=test_pixels, test_labels=labels)
    export = str(tmp_path / "cli.packed.npz")
    code = bi.main(["--model", model["path"], "--data-dir", str(tmp_path), "--kernels", "blas,xnor",
                    "--export", export])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["blas"], ["xnor"])}
    assert float(rows["blas"][1]) == pytest.approx(10.0) and float(rows["xnor"][1]) == pytest.approx(10.0)
    assert "identical predictions" in out and "smaller" in out and os.path.isfile(export)
    assert "same predictions as the blas run" in out


def test_cli_timing_on_a_random_model(tmp_path, capsys):
    path = str(tmp_path / "random.npz")
    bi.write_random_model(path, widths=(784, 64, 64, 10), seed=3)
    blocks = bi.load_blocks(path)
    assert [b.W.shape for b in blocks] == [(784, 64), (64, 64), (64, 10)]
    np.testing.assert_allclose(blocks[1].inv_std, 1 / 8.0)
    assert bi.main(["--model", path, "--random-inputs", "50", "--kernels", "blas,xnor"]) == 0
    out = capsys.readouterr().out
    assert "50 examples" in out and "identical predictions" in out and "XNOR path" in out
