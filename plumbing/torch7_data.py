"""The Torch7 BinaryNet code's data pipelines (its Data.lua on top of dp, unsup and DataProvider) in NumPy.

docs/torch7.md §8 describes them; in short:

* MNIST: per set rescale to [0, 1]; dp's split (valid_ratio 1/6); 'simple' normalization = one scalar mean
  and unbiased standard deviation of all training values, applied to every set.
* CIFAR-10: per set rescale to [0, 1]; dp's split (valid_ratio 0.1); dp's ZCA (filter bias 0.1) fitted on
  the training rows, then unsup's ZCA (unbiased covariance, 1e-5 on the eigenvalues) on top: double whitening.
* SVHN: the first 400 (train) / 200 (extra) images of every class validate; per set rescale to [0, 1]; dp's
  GCN (per image, std with bias 10); dp's LeCun LCN on every channel (9x9 Gaussian, divide by the image's
  std); each set divided by its own maximum; 'simple' normalization on top.

Every function returns X float32 (N, C, H, W) and y float32 (N, 10) in {-1, +1} like plumbing.preprocessing.
The raw readers are plumbing.datasets'; GCN, ZCA (dp's), the Gaussian taps and the disk cache are
plumbing.preprocessing's where the math is the same. Nothing here imports Theano.
"""
import os

import numpy as np

from plumbing import datasets, preprocessing
from plumbing.errors import DataError

MNIST_VALID_RATIO = 1. / 6.
CIFAR10_VALID_RATIO = 0.1
DP_ZCA_FILTER_BIAS = 0.1       # dp.ZCA: added to the covariance's diagonal
UNSUP_ZCA_EPSILON = 1e-5       # unsup.zca_whiten: added to the eigenvalues
GCN_SQRT_BIAS = 10.            # dp.GCN: x / sqrt(mean(x^2) + 10), after removing the image's mean
LCN_KERNEL_SIZE = 9            # dp.LeCunLCN
LCN_SIGMA = 2.
LCN_STD_BIAS = 1e-4            # c / (std(c) + 1e-4)
SVHN_VALID_PER_CLASS = (400, 200)   # first images of every class in train / extra
SVHN_SHUFFLE_SEED = 432        # Torch's manualSeed; NumPy's generator gives another permutation (docs §9)
CACHE_FORMAT = "torch7-1"
CHUNK_ROWS = preprocessing.CHUNK_ROWS


# ---------------------------------------------------------------------------------------------------------------
# Shared steps
# ---------------------------------------------------------------------------------------------------------------
def dp_split_rows(n, valid_ratio):
    """dp's train/validation rows of an n-row file, 0-based (docs/torch7.md §8.1).

    n_train = floor(n * (1 - valid_ratio)); training rows 0 .. n_train - 1, validation rows n_train - 1 ..
    n - 2: dp's 1-based slices share the boundary row and never use the last one.
    """
    n_train = int(np.floor(n * (1. - valid_ratio)))
    if not 1 < n_train < n:
        raise DataError(f"a training file of {n} rows is too small for dp's split (valid ratio {valid_ratio:.3g}); "
                        "use the full file")
    return np.arange(n_train), np.arange(n_train - 1, n - 1)


def rescale_to_unit(X, out=None):
    """dp's scale={0, 1}: x <- (x - min) / (max - min) with the min and max of this whole set, float32 (§8.1)."""
    X = np.asarray(X)
    out = np.empty(X.shape, np.float32) if out is None else out
    low, high = float(X.min()), float(X.max())
    if high <= low:
        raise DataError(f"every value of a set is {low}; a set of constant images cannot be rescaled, check the "
                        "files")
    for start in range(0, len(X), CHUNK_ROWS):
        chunk = X[start:start + CHUNK_ROWS].astype(np.float64)
        out[start:start + CHUNK_ROWS] = (chunk - low) / (high - low)
    return out


def simple_statistics(X):
    """DataProvider's 'simple' normalization statistics: mean and unbiased std of all values of X (§8.1)."""
    total, count = 0., X.size
    for start in range(0, len(X), CHUNK_ROWS):
        total += X[start:start + CHUNK_ROWS].sum(dtype=np.float64)
    mean = total / count
    squares = 0.
    for start in range(0, len(X), CHUNK_ROWS):
        squares += np.square(X[start:start + CHUNK_ROWS].astype(np.float64) - mean).sum()
    return mean, np.sqrt(squares / (count - 1))


def normalize_in_place(X, mean, std):
    """x <- (x - mean) / std with scalar statistics (the training set's, for every set), in place."""
    for start in range(0, len(X), CHUNK_ROWS):
        X[start:start + CHUNK_ROWS] = (X[start:start + CHUNK_ROWS].astype(np.float64) - mean) / std
    return X


def _targets(labels):
    return datasets.one_hot_pm1(labels)


# ---------------------------------------------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------------------------------------------
def mnist_from_raw(train_images, train_labels, test_images, test_labels):
    """The Torch7 MNIST pipeline on raw uint8 images (N, 28, 28) and labels 0..9 (§8.2).

    dp's train and validation sets are views of one array, rescaled to [0, 1] and relabelled (+1) in place set
    by set: the boundary row they share is therefore rescaled twice (its pixels end near 1/255 of normal) and
    its label raised by one class in both sets. This is reproduced by the same aliasing. (A shared row showing
    a 9 would have stopped the Torch script with an out-of-range class; it keeps its 9 here.) Then the
    'simple' normalization with the training set's scalar mean and std, on all three sets.
    """
    train_rows, valid_rows = dp_split_rows(len(train_images), MNIST_VALID_RATIO)
    pixels = train_images.reshape(len(train_images), 1, 28, 28).astype(np.float32)
    labels = train_labels.astype(np.int64)
    for rows in (train_rows, valid_rows):
        view = pixels[rows[0]:rows[-1] + 1]          # a view, as dp's narrow()
        rescale_to_unit(view, out=view)
        labels[rows[0]:rows[-1] + 1] += 1            # dp's 1-based classes, in place
    labels = labels - 1
    labels[labels > 9] = 9
    X_train, X_val = pixels[train_rows].copy(), pixels[valid_rows].copy()
    X_test = rescale_to_unit(test_images.reshape(len(test_images), 1, 28, 28))
    mean, std = simple_statistics(X_train)
    for X in (X_train, X_val, X_test):
        normalize_in_place(X, mean, std)
    return dict(X_train=X_train, y_train=_targets(labels[train_rows]), X_val=X_val,
                y_val=_targets(labels[valid_rows]), X_test=X_test, y_test=_targets(test_labels))


def mnist_data(data_dir=None, download=True):
    """MNIST as the Torch7 MLP sees it: 50000 / 10000 / 10000 rows of (1, 28, 28), z-scored (§8.2).

    Files are found, read and identified as datasets.load_mnist does ('files': their identity).
    """
    paths = datasets.mnist_files(data_dir, download)
    arrays, files = {}, []
    for key in datasets.MNIST_FILES:
        arrays[key], info = datasets._read_mnist_file(key, paths[key])
        files.append(info)
    datasets._accept_files(files, os.path.dirname(paths["train_images"]), "MNIST", datasets.MNIST_UNKNOWN_NOTE,
                           data_dir is None)
    pairs = [datasets._mnist_pair(arrays[part + "_images"], arrays[part + "_labels"], paths[part + "_images"],
                                  paths[part + "_labels"]) for part in ("train", "test")]
    return dict(mnist_from_raw(*pairs[0], *pairs[1]), files=files)


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------------------------
def unsup_zca_fit(X, epsilon=UNSUP_ZCA_EPSILON):
    """unsup.zca_whiten's fit: mean and P = V diag((l + epsilon)^-1/2) V^T of the unbiased covariance (§8.3).

    (dp's ZCA is plumbing.preprocessing.zca_fit: biased covariance + 0.1 I.) float64, chunk by chunk.
    """
    n, d = len(X), int(np.prod(X.shape[1:]))
    if n < 2:
        raise DataError(f"the second ZCA needs at least 2 training rows, got {n}; use more rows")
    rows = X.reshape(n, d)
    mean = np.zeros(d)
    for start in range(0, n, CHUNK_ROWS):
        mean += rows[start:start + CHUNK_ROWS].sum(axis=0, dtype=np.float64)
    mean /= n
    cov = np.zeros((d, d))
    for start in range(0, n, CHUNK_ROWS):
        centred = rows[start:start + CHUNK_ROWS].astype(np.float64) - mean
        cov += centred.T @ centred
    eigenvalues, V = np.linalg.eigh(cov / (n - 1))
    return mean, (V / np.sqrt(np.maximum(eigenvalues, 0.) + epsilon)) @ V.T


def cifar10_from_raw(X_train_raw, y_train_raw, X_test_raw, y_test_raw):
    """The Torch7 CIFAR-10 pipeline on raw images (N, C, H, W) and labels 0..9 (§8.3).

    dp's split (training rows 0-44999, validation 44999-49998 of the official file), every set rescaled to
    [0, 1] with its own min and max, dp's ZCA fitted on the training rows and applied to all, then unsup's
    ZCA fitted on the whitened training rows and applied to all.
    """
    train_rows, valid_rows = dp_split_rows(len(X_train_raw), CIFAR10_VALID_RATIO)
    sets = [rescale_to_unit(X_train_raw[train_rows]), rescale_to_unit(X_train_raw[valid_rows]),
            rescale_to_unit(X_test_raw)]
    for fit in (lambda X: preprocessing.zca_fit(X, filter_bias=DP_ZCA_FILTER_BIAS), unsup_zca_fit):
        mean, P = fit(sets[0])
        for X in sets:
            preprocessing.zca_apply(X, mean, P, out=X)
    return dict(X_train=sets[0], y_train=_targets(y_train_raw[train_rows]), X_val=sets[1],
                y_val=_targets(y_train_raw[valid_rows]), X_test=sets[2], y_test=_targets(y_test_raw))


def _cached(name, raw_arrays, params, build, cache_dir):
    key = preprocessing.cache_key(preprocessing.fingerprint_arrays(raw_arrays), dict(params, format=CACHE_FORMAT))
    return preprocessing.load_or_build(cache_dir or preprocessing._default_cache_dir(), name, key, build)


def cifar10_data(data_dir=None, cache_dir=None, download=True):
    """CIFAR-10 as the Torch7 ConvNet sees it: 45000 / 5000 / 10000 double-whitened rows (§8.3), cached on disk;
    'files': the identity of the files read (datasets.read_cifar10)."""
    raw = datasets.read_cifar10(data_dir=data_dir, download=download)
    arrays = [raw["X_train"], raw["y_train"], raw["X_test"], raw["y_test"]]
    params = dict(dataset="cifar10", valid_ratio=CIFAR10_VALID_RATIO, dp_zca_filter_bias=DP_ZCA_FILTER_BIAS,
                  unsup_zca_epsilon=UNSUP_ZCA_EPSILON)
    data = _cached("cifar10-torch7", arrays, params, lambda: cifar10_from_raw(*arrays), cache_dir)
    return dict(data, files=raw["files"])


# ---------------------------------------------------------------------------------------------------------------
# SVHN
# ---------------------------------------------------------------------------------------------------------------
def first_per_class(labels, per_class, name):
    """dp's SVHN validation pick: for classes 1..10 in order, the first `per_class` images of that class in file
    order. Returns (validation indices, class by class; remaining indices in file order)."""
    picked = []
    for c in range(1, 11):
        idx = np.flatnonzero(labels == c)
        if idx.size < per_class:
            raise DataError(f"SVHN {name} has {idx.size} images of label {c}, fewer than the {per_class} the "
                            "validation split takes; use the full file")
        picked.append(idx[:per_class])
    valid = np.concatenate(picked)
    rest = np.ones(labels.size, bool)
    rest[valid] = False
    return valid, np.flatnonzero(rest)


def dp_gcn(X, out=None):
    """dp.GCN per image: x <- (x - mean(x)) / sqrt(mean((x - mean(x))^2) + 10) (§8.4).

    preprocessing.global_contrast_normalize with scale sqrt(D) and sqrt_bias 10 D is the same formula.
    """
    d = int(np.prod(X.shape[1:]))
    return preprocessing.global_contrast_normalize(X, scale=np.sqrt(d), sqrt_bias=GCN_SQRT_BIAS * d,
                                                   use_std=False, out=out)


def dp_lecun_lcn(X, out=None):
    """dp.LeCunLCN on every channel of every image (§8.4): c = x - G * x, then c / (std(c) + 1e-4).

    G: 9x9 Gaussian (sigma 2) with sum 1, 'same' size with zero padding; std: unbiased, over the H x W values
    of that channel of that image. No statistics are fitted. X float (N, C, H, W); out=X works in place.
    """
    out = np.empty(X.shape, np.float32) if out is None else out
    taps = preprocessing.gaussian_taps(LCN_KERNEL_SIZE, LCN_SIGMA)
    n, c = X.shape[:2]
    for start in range(0, n, CHUNK_ROWS):
        images = X[start:start + CHUNK_ROWS].astype(np.float64).reshape((-1,) + X.shape[2:])
        centred = images - preprocessing._smooth(images, taps)
        std = centred.reshape(len(images), -1).std(axis=1, ddof=1)
        out[start:start + CHUNK_ROWS] = (centred / (std[:, None, None] + LCN_STD_BIAS)).reshape(
            (-1, c) + X.shape[2:])
    return out


def divide_by_max(X):
    """Data.lua: the set divided by its own global maximum, in place (train, validation and test each by theirs)."""
    top = float(X.max())
    for start in range(0, len(X), CHUNK_ROWS):
        X[start:start + CHUNK_ROWS] /= np.float32(top)
    return X


def svhn_split(train_labels, extra_labels=None, seed=SVHN_SHUFFLE_SEED):
    """dp's SVHN split (§8.4). Returns {'valid', 'train'}: (source ids, indices), 0 = train file, 1 = extra.

    Validation = [extra's first 200 per class | train's first 400 per class], each block class by class.
    Training = the remaining train rows then the remaining extra rows, placed at the positions of a random
    permutation (Torch's randperm; here NumPy's with `seed`).
    """
    per_class = SVHN_VALID_PER_CLASS
    valid_train, rest_train = first_per_class(train_labels, per_class[0], "train")
    valid_parts, rest_parts = [(0, valid_train)], [(0, rest_train)]
    if extra_labels is not None:
        valid_extra, rest_extra = first_per_class(extra_labels, per_class[1], "extra")
        valid_parts.insert(0, (1, valid_extra))
        rest_parts.append((1, rest_extra))

    def joined(parts):
        return (np.concatenate([np.full(idx.size, s) for s, idx in parts]), np.concatenate([idx for _, idx in parts]))

    ids, idx = joined(rest_parts)
    positions = np.random.RandomState(seed).permutation(idx.size)
    order = np.empty_like(positions)
    order[positions] = np.arange(idx.size)       # row i of the joined set goes to position positions[i]
    return {"valid": joined(valid_parts), "train": (ids[order], idx[order])}


def svhn_set(images):
    """One SVHN set through the Torch7 pipeline up to the 'simple' normalization: [0, 1], GCN, LCN, / max."""
    X = rescale_to_unit(images)
    dp_gcn(X, out=X)
    dp_lecun_lcn(X, out=X)
    return divide_by_max(X)


def svhn_from_sets(sets):
    """{'train', 'valid', 'test'}: (uint8 (N, 3, 32, 32), labels 1..10) -> the network's dict (§8.4).

    Each set: svhn_set; then all three normalized with the training set's scalar mean and unbiased std
    (the script's 'simple' normalization, applied because its switch to skip it reads an undefined name).
    Labels 1..10 (10 = digit 0) become classes 0..9.
    """
    out = {}
    for part, name in (("train", "X_train"), ("valid", "X_val"), ("test", "X_test")):
        out[name] = svhn_set(sets[part][0])
    mean, std = simple_statistics(out["X_train"])
    for name in ("X_train", "X_val", "X_test"):
        normalize_in_place(out[name], mean, std)
    for part, name in (("train", "y_train"), ("valid", "y_val"), ("test", "y_test")):
        out[name] = _targets(sets[part][1] - 1)
    return out


def svhn_data(data_dir=None, cache_dir=None, download=True, use_extra=True):
    """SVHN as the Torch7 ConvNet sees it (§8.4): 598388 / 6000 / 26032 rows with extra, cached on disk.

    use_extra=False (--no-extra) splits the train file alone: 69257 training and 4000 validation rows.
    'files': the identity of the .mat files read, as datasets.load_svhn_raw gives it.
    """
    paths = datasets.svhn_files(data_dir, download, use_extra)
    x_train, y_train, info = datasets._read_svhn_file("train", paths["train"])
    sources, labels, files = [x_train], [y_train], [info]
    if use_extra:
        x_extra, y_extra, info = datasets._read_svhn_file("extra", paths["extra"])
        sources.append(x_extra)
        labels.append(y_extra)
        files.append(info)
    x_test, y_test, info = datasets._read_svhn_file("test", paths["test"])
    files.append(info)
    datasets._accept_files(files, os.path.dirname(paths["train"]), "SVHN", datasets.SVHN_UNKNOWN_NOTE,
                           data_dir is None)
    split = svhn_split(y_train, y_extra if use_extra else None)

    def build():
        sets, all_labels = {}, np.concatenate(labels)
        for part in ("train", "valid"):
            ids, idx = split[part]
            y = all_labels[idx + np.where(ids == 1, y_train.size, 0)]
            sets[part] = (datasets._gather_chw(sources, split[part]), y)
        sets["test"] = (datasets._gather_chw([x_test], (np.zeros(y_test.size, np.int64), np.arange(y_test.size))),
                        y_test)
        return svhn_from_sets(sets)

    params = dict(dataset="svhn", use_extra=use_extra, valid_per_class=list(SVHN_VALID_PER_CLASS),
                  gcn_sqrt_bias=GCN_SQRT_BIAS, lcn=[LCN_KERNEL_SIZE, LCN_SIGMA, LCN_STD_BIAS], seed=SVHN_SHUFFLE_SEED)
    data = _cached("svhn-torch7", [y_train] + ([labels[-1]] if use_extra else []) + [y_test] + sources + [x_test],
                   params, build, cache_dir)
    return dict(data, files=files)
