"""plumbing/preprocessing.py against independent references (direct NumPy/SciPy formulas, hand cases)."""
import json
import os

import numpy as np
import pytest
import scipy.signal

from plumbing import cli, datasets
from plumbing import preprocessing as pp


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
    (lambda: pp.cifar10_data('adam'), "unknown transform 'adam'; use one of pm1, gcn-zca"),
    (lambda: pp.svhn_data('gcn-zca'), "unknown transform 'gcn-zca'; use one of pm1, gcn-lcn"),
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


# ---------------------------------------------------------------------------------------------------------
# The two data sets, on tiny files in the official formats (read through datasets.py)
# ---------------------------------------------------------------------------------------------------------

def pm1(labels):
    targets = -np.ones((len(labels), 10), np.float32)
    targets[np.arange(len(labels)), labels] = 1
    return targets


def zca_reference_via_svd(train_rows, test_rows, bias=0.1):
    """Whitened train/test rows from a thin SVD of the centred training rows (independent of eigh on C).

    With centred = U S W^T: C = W diag(s^2/n) W^T + b I, so P = W diag(1/sqrt(s^2/n + b)) W^T + (I - W W^T)/sqrt(b).
    """
    mean = train_rows.mean(axis=0)
    U, s, Wt = np.linalg.svd(train_rows - mean, full_matrices=False)
    scale = 1.0 / np.sqrt(s ** 2 / len(train_rows) + bias)
    train = U @ np.diag(s * scale) @ Wt
    t = test_rows - mean
    in_span = t @ Wt.T
    test = in_span @ np.diag(scale) @ Wt + (t - in_span @ Wt) / np.sqrt(bias)
    return train, test


def test_cifar10_data_gcn_zca_pipeline_on_tiny_tarball(tmp_path, monkeypatch, write_cifar10, cifar10_arrays):
    raw_dir, cache_dir = str(tmp_path / 'raw'), str(tmp_path / 'cache')
    files = write_cifar10(raw_dir, rows=4, test_rows=6, seed=11)
    X_train_raw, y_train, X_test_raw, y_test = cifar10_arrays(files.batches)
    data = pp.cifar10_data('gcn-zca', data_dir=raw_dir, cache_dir=cache_dir, download=False)

    # split: the last tenth of the 20 training rows validates (rows 45000-49999 of the real set)
    assert data['X_train'].shape == (18, 3, 32, 32) and data['X_val'].shape == (2, 3, 32, 32)
    assert data['X_test'].shape == (6, 3, 32, 32)
    for name in ('X_train', 'X_val', 'X_test', 'y_train', 'y_val', 'y_test'):
        assert data[name].dtype == np.float32, name
    np.testing.assert_array_equal(data['y_train'], pm1(y_train[:18]))
    np.testing.assert_array_equal(data['y_val'], pm1(y_train[18:]))
    np.testing.assert_array_equal(data['y_test'], pm1(y_test))

    gcn_train = np.array([gcn_reference(row, scale=55.0) for row in X_train_raw])
    gcn_test = np.array([gcn_reference(row, scale=55.0) for row in X_test_raw])
    expected_train, expected_test = zca_reference_via_svd(gcn_train, gcn_test)   # fit on all 20 rows
    whitened = np.concatenate([data['X_train'], data['X_val']]).reshape(20, -1)
    np.testing.assert_allclose(whitened, expected_train, atol=2e-4)
    np.testing.assert_allclose(data['X_test'].reshape(6, -1), expected_test, atol=2e-4)

    # a second call reads the cache: the builder is not called again
    calls = []

    def counting_stub(X_train, X_test, params):    # cheap stand-in: only whether it is called matters
        calls.append(1)
        return {'X_train': np.zeros((18, 3, 32, 32), np.float32), 'X_val': np.zeros((2, 3, 32, 32), np.float32),
                'X_test': np.zeros((6, 3, 32, 32), np.float32)}
    monkeypatch.setattr(pp, '_build_cifar10_bc', counting_stub)
    again = pp.cifar10_data('gcn-zca', data_dir=raw_dir, cache_dir=cache_dir, download=False)
    np.testing.assert_array_equal(again['X_test'], data['X_test'])
    assert calls == []

    # different raw data misses the cache
    write_cifar10(raw_dir, rows=4, test_rows=6, seed=12)
    pp.cifar10_data('gcn-zca', data_dir=raw_dir, cache_dir=cache_dir, download=False)
    assert calls == [1]


def test_cifar10_data_pm1_scaling(tmp_path, write_cifar10, cifar10_arrays):
    raw_dir = str(tmp_path / 'raw')
    X_train_raw, _, X_test_raw, _ = cifar10_arrays(write_cifar10(raw_dir, rows=4, test_rows=6, seed=11).batches)
    data = pp.cifar10_data('pm1', data_dir=raw_dir, cache_dir=str(tmp_path / 'cache'), download=False)
    np.testing.assert_allclose(data['X_train'].reshape(18, -1), X_train_raw[:18] * 2 / 255 - 1, atol=1e-6)
    np.testing.assert_allclose(data['X_val'].reshape(2, -1), X_train_raw[18:] * 2 / 255 - 1, atol=1e-6)
    np.testing.assert_allclose(data['X_test'].reshape(6, -1), X_test_raw * 2 / 255 - 1, atol=1e-6)


def expected_gcn_lcn(image, lcn_channels):
    gcn = gcn_reference(image).reshape(3, 32, 32)
    return np.array([lcn_reference(gcn[c]) if c in lcn_channels else gcn[c] for c in range(3)])


def test_svhn_data_gcn_lcn_pipeline_on_tiny_mat_files(tmp_path, write_svhn):
    raw_dir, cache_dir = str(tmp_path / 'raw'), str(tmp_path / 'cache')
    write_svhn(raw_dir, {'train': 402, 'test': 1}, seed=13)
    raw = datasets.load_svhn_raw(data_dir=raw_dir, download=False, use_extra=False)
    data = pp.svhn_data('gcn-lcn', data_dir=raw_dir, cache_dir=cache_dir, download=False, use_extra=False)
    assert data['X_train'].shape == (20, 3, 32, 32) and data['X_val'].shape == (4000, 3, 32, 32)
    assert data['X_test'].shape == (10, 3, 32, 32)
    for part, name in (('train', 'train'), ('valid', 'val'), ('test', 'test')):
        np.testing.assert_array_equal(data['y_' + name], pm1(raw[part][1]))
        assert data['X_' + name].dtype == np.float32
    for part, name, rows in (('train', 'X_train', range(20)), ('valid', 'X_val', [0, 1999, 3999]),
                             ('test', 'X_test', range(10))):
        for i in rows:     # red channel GCN + LCN, green and blue GCN only (pylearn2 quirk)
            np.testing.assert_allclose(data[name][i], expected_gcn_lcn(raw[part][0][i], (0,)), atol=2e-5)

    fixed = pp.svhn_data('gcn-lcn', data_dir=raw_dir, cache_dir=cache_dir, download=False, use_extra=False,
                         lcn_all_channels=True)
    for i in range(10):
        np.testing.assert_allclose(fixed['X_test'][i], expected_gcn_lcn(raw['test'][0][i], (0, 1, 2)), atol=2e-5)
    assert len([f for f in os.listdir(cache_dir) if '.tmp-' not in f]) == 2   # one cache per parameter set

    again = pp.svhn_data('gcn-lcn', data_dir=raw_dir, cache_dir=cache_dir, download=False, use_extra=False)
    np.testing.assert_array_equal(again['X_val'], data['X_val'])

    plain = pp.svhn_data('pm1', data_dir=raw_dir, cache_dir=cache_dir, download=False, use_extra=False)
    np.testing.assert_allclose(plain['X_test'], raw['test'][0] * 2.0 / 255 - 1, atol=1e-6)


def test_command_line_reports_missing_data_in_one_line(tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    status = cli.main_guard(pp.main, ['cifar10', '--data-dir', str(empty), '--cache-dir', str(tmp_path / 'c'),
                                      '--no-download'])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith('error: ') and '\n' not in err and 'Traceback' not in err
