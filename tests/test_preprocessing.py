"""Tests of preprocessing.py against independent references (direct NumPy/SciPy formulas, hand cases)."""
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
import scipy.io
import scipy.signal

import preprocessing as pp


@pytest.fixture
def small_chunks(monkeypatch):
    """Make every chunked loop take several iterations on tiny data."""
    monkeypatch.setattr(pp, 'CHUNK_ROWS', 3)


# ---------------------------------------------------------------------------------------------------------
# References written independently of the module
# ---------------------------------------------------------------------------------------------------------

def gcn_reference(row, scale=1.0, subtract_mean=True, use_std=False, sqrt_bias=0.0, min_divisor=1e-8):
    x = np.array(row, dtype=np.float64).ravel()
    if subtract_mean:
        x = x - x.sum() / x.size
    if use_std:
        variance = ((x - x.mean()) ** 2).sum() / (x.size - 1)
        s = np.sqrt(sqrt_bias + variance) / scale
    else:
        s = np.sqrt(sqrt_bias + (x ** 2).sum()) / scale
    return x if s < min_divisor else x / s


def gaussian_7x7_reference():
    G = np.zeros((7, 7))
    for i in range(7):
        for j in range(7):
            G[i, j] = np.exp(-((i - 3) ** 2 + (j - 3) ** 2) / (2 * 2.0 ** 2))
    return G / G.sum()


def lcn_reference(image, threshold=1e-4):
    """LeCun LCN of one 2-D image by scipy.signal.convolve2d (spec §3.3 step 2)."""
    G = gaussian_7x7_reference()
    x = np.asarray(image, dtype=np.float64)
    centered = x - scipy.signal.convolve2d(x, G, mode='same', boundary='fill', fillvalue=0)
    denom = np.sqrt(scipy.signal.convolve2d(x ** 2, G, mode='same', boundary='fill', fillvalue=0))
    divisor = np.maximum(np.maximum(denom.mean(), denom), threshold)
    return centered / divisor


# ---------------------------------------------------------------------------------------------------------
# Global contrast normalization
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs', [
    {},
    {'scale': 55.0},
    {'use_std': True, 'sqrt_bias': 10.0, 'scale': 2.0},
    {'subtract_mean': False, 'scale': 3.0},
])
def test_gcn_matches_row_formula(small_chunks, kwargs):
    X = np.random.RandomState(0).uniform(-5, 20, size=(7, 2, 3, 4))
    result = pp.global_contrast_normalize(X, **kwargs)
    assert result.shape == X.shape and result.dtype == np.float64
    for i in range(len(X)):
        np.testing.assert_allclose(result[i].ravel(), gcn_reference(X[i], **kwargs), rtol=1e-12, atol=1e-12)


def test_gcn_scale55_unit_norm_and_constant_image_not_divided(small_chunks):
    rng = np.random.RandomState(1)
    X = rng.randint(0, 256, size=(8, 3, 32, 32)).astype(np.uint8)
    X[5] = 77                                   # constant image: zero after mean removal, s = 0 < 1e-8
    result = pp.global_contrast_normalize(X, scale=55.0)
    assert result.dtype == np.float32
    rows = result.reshape(8, -1).astype(np.float64)
    np.testing.assert_allclose(rows.mean(axis=1), 0, atol=1e-5)
    norms = np.sqrt((rows ** 2).sum(axis=1))
    np.testing.assert_allclose(np.delete(norms, 5), 55.0, rtol=1e-5)
    assert np.all(rows[5] == 0)


def test_gcn_in_place_float32_equals_out_of_place(small_chunks):
    X = np.random.RandomState(2).uniform(0, 255, size=(10, 48)).astype(np.float32)
    expected = pp.global_contrast_normalize(X, scale=55.0)
    returned = pp.global_contrast_normalize(X, scale=55.0, out=X)
    assert returned is X
    np.testing.assert_array_equal(X, expected)


def test_gcn_min_divisor_threshold():
    X = np.array([[0.0, 1e-9], [0.0, 2.0]])      # L2 norms after centring: 7.07e-10 and 1.41
    result = pp.global_contrast_normalize(X, min_divisor=1e-8)
    np.testing.assert_allclose(result[0], [-5e-10, 5e-10])          # not divided
    np.testing.assert_allclose(result[1], [-1 / np.sqrt(2), 1 / np.sqrt(2)])


def test_scale_to_pm1_formula(small_chunks):
    X = np.arange(256, dtype=np.uint8).reshape(4, 1, 8, 8)
    result = pp.scale_to_pm1(X)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, 2.0 * X.astype(np.float64) / 255.0 - 1.0, atol=1e-6)
    assert result.min() == -1.0


# ---------------------------------------------------------------------------------------------------------
# ZCA
# ---------------------------------------------------------------------------------------------------------

def correlated_data(seed, n, d=6):
    rng = np.random.RandomState(seed)
    mixing = rng.randn(d, d) * np.array([3.0, 1.0, 0.5, 0.2, 0.05, 0.01])[:, None]
    return rng.randn(n, d) @ mixing + rng.randn(d) * 4


def test_zca_whitened_covariance_is_l_over_l_plus_bias(small_chunks):
    """cov(whitened) = V diag(l/(l+b)) V^T with (l, V) the eigenpairs of the data covariance."""
    X = correlated_data(3, n=500)
    bias = 0.1
    mean, P = pp.zca_fit(X, filter_bias=bias)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(P, P.T, atol=1e-12)               # ZCA (symmetric), not PCA
    Y = pp.zca_apply(X, mean, P)
    assert Y.dtype == np.float64
    data_cov = np.cov(X, rowvar=False, bias=True)
    eigenvalues, V = np.linalg.eigh(data_cov)
    assert eigenvalues.min() < bias < eigenvalues.max()          # the bias matters for some directions
    expected = V @ np.diag(eigenvalues / (eigenvalues + bias)) @ V.T
    np.testing.assert_allclose(np.cov(Y, rowvar=False, bias=True), expected, atol=1e-9)


def test_zca_without_bias_gives_identity_covariance():
    X = correlated_data(4, n=300)
    mean, P = pp.zca_fit(X, filter_bias=0.0)
    Y = pp.zca_apply(X, mean, P)
    np.testing.assert_allclose(np.cov(Y, rowvar=False, bias=True), np.eye(6), atol=1e-8)


def test_zca_applies_the_training_transform_to_test_data(small_chunks):
    X_train, X_test = correlated_data(5, n=200), correlated_data(6, n=11)
    mean, P = pp.zca_fit(X_train)
    # independent construction of the same P from an SVD of the centred training data
    centred = X_train - X_train.mean(axis=0)
    _, s, Wt = np.linalg.svd(centred, full_matrices=False)
    P_svd = Wt.T @ np.diag(1.0 / np.sqrt(s ** 2 / len(X_train) + 0.1)) @ Wt
    np.testing.assert_allclose(P, P_svd, rtol=1e-8)
    out = np.empty(X_test.shape, np.float32)
    pp.zca_apply(X_test, mean, P, out=out)
    np.testing.assert_allclose(out, (X_test - X_train.mean(axis=0)) @ P_svd, rtol=1e-5, atol=1e-5)


def test_zca_singular_covariance_without_bias_is_rejected():
    X = np.ones((5, 4))
    with pytest.raises(pp.PreprocessingError, match='filter_bias'):
        pp.zca_fit(X, filter_bias=0.0)


# ---------------------------------------------------------------------------------------------------------
# LeCun LCN
# ---------------------------------------------------------------------------------------------------------

def test_gaussian_taps_give_the_7x7_kernel():
    g = pp.gaussian_taps(7)
    np.testing.assert_allclose(np.outer(g, g), gaussian_7x7_reference(), rtol=1e-12)


def test_lcn_default_changes_only_channel_0(small_chunks):
    X = np.random.RandomState(7).uniform(-1, 1, size=(5, 3, 9, 10))
    X[4, 0] = 0.0                                   # all-zero image: divisor = threshold, output 0
    result = pp.lecun_lcn(X)
    for i in range(len(X)):
        np.testing.assert_allclose(result[i, 0], lcn_reference(X[i, 0]), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(result[:, 1:], X[:, 1:])
    assert np.all(result[4, 0] == 0)


def test_lcn_all_channels_is_the_corrected_version(small_chunks):
    X = np.random.RandomState(8).uniform(0, 2, size=(4, 3, 12, 8))
    result = pp.lecun_lcn(X, channels=(0, 1, 2))
    for i in range(len(X)):
        for c in range(3):
            np.testing.assert_allclose(result[i, c], lcn_reference(X[i, c]), rtol=1e-10, atol=1e-12)


def test_lcn_threshold_applies_where_local_energy_is_tiny():
    X = np.zeros((1, 1, 9, 9))
    X[0, 0, 4, 4] = 1e-7                             # denominators far below the 1e-4 threshold
    result = pp.lecun_lcn(X)
    np.testing.assert_allclose(result[0, 0], lcn_reference(X[0, 0]), rtol=1e-10)
    G = gaussian_7x7_reference()
    assert result[0, 0, 4, 4] == pytest.approx(1e-7 * (1 - G[3, 3]) / 1e-4, rel=1e-9)


def test_lcn_in_place_float32(small_chunks):
    X = np.random.RandomState(9).uniform(-1, 1, size=(7, 3, 8, 8)).astype(np.float32)
    original = X.copy()
    pp.lecun_lcn(X, channels=(0, 2), out=X)
    for i in range(len(X)):
        for c in (0, 2):
            np.testing.assert_allclose(X[i, c], lcn_reference(original[i, c]), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(X[:, 1], original[:, 1])


@pytest.mark.parametrize('call, fragment', [
    (lambda: pp.lecun_lcn(np.zeros((2, 32, 32))), 'LCN needs images shaped'),
    (lambda: pp.lecun_lcn(np.zeros((2, 3, 8, 8)), kernel_size=6), 'odd'),
    (lambda: pp.lecun_lcn(np.zeros((2, 3, 8, 8)), channels=(3,)), 'channels'),
    (lambda: pp.global_contrast_normalize(np.zeros((2, 4)), scale=0), 'scale'),
    (lambda: pp.global_contrast_normalize(np.zeros(4)), 'one image per row'),
    (lambda: pp.global_contrast_normalize(np.zeros((2, 4)), out=np.zeros((2, 5))), 'same shape'),
    (lambda: pp.zca_apply(np.zeros((2, 4)), np.zeros(3), np.eye(3)), 'same image size'),
    (lambda: pp.cifar10_data('adam'), 'unknown method'),
])
def test_bad_input_raises_one_line_error(call, fragment):
    with pytest.raises(pp.PreprocessingError) as info:
        call()
    assert fragment in str(info.value) and '\n' not in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Disk cache
# ---------------------------------------------------------------------------------------------------------

class CountingBuilder:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        rng = np.random.RandomState(10)
        return {'X_train': rng.randn(6, 3, 4, 4).astype(np.float32), 'X_test': rng.randn(2, 5).astype(np.float32)}


def cache_folder(cache_dir):
    folders = [f for f in os.listdir(cache_dir) if '.tmp-' not in f]
    assert len(folders) == 1
    return os.path.join(cache_dir, folders[0])


def test_cache_is_reused_and_arrays_are_writeable(tmp_path):
    build = CountingBuilder()
    key = pp.cache_key(pp.fingerprint_arrays([np.arange(10, dtype=np.uint8)]), {'a': 1})
    first = pp.load_or_build(str(tmp_path), 'demo', key, build)
    second = pp.load_or_build(str(tmp_path), 'demo', key, build)
    assert build.calls == 1
    for name in ('X_train', 'X_test'):
        np.testing.assert_array_equal(first[name], second[name])
        assert second[name].dtype == np.float32 and second[name].flags.writeable
        assert not isinstance(second[name], np.memmap)
    manifest = json.load(open(os.path.join(cache_folder(str(tmp_path)), 'manifest.json')))
    assert manifest['arrays']['X_train']['shape'] == [6, 3, 4, 4]


def test_cache_key_changes_with_parameters_and_raw_data():
    raw = np.arange(300, dtype=np.uint8).reshape(3, 100)
    base = pp.cache_key(pp.fingerprint_arrays([raw]), {'scale': 55.0, 'bias': 0.1})
    assert base == pp.cache_key(pp.fingerprint_arrays([raw.copy()]), {'bias': 0.1, 'scale': 55.0})
    assert base != pp.cache_key(pp.fingerprint_arrays([raw]), {'scale': 55.0, 'bias': 0.2})
    changed = raw.copy()
    changed[2, 99] ^= 1
    assert base != pp.cache_key(pp.fingerprint_arrays([changed]), {'scale': 55.0, 'bias': 0.1})
    # a strided view hashes like its contiguous copy (the bytes, not the memory layout, are hashed)
    assert pp.fingerprint_arrays([raw[:, ::2]]) == pp.fingerprint_arrays([raw[:, ::2].copy()])


def test_cache_misses_when_key_changes(tmp_path):
    build = CountingBuilder()
    pp.load_or_build(str(tmp_path), 'demo', pp.cache_key('raw', {'bias': 0.1}), build)
    pp.load_or_build(str(tmp_path), 'demo', pp.cache_key('raw', {'bias': 0.2}), build)
    assert build.calls == 2


@pytest.mark.parametrize('damage', ['truncate', 'delete_manifest', 'flip_byte', 'delete_array'])
def test_torn_cache_is_rebuilt_not_read(tmp_path, damage):
    build = CountingBuilder()
    key = pp.cache_key('raw', {})
    expected = pp.load_or_build(str(tmp_path), 'demo', key, build)
    folder = cache_folder(str(tmp_path))
    data_file = os.path.join(folder, 'X_train.npy')
    if damage == 'truncate':
        size = os.path.getsize(data_file)
        with open(data_file, 'r+b') as f:
            f.truncate(size - 10)
    elif damage == 'delete_manifest':
        os.remove(os.path.join(folder, 'manifest.json'))
    elif damage == 'flip_byte':                      # same size, corrupted payload: caught by the CRC
        with open(data_file, 'r+b') as f:
            f.seek(-3, os.SEEK_END)
            byte = f.read(1)
            f.seek(-3, os.SEEK_END)
            f.write(bytes([byte[0] ^ 0xFF]))
    else:
        os.remove(data_file)
    rebuilt = pp.load_or_build(str(tmp_path), 'demo', key, build)
    assert build.calls == 2
    np.testing.assert_array_equal(rebuilt['X_train'], expected['X_train'])
    pp.load_or_build(str(tmp_path), 'demo', key, build)      # repaired: read again
    assert build.calls == 2


def test_temporary_directory_of_a_dead_process_is_removed(tmp_path):
    key = pp.cache_key('raw', {})
    final = pp._cache_folder(str(tmp_path), 'demo', key)
    dead = final + '.tmp-999999999'                  # beyond any pid_max, so no such process
    os.makedirs(dead)
    pp.load_or_build(str(tmp_path), 'demo', key, CountingBuilder())
    assert not os.path.exists(dead) and os.path.isdir(final)
