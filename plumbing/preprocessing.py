"""pylearn2's image preprocessing rebuilt in NumPy, and CIFAR-10 / SVHN as the networks see them.

Everything here follows ORIGINALS.md §3.2 (CIFAR-10: GCN scale 55 + ZCA), §3.3 (SVHN: GCN + LeCun LCN,
red-channel-only quirk), §3.4 (set sizes) and §6 rows 2 and 4 (where the repositories differ from the papers).

Memory rule: the full SVHN training set is 6.9 GiB in float32, so every transform works in chunks of
CHUNK_ROWS images, does its float64 arithmetic on one chunk at a time and can write in place (out=X).

Preprocessed arrays are cached on disk (one directory per cache key; the manifest is written last and the
directory is renamed into place, so a half-written cache is never read).
"""
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import zlib

import numpy as np
import scipy.ndimage

from plumbing import cli, datasets
from plumbing.errors import DAMAGED_NUMPY_FILE, DataError

CHUNK_ROWS = 5000                 # images per chunk, as pylearn2's batch_size=5000 (spec §3.3)
CACHE_FORMAT_VERSION = 1          # bump when the meaning of cached arrays changes
LOCK_NAME = '.writing'            # lock file inside a cache folder being written
CIFAR10_TRANSFORMS = ('pm1', 'gcn-zca')    # raw pixels in [-1, 1] (BinaryNet); GCN + ZCA (BinaryConnect)
SVHN_TRANSFORMS = ('pm1', 'gcn-lcn')       # raw pixels in [-1, 1] (BinaryNet); GCN + LeCun LCN (BinaryConnect)
CIFAR_GCN_SCALE = 55.0            # spec §3.2 step 1
ZCA_FILTER_BIAS = 0.1             # spec §3.2 step 2
LCN_KERNEL_SIZE = 7               # spec §3.3 step 2
LCN_SIGMA = 2.0                   # Gaussian width used by pylearn2 for its LCN filter (spec §3.3)
LCN_THRESHOLD = 1e-4
VALIDATION_DIVISOR = 10           # CIFAR-10: the last tenth of the training rows (45000-49999) validates


class PreprocessingError(DataError):
    """Bad input to a preprocessing function; the message is one line naming the problem and the fix."""


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------

def _chunks(n_rows, chunk_rows=None):
    """Yield (start, stop) row ranges covering range(n_rows), CHUNK_ROWS rows at a time by default."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    for start in range(0, n_rows, chunk_rows):
        yield start, min(start + chunk_rows, n_rows)


def _row_chunk(X, start, stop):
    """Rows start:stop of X (N, ...) as a 2-D (n, D) array; copies at most this chunk."""
    return X[start:stop].reshape(stop - start, int(np.prod(X.shape[1:])))


def _check_batch(X, what):
    """Raise unless X is an array of images or rows with a leading batch axis."""
    if X.ndim < 2:
        raise PreprocessingError(f'{what} must have shape (N, D) or (N, C, H, W), got shape {X.shape}; '
                                 'pass one image per row')


def _prepare_out(X, out):
    """Return a float array shaped like X to write results into (float32 unless X is float64)."""
    _check_batch(X, 'X')
    if out is None:
        dtype = np.float64 if X.dtype == np.float64 else np.float32
        return np.empty(X.shape, dtype=dtype)
    if out.shape != X.shape:
        raise PreprocessingError(f'out has shape {out.shape} but the input has shape {X.shape}; pass an array of the '
                                 'same shape')
    if out.dtype not in (np.float32, np.float64):
        raise PreprocessingError(f'out has dtype {out.dtype}; pass a float32 or float64 array')
    if not out.flags.c_contiguous:
        raise PreprocessingError('out is not C-contiguous; pass np.ascontiguousarray(out)')
    return out


def scale_to_pm1(X, out=None):
    """BinaryNet's input scaling x <- x*(2/255) - 1, in float32 as the original (spec §3.2, §3.3)."""
    X = np.asarray(X)
    out = _prepare_out(X, out)
    factor = np.float32(2.0 / 255.0)
    for start, stop in _chunks(len(X)):
        chunk = X[start:stop].astype(np.float32)
        chunk *= factor
        chunk -= np.float32(1.0)
        out[start:stop] = chunk
    return out


# ----------------------------------------------------------------------------------------------------
# Global contrast normalization
# ----------------------------------------------------------------------------------------------------

def global_contrast_normalize(X, scale=1.0, subtract_mean=True, use_std=False, sqrt_bias=0.0,
                              min_divisor=1e-8, out=None):
    """Per image (row of D values): x <- x - mean(x); x <- x / s (spec §3.2 step 1, §3.3 step 1).

    s = sqrt(sqrt_bias + sum(x^2)) / scale, or with use_std s = sqrt(sqrt_bias + var(x)) / scale where var is
    the sample variance (ddof=1, as pylearn2; no pipeline here uses it). When s < min_divisor the row is
    not divided. X may be uint8 or float; out=X works in place. Math is float64 per chunk.
    """
    X = np.asarray(X)
    if not scale > 0:
        raise PreprocessingError(f'GCN scale must be > 0, got {scale!r}; pass a positive scale')
    if sqrt_bias < 0 or min_divisor < 0:
        raise PreprocessingError(f'GCN sqrt_bias and min_divisor must be >= 0, got {sqrt_bias!r} and {min_divisor!r}')
    out = _prepare_out(X, out)
    if use_std and X[0].size < 2:
        raise PreprocessingError('GCN with use_std needs at least 2 values per row; use use_std=False')
    for start, stop in _chunks(len(X)):
        x = _row_chunk(X, start, stop).astype(np.float64)
        if subtract_mean:
            x -= x.mean(axis=1, keepdims=True)
        if use_std:
            s = np.sqrt(sqrt_bias + x.var(axis=1, ddof=1)) / scale
        else:
            s = np.sqrt(sqrt_bias + np.einsum('ij,ij->i', x, x)) / scale
        s[s < min_divisor] = 1.0
        x /= s[:, None]
        out[start:stop] = x.reshape(out[start:stop].shape)
    return out


# ----------------------------------------------------------------------------------------------------
# ZCA whitening
# ----------------------------------------------------------------------------------------------------

def zca_fit(X, filter_bias=ZCA_FILTER_BIAS):
    """Fit ZCA on rows of X (spec §3.2 step 2); returns float64 (mean (D,), P (D, D)).

    mu = mean over rows; C = (X - mu)^T (X - mu) / N + filter_bias * I; C = V diag(l) V^T;
    P = V diag(1 / sqrt(l)) V^T. Covariance accumulated chunk by chunk in float64.
    """
    X = np.asarray(X)
    _check_batch(X, 'X')
    n, d = len(X), int(np.prod(X.shape[1:]))
    if n == 0:
        raise PreprocessingError('ZCA needs at least one training row; pass a non-empty X')
    if filter_bias < 0:
        raise PreprocessingError(f'ZCA filter_bias must be >= 0, got {filter_bias!r}')
    mean = np.zeros(d)
    for start, stop in _chunks(n):
        mean += _row_chunk(X, start, stop).sum(axis=0, dtype=np.float64)
    mean /= n
    cov = np.zeros((d, d))
    for start, stop in _chunks(n):
        centred = _row_chunk(X, start, stop).astype(np.float64) - mean
        cov += centred.T @ centred
    cov /= n
    cov[np.diag_indices(d)] += filter_bias
    eigenvalues, V = np.linalg.eigh(cov)
    if eigenvalues.min() <= 0:
        raise PreprocessingError(f'ZCA covariance is singular (smallest eigenvalue {eigenvalues.min():.3g}); use '
                                 'filter_bias > 0 or more training rows')
    P = (V / np.sqrt(eigenvalues)) @ V.T
    return mean, P


def zca_apply(X, mean, P, out=None):
    """Whiten rows: (X - mean) @ P, chunk by chunk in float64 (spec §3.2 step 2); out=X works in place."""
    X = np.asarray(X)
    _check_batch(X, 'X')
    mean, P = np.asarray(mean, np.float64), np.asarray(P, np.float64)
    d = int(np.prod(X.shape[1:]))
    if mean.shape != (d,) or P.shape != (d, d):
        raise PreprocessingError(f'ZCA mean/P have shapes {mean.shape}/{P.shape} but rows have {d} values; fit ZCA '
                                 'on data of the same image size')
    out = _prepare_out(X, out)
    for start, stop in _chunks(len(X)):
        whitened = (_row_chunk(X, start, stop).astype(np.float64) - mean) @ P
        out[start:stop] = whitened.reshape(out[start:stop].shape)
    return out


# ----------------------------------------------------------------------------------------------------
# LeCun local contrast normalization
# ----------------------------------------------------------------------------------------------------

def gaussian_taps(kernel_size=LCN_KERNEL_SIZE, sigma=LCN_SIGMA):
    """1-D taps g with sum 1; outer(g, g) is the normalized 2-D Gaussian G of pylearn2's LCN (spec §3.3).

    G[i, j] is proportional to exp(-((i-m)^2 + (j-m)^2) / (2 sigma^2)), m = kernel_size // 2, so it factorises.
    """
    offsets = np.arange(kernel_size) - kernel_size // 2
    g = np.exp(-offsets.astype(np.float64) ** 2 / (2.0 * sigma ** 2))
    return g / g.sum()


def _smooth(images, taps):
    """'same'-size zero-padded convolution of each (H, W) image in (n, H, W) with outer(taps, taps)."""
    tmp = scipy.ndimage.correlate1d(images, taps, axis=1, mode='constant', cval=0.0)
    return scipy.ndimage.correlate1d(tmp, taps, axis=2, mode='constant', cval=0.0)


def lecun_lcn(X, kernel_size=LCN_KERNEL_SIZE, threshold=LCN_THRESHOLD, channels=(0,), out=None):
    """LeCun LCN of each selected channel image, independently per image (spec §3.3 step 2).

    centered = X - G*X; denom = sqrt(G*X^2); m = mean(denom) over the image;
    out = centered / max(max(m, denom), threshold); G = normalized Gaussian (sigma 2), '*' = 'same'
    zero-padded convolution. Unselected channels are copied unchanged. channels=(0,) is pylearn2's
    red-only quirk; channels=(0, 1, 2) is the corrected version. out=X works in place.
    """
    X = np.asarray(X)
    if X.ndim != 4:
        raise PreprocessingError(f'LCN needs images shaped (N, C, H, W), got shape {X.shape}; reshape first')
    if not (isinstance(kernel_size, (int, np.integer)) and kernel_size > 0 and kernel_size % 2 == 1):
        raise PreprocessingError(f'LCN kernel_size must be a positive odd integer, got {kernel_size!r}')
    channels = tuple(int(c) for c in channels)
    n_channels = X.shape[1]
    if len(set(channels)) != len(channels) or any(not 0 <= c < n_channels for c in channels):
        raise PreprocessingError(f'LCN channels {channels} are invalid for {n_channels} channels; pass distinct '
                                 f'indices in 0..{n_channels - 1}')
    out = _prepare_out(X, out)
    taps = gaussian_taps(kernel_size)
    in_place = np.may_share_memory(out, X)
    for start, stop in _chunks(len(X)):
        for c in range(n_channels):
            if c not in channels:
                if not in_place:
                    out[start:stop, c] = X[start:stop, c]
                continue
            x = X[start:stop, c].astype(np.float64)
            centered = x - _smooth(x, taps)
            denom = np.sqrt(_smooth(x * x, taps))
            per_image_mean = denom.mean(axis=(1, 2), keepdims=True)
            divisor = np.maximum(np.maximum(per_image_mean, denom), threshold)
            out[start:stop, c] = centered / divisor
    return out


# ----------------------------------------------------------------------------------------------------
# Disk cache
# ----------------------------------------------------------------------------------------------------

def fingerprint_arrays(arrays):
    """SHA-256 (hex) of the dtypes, shapes and bytes of a list of arrays, hashed chunk by chunk (no copy)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.asarray(array)
        digest.update((f'{array.dtype.str}{array.shape};').encode())
        rows = array.reshape(1, -1) if array.ndim == 0 else array
        for start, stop in _chunks(len(rows), 20000):
            digest.update(memoryview(np.ascontiguousarray(rows[start:stop])).cast('B'))
    return digest.hexdigest()


def cache_key(raw_fingerprint, params):
    """SHA-256 (hex) of the cache format version, the raw-data fingerprint and the parameters (a JSON dict)."""
    text = json.dumps({'format': CACHE_FORMAT_VERSION, 'raw': raw_fingerprint, 'params': params},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _crc32(array):
    """CRC-32 of an array's bytes, computed in chunks (integrity check for the cache, not security)."""
    crc = 0
    rows = array.reshape(1, -1) if array.ndim == 0 else array
    for start, stop in _chunks(len(rows), 20000):
        crc = zlib.crc32(memoryview(np.ascontiguousarray(rows[start:stop])).cast('B'), crc)
    return crc


def _cache_folder(cache_dir, name, key):
    return os.path.join(cache_dir, f'{name}-{key[:32]}')


def _read_cache(folder, key, names=None):
    """Return the cached dict of arrays if the folder holds a complete, intact cache for key, else None.

    The manifest must list at least one array (exactly `names` when given), under plain names.
    """
    try:
        with open(os.path.join(folder, 'manifest.json')) as f:
            manifest = json.load(f)
        if not isinstance(manifest, dict) or manifest.get('format') != CACHE_FORMAT_VERSION \
                or manifest.get('key') != key:
            return None
        listed = manifest['arrays']
        if not isinstance(listed, dict) or not listed or not all(str(n).isidentifier() for n in listed):
            return None
        if names is not None and set(listed) != set(names):
            return None
        arrays = {}
        for name, info in listed.items():
            path = os.path.join(folder, name + '.npy')
            if os.path.getsize(path) != info['file_bytes']:
                return None
            array = np.load(path, allow_pickle=False)
            if (list(array.shape) != info['shape'] or array.dtype.str != info['dtype']
                    or _crc32(array) != info['crc32']):
                return None
            arrays[name] = array
        return arrays
    except (ValueError, TypeError, AttributeError) + DAMAGED_NUMPY_FILE:
        return None


def _writer_is_gone(temporary):
    """True when no process is writing the temporary cache folder: its lock file can be locked, or (no lock
    file yet, or an older version's folder) the process id in its name does not run."""
    try:
        with open(os.path.join(temporary, LOCK_NAME), 'rb') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
    except BlockingIOError:
        return False
    except OSError:
        pass
    match = re.search(r'\.tmp-(\d+)', os.path.basename(temporary))
    if not match:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except (ProcessLookupError, OverflowError):
        return True
    except PermissionError:                     # another user's live process
        return False
    return False


def remove_dead_temporaries(cache_dir):
    """Delete the '*.tmp-*' folders in cache_dir that no running process is writing (a killed or failed build).

    Called at the start of every `load_or_build`, so an interrupted build never holds disk space for long.
    """
    try:
        entries = os.listdir(cache_dir)
    except OSError:
        return
    for entry in entries:
        path = os.path.join(cache_dir, entry)
        if '.tmp-' in entry and os.path.isdir(path) and _writer_is_gone(path):
            shutil.rmtree(path, ignore_errors=True)


def _write_cache(folder, key, arrays):
    """Write arrays into a temporary folder (locked while being written), manifest last, then rename it to
    folder. Any failure (full or read-only disk, Ctrl-C) removes the temporary folder and re-raises."""
    tmp = f'{folder}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        with open(os.path.join(tmp, LOCK_NAME), 'wb') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            manifest = {'format': CACHE_FORMAT_VERSION, 'key': key, 'arrays': {}}
            for name, array in arrays.items():
                array = np.ascontiguousarray(array)
                path = os.path.join(tmp, name + '.npy')
                with open(path, 'wb') as f:
                    np.save(f, array, allow_pickle=False)
                manifest['arrays'][name] = {'shape': list(array.shape), 'dtype': array.dtype.str,
                                            'crc32': _crc32(array), 'file_bytes': os.path.getsize(path)}
            with open(os.path.join(tmp, 'manifest.json'), 'w') as f:
                json.dump(manifest, f, indent=1)
            os.remove(os.path.join(tmp, LOCK_NAME))   # the lock stays held through the open handle
            _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp, folder):
    """Rename tmp to folder; a folder already there (a torn cache, or one another process just finished) is
    first renamed aside and then deleted, so readers never see a half-deleted cache."""
    try:
        os.rename(tmp, folder)
        return
    except OSError:
        if not os.path.isdir(folder):
            raise
    aside = tmp + '-old'
    os.rename(folder, aside)
    os.rename(tmp, folder)
    shutil.rmtree(aside, ignore_errors=True)


def load_or_build(cache_dir, name, key, build, names=None):
    """Return the dict of arrays cached under (name, key), or call build() once, cache and return its dict.

    A cache whose manifest is missing, does not match key, lists no arrays (or not exactly `names` when given),
    or whose files fail the size/shape/dtype/CRC-32 check is rebuilt, never read. Arrays are loaded fully into
    memory (writeable, not memory-mapped). When the cache cannot be written (read-only or full disk) the arrays
    are returned all the same, with one note on stderr, and no partial folder is left behind.
    """
    remove_dead_temporaries(cache_dir)
    folder = _cache_folder(cache_dir, name, key)
    arrays = _read_cache(folder, key, names)
    if arrays is not None:
        return arrays
    arrays = build()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        _write_cache(folder, key, arrays)
    except OSError as e:
        reason = e.strerror or f'short write: {e}'
        sys.stderr.write(f'note: could not write the preprocessing cache in {cache_dir} ({reason}); continuing without '
                         'it, the next run computes the arrays again (free space or pass --cache-dir)\n')
    return arrays


# ----------------------------------------------------------------------------------------------------
# The two data sets
# ----------------------------------------------------------------------------------------------------

def _check_transform(transform, known):
    if transform not in known:
        choices = ', '.join(known)
        raise PreprocessingError(f'unknown transform {transform!r}; use one of {choices}')


def _check_images(X, what):
    if X.ndim != 4 or X.shape[1:] != (3, 32, 32) or X.dtype != np.uint8:
        raise PreprocessingError(f'{what} must be uint8 of shape (N, 3, 32, 32), got {X.dtype} {X.shape}; check the '
                                 'raw reader')


def _default_cache_dir():
    """DEFAULT_DATA_DIR/preprocessed (an explicit data_dir is treated as read-only, as datasets.py does)."""
    return os.path.join(datasets.DEFAULT_DATA_DIR, 'preprocessed')


def cifar10_params():
    """Parameters of the BinaryConnect CIFAR-10 pipeline (spec §3.2); part of the cache key."""
    return {'dataset': 'cifar10', 'steps': 'gcn-then-zca', 'gcn_scale': CIFAR_GCN_SCALE,
            'gcn_subtract_mean': True, 'gcn_use_std': False, 'gcn_sqrt_bias': 0.0, 'gcn_min_divisor': 1e-8,
            'zca_filter_bias': ZCA_FILTER_BIAS, 'zca_fit_on': 'all-training-rows-incl-validation',
            'validation_divisor': VALIDATION_DIVISOR}


def _split_cifar(X_full, X_test):
    n_val = len(X_full) // VALIDATION_DIVISOR
    n_train = len(X_full) - n_val
    return {'X_train': X_full[:n_train], 'X_val': X_full[n_train:], 'X_test': X_test}


def _build_cifar10_bc(X_train_raw, X_test_raw, params):
    """GCN (scale 55) per image, ZCA fit on all training rows, applied to train and test (spec §3.2)."""
    gcn = dict(scale=params['gcn_scale'], subtract_mean=params['gcn_subtract_mean'],
               use_std=params['gcn_use_std'], sqrt_bias=params['gcn_sqrt_bias'],
               min_divisor=params['gcn_min_divisor'])
    X_full = global_contrast_normalize(X_train_raw, out=np.empty(X_train_raw.shape, np.float32), **gcn)
    X_test = global_contrast_normalize(X_test_raw, out=np.empty(X_test_raw.shape, np.float32), **gcn)
    mean, P = zca_fit(X_full, filter_bias=params['zca_filter_bias'])
    zca_apply(X_full, mean, P, out=X_full)
    zca_apply(X_test, mean, P, out=X_test)
    return _split_cifar(X_full, X_test)


def cifar10_data(transform, data_dir=None, cache_dir=None, download=True):
    """CIFAR-10 as a network sees it: dict X_train, y_train, X_val, y_val, X_test, y_test (spec §3.2).

    X float32 (N, 3, 32, 32); y float32 (N, 10) in {-1, +1}. Train = rows 0-44999, val = 45000-49999 of the
    official training file (the last tenth), test = 10000. 'pm1' (BinaryNet): x*(2/255) - 1. 'gcn-zca'
    (BinaryConnect): GCN(scale 55) + ZCA(filter_bias 0.1) fit on all 50000 training images, cached on disk.
    'files': the identity of the raw files read (datasets.file_info).
    """
    _check_transform(transform, CIFAR10_TRANSFORMS)
    raw = datasets.read_cifar10(data_dir=data_dir, download=download)
    X_train_raw, y_train_raw, X_test_raw, y_test_raw = raw['X_train'], raw['y_train'], raw['X_test'], raw['y_test']
    _check_images(X_train_raw, 'CIFAR-10 training images')
    _check_images(X_test_raw, 'CIFAR-10 test images')
    if transform == 'pm1':
        X = _split_cifar(scale_to_pm1(X_train_raw), scale_to_pm1(X_test_raw))
    else:
        params = cifar10_params()
        key = cache_key(fingerprint_arrays([X_train_raw, X_test_raw]), params)
        cache_dir = cache_dir or _default_cache_dir()
        X = load_or_build(cache_dir, 'cifar10-gcn-zca', key,
                          lambda: _build_cifar10_bc(X_train_raw, X_test_raw, params),
                          names=('X_train', 'X_val', 'X_test'))
    n_train = len(X['X_train'])
    return dict(X, y_train=datasets.one_hot_pm1(y_train_raw[:n_train]),
                y_val=datasets.one_hot_pm1(y_train_raw[n_train:]),
                y_test=datasets.one_hot_pm1(y_test_raw), files=raw['files'])


def svhn_params(lcn_all_channels=False):
    """Parameters of the BinaryConnect SVHN pipeline (spec §3.3); part of the cache key."""
    return {'dataset': 'svhn', 'steps': 'gcn-then-lcn', 'gcn_scale': 1.0, 'gcn_subtract_mean': True,
            'gcn_use_std': False, 'gcn_sqrt_bias': 0.0, 'gcn_min_divisor': 1e-8,
            'lcn_kernel_size': LCN_KERNEL_SIZE, 'lcn_sigma': LCN_SIGMA, 'lcn_threshold': LCN_THRESHOLD,
            'lcn_channels': [0, 1, 2] if lcn_all_channels else [0]}


def _gcn_lcn(X_raw, params):
    """GCN then LCN of uint8 images into one new float32 array, in place and chunked (spec §3.3)."""
    X = global_contrast_normalize(X_raw, scale=params['gcn_scale'],
                                  subtract_mean=params['gcn_subtract_mean'], use_std=params['gcn_use_std'],
                                  sqrt_bias=params['gcn_sqrt_bias'], min_divisor=params['gcn_min_divisor'],
                                  out=np.empty(X_raw.shape, np.float32))
    return lecun_lcn(X, kernel_size=params['lcn_kernel_size'], threshold=params['lcn_threshold'],
                     channels=params['lcn_channels'], out=X)


def svhn_data(transform, data_dir=None, cache_dir=None, download=True, use_extra=True, lcn_all_channels=False):
    """SVHN as a network sees it: dict X_train, y_train, X_val, y_val, X_test, y_test (spec §3.3).

    Splits come from datasets.load_svhn_raw (pylearn2's split: 598388 / 6000 / 26032 with extra); 'files': the
    .mat files read (datasets.file_info).
    'pm1' (BinaryNet): x*(2/255) - 1. 'gcn-lcn' (BinaryConnect): per image GCN (scale 1, L2 norm) then LeCun
    LCN 7x7 on channel 0 only (pylearn2 quirk) or on all channels with lcn_all_channels=True; cached on disk.
    """
    _check_transform(transform, SVHN_TRANSFORMS)
    raw = datasets.load_svhn_raw(data_dir=data_dir, download=download, use_extra=use_extra)
    for part in ('train', 'valid', 'test'):
        _check_images(raw[part][0], f'SVHN {part} images')
    names = {'train': 'X_train', 'valid': 'X_val', 'test': 'X_test'}
    if transform == 'pm1':
        X = {names[part]: scale_to_pm1(raw[part][0]) for part in names}
    else:
        params = svhn_params(lcn_all_channels)
        key = cache_key(fingerprint_arrays([raw[part][0] for part in names]), params)
        cache_dir = cache_dir or _default_cache_dir()
        X = load_or_build(cache_dir, 'svhn-gcn-lcn', key,
                          lambda: {names[part]: _gcn_lcn(raw[part][0], params) for part in names},
                          names=tuple(names.values()))
    labels = {'train': 'y_train', 'valid': 'y_val', 'test': 'y_test'}
    return dict(X, files=raw['files'], **{labels[part]: datasets.one_hot_pm1(raw[part][1]) for part in labels})


def main(argv=None):
    """Command line: build (or check) the preprocessed cache of one data set."""
    parser = cli.Parser('Preprocess CIFAR-10 or SVHN as the BinaryConnect networks see them and cache the '
                        'result (ORIGINALS.md §3.2-3.3): python -m plumbing.preprocessing cifar10')
    parser.add_argument('dataset', choices=['cifar10', 'svhn'])
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--cache-dir', default=None)
    parser.add_argument('--no-download', action='store_true')
    parser.add_argument('--no-extra', action='store_true', help='SVHN: leave out extra_32x32.mat')
    parser.add_argument('--lcn-all-channels', action='store_true', help='SVHN: LCN on all 3 channels')
    args = parser.parse_args(argv)
    if args.dataset == 'cifar10':
        data = cifar10_data('gcn-zca', args.data_dir, args.cache_dir, not args.no_download)
    else:
        data = svhn_data('gcn-lcn', args.data_dir, args.cache_dir, not args.no_download,
                         use_extra=not args.no_extra, lcn_all_channels=args.lcn_all_channels)
    for name in sorted(data):
        if name != 'files':
            print(f'{name} {data[name].dtype} {data[name].shape}')
    return 0


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
