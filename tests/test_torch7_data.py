"""The Torch7 data pipelines (plumbing/torch7_data.py, docs/torch7.md §8), each step against a direct NumPy/SciPy
formula on tiny arrays, and the three loaders' glue on tiny generated files."""
import gzip
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import scipy.io
from scipy.signal import convolve2d

from plumbing import torch7_data as t7
from plumbing.errors import DataError


def pm1(labels):
    targets = -np.ones((len(labels), 10), np.float32)
    targets[np.arange(len(labels)), labels] = 1
    return targets


# ---------------------------------------------------------------------------------------------------------------
# Shared steps
# ---------------------------------------------------------------------------------------------------------------
def test_dp_split_rows_share_the_boundary_row_and_drop_the_last():
    train, valid = t7.dp_split_rows(60000, 1. / 6.)
    assert (train[0], train[-1], train.size) == (0, 49999, 50000)      # 1-based rows 1-50000
    assert (valid[0], valid[-1], valid.size) == (49999, 59998, 10000)  # 1-based rows 50000-59999
    train, valid = t7.dp_split_rows(50000, 0.1)
    assert (train[-1], valid[0], valid[-1], valid.size) == (44999, 44999, 49998, 5000)
    with pytest.raises(DataError, match="too small"):
        t7.dp_split_rows(1, 0.1)


def test_rescale_to_unit_uses_the_set_min_and_max():
    X = np.array([[3, 5], [7, 11]], np.uint8)
    np.testing.assert_allclose(t7.rescale_to_unit(X), (X - 3.) / 8., rtol=1e-7)
    assert t7.rescale_to_unit(X).dtype == np.float32
    with pytest.raises(DataError, match="constant"):
        t7.rescale_to_unit(np.ones((2, 2)))


def test_simple_normalization_is_scalar_mean_and_unbiased_std_of_the_training_set():
    rng = np.random.RandomState(0)
    train, other = rng.rand(7, 1, 3, 3).astype(np.float32) * 5, rng.rand(4, 1, 3, 3).astype(np.float32)
    mean, std = t7.simple_statistics(train)
    assert mean == pytest.approx(train.astype(np.float64).mean()) and std == pytest.approx(
        train.astype(np.float64).std(ddof=1))
    expected = (other.astype(np.float64) - mean) / std
    np.testing.assert_allclose(t7.normalize_in_place(other, mean, std), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------------------------------------------
def mnist_raw(n_train=60, n_test=12, seed=1):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, (n_train, 28, 28)).astype(np.uint8)
    images[0, 0, 0], images[1, 0, 0] = 0, 255
    labels = rng.randint(0, 9, n_train)          # no 9 at the shared row: its label moves up one class
    test = rng.randint(0, 256, (n_test, 28, 28)).astype(np.uint8)
    test[0, 0, 0], test[0, 0, 1] = 3, 200         # the test set's own min and max rescale it
    return images, labels, test, rng.randint(0, 10, n_test)


def test_mnist_pipeline_split_quirk_and_z_scoring():
    images, labels, test, test_labels = mnist_raw()
    test[test < 3], test[test > 200] = 3, 200
    data = t7.mnist_from_raw(images, labels, test, test_labels)
    assert data["X_train"].shape == (50, 1, 28, 28) and data["X_val"].shape == (10, 1, 28, 28)
    # rows 0-49 train, 49-58 validate; row 49 is in both, rescaled twice and one class up; row 59 is unused
    unit = images / 255.
    shared = unit[49] / 255.                                            # the validation set's max is still 255
    train_unit = np.concatenate([unit[:49], shared[None]])
    mean, std = train_unit.mean(), train_unit.std(ddof=1)
    np.testing.assert_allclose(data["X_train"][:, 0], (train_unit - mean) / std, rtol=1e-5, atol=1e-5)
    valid_unit = np.concatenate([shared[None], unit[50:59]])
    np.testing.assert_allclose(data["X_val"][:, 0], (valid_unit - mean) / std, rtol=1e-5, atol=1e-5)
    shifted = labels.copy()
    shifted[49] += 1
    np.testing.assert_array_equal(data["y_train"], pm1(shifted[:50]))
    np.testing.assert_array_equal(data["y_val"], pm1(shifted[49:59]))
    np.testing.assert_allclose(data["X_test"][:, 0], ((test - 3.) / 197. - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data["y_test"], pm1(test_labels))


def write_idx(path, array, magic):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">ii", magic, len(array)) + b"".join(struct.pack(">i", d) for d in array.shape[1:]))
        f.write(array.astype(np.uint8).tobytes())


def test_mnist_data_reads_idx_files(tmp_path):
    images, labels, test, test_labels = mnist_raw(n_train=120)
    for prefix, x, y in (("train", images, labels), ("t10k", test, test_labels)):
        write_idx(str(tmp_path / (prefix + "-images-idx3-ubyte.gz")), x, 2051)
        write_idx(str(tmp_path / (prefix + "-labels-idx1-ubyte.gz")), y, 2049)
    data = t7.mnist_data(str(tmp_path), download=False)
    expected = t7.mnist_from_raw(images, labels, test, test_labels)
    assert data["X_train"].shape == (100, 1, 28, 28) and data["X_val"].shape == (20, 1, 28, 28)
    for name in expected:
        np.testing.assert_array_equal(data[name], expected[name])
    assert [f["name"] for f in data["files"]] == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                  "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------------------------
def zca_matrix(X, bias_on_covariance=0., bias_on_eigenvalues=0., ddof=0):
    """Direct ZCA: P = V diag((l + b)^-1/2) V^T of cov(X) (+ b I), via np.cov."""
    eigenvalues, V = np.linalg.eigh(np.cov(X, rowvar=False, ddof=ddof) + bias_on_covariance * np.eye(X.shape[1]))
    return X.mean(axis=0), V @ np.diag((np.maximum(eigenvalues, 0) + bias_on_eigenvalues) ** -0.5) @ V.T


def test_unsup_zca_uses_the_unbiased_covariance_and_epsilon_on_eigenvalues():
    rng = np.random.RandomState(2)
    X = rng.randn(40, 5) @ rng.randn(5, 5) * np.array([3., 1., 0.1, 0.01, 0.003])
    mean, P = t7.unsup_zca_fit(X.astype(np.float32), epsilon=1e-3)
    ref_mean, ref_P = zca_matrix(X.astype(np.float32).astype(np.float64), bias_on_eigenvalues=1e-3, ddof=1)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-10)
    np.testing.assert_allclose(P, ref_P, rtol=1e-7, atol=1e-9)


def test_cifar10_pipeline_split_rescale_and_double_zca():
    rng = np.random.RandomState(3)
    mixing = rng.randn(12, 12)
    X_train = np.clip(rng.randn(50, 12) @ mixing * 20 + 128, 0, 255).astype(np.uint8).reshape(50, 3, 2, 2)
    X_test = np.clip(rng.randn(9, 12) @ mixing * 20 + 128, 0, 255).astype(np.uint8).reshape(9, 3, 2, 2)
    y_train, y_test = rng.randint(0, 10, 50), rng.randint(0, 10, 9)
    data = t7.cifar10_from_raw(X_train, y_train, X_test, y_test)
    assert data["X_train"].shape == (45, 3, 2, 2) and data["X_val"].shape == (5, 3, 2, 2)
    np.testing.assert_array_equal(data["y_train"], pm1(y_train[:45]))
    np.testing.assert_array_equal(data["y_val"], pm1(y_train[44:49]))       # row 44 in both, row 49 unused
    np.testing.assert_array_equal(data["y_test"], pm1(y_test))

    def unit(X):
        X = X.reshape(len(X), -1).astype(np.float64)
        return (X - X.min()) / (X.max() - X.min())

    sets = [unit(X_train[:45]), unit(X_train[44:49]), unit(X_test)]
    for bias_cov, bias_eig, ddof in ((0.1, 0., 0), (0., 1e-5, 1)):          # dp's ZCA, then unsup's
        mean, P = zca_matrix(sets[0], bias_cov, bias_eig, ddof)
        sets = [(X - mean) @ P for X in sets]
    for name, expected in zip(("X_train", "X_val", "X_test"), sets):
        np.testing.assert_allclose(data[name].reshape(len(expected), -1), expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.cov(sets[0], rowvar=False), np.eye(12), atol=5e-3)   # near-complete whitening


def write_cifar_tarball(folder, n_per_batch=4, n_test=3, seed=0):
    rng = np.random.RandomState(seed)
    images, labels = {}, {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    os.makedirs(folder, exist_ok=True)
    with tarfile.open(os.path.join(folder, "cifar-10-python.tar.gz"), "w:gz") as tar:
        for name in names:
            n = n_test if name == "test_batch" else n_per_batch
            images[name] = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
            labels[name] = [int(v) for v in rng.randint(0, 10, size=n)]
            payload = pickle.dumps({b"data": images[name], b"labels": labels[name]}, protocol=2)
            info = tarfile.TarInfo("cifar-10-batches-py/" + name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    X_train = np.concatenate([images[n] for n in names[:5]]).reshape(-1, 3, 32, 32)
    return X_train, np.concatenate([labels[n] for n in names[:5]]), images["test_batch"].reshape(-1, 3, 32, 32)


def test_cifar10_data_passes_the_raw_sets_and_caches(tmp_path, monkeypatch):
    X_train, y_train, X_test = write_cifar_tarball(str(tmp_path / "raw"))
    calls = []

    def stand_in(*raw):        # the pipeline itself is tested above; here only what it receives and the cache
        calls.append(raw)
        return {"X_train": raw[0][:2].astype(np.float32), "y_train": pm1(raw[1][:2])}
    monkeypatch.setattr(t7, "cifar10_from_raw", stand_in)
    first = t7.cifar10_data(str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"), download=False)
    again = t7.cifar10_data(str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"), download=False)
    assert len(calls) == 1
    np.testing.assert_array_equal(calls[0][0], X_train)
    np.testing.assert_array_equal(calls[0][2], X_test)
    np.testing.assert_array_equal(again["X_train"], first["X_train"])
    assert [f["name"] for f in again["files"]] == ["cifar-10-python.tar.gz"]


# ---------------------------------------------------------------------------------------------------------------
# SVHN
# ---------------------------------------------------------------------------------------------------------------
def test_dp_gcn_formula():
    X = np.random.RandomState(4).rand(3, 3, 4, 4)
    out = t7.dp_gcn(X)
    for i in range(3):
        x = X[i].ravel()
        expected = (x - x.mean()) / np.sqrt(((x - x.mean()) ** 2).mean() + 10.)
        np.testing.assert_allclose(out[i].ravel(), expected, rtol=1e-12)


def test_dp_lecun_lcn_on_every_channel():
    """c = x - G * x (9x9 Gaussian, sigma 2, sum 1; full convolution cropped by 4), then c / (std(c) + 1e-4)."""
    X = np.random.RandomState(5).rand(2, 3, 12, 10).astype(np.float32)
    r = np.arange(9) - 4
    G = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 8.)
    G /= G.sum()
    out = t7.dp_lecun_lcn(X)
    for i in range(2):
        for c in range(3):
            x = X[i, c].astype(np.float64)
            centred = x - convolve2d(x, G, mode="full")[4:-4, 4:-4]
            np.testing.assert_allclose(out[i, c], centred / (centred.std(ddof=1) + 1e-4), rtol=1e-5, atol=1e-6)


def test_divide_by_max():
    X = np.array([[1., -4.], [2., 0.5]], np.float32)
    np.testing.assert_array_equal(t7.divide_by_max(X), [[0.5, -2.], [1., 0.25]])


def test_svhn_split_first_images_of_each_class():
    rng = np.random.RandomState(6)
    train = np.repeat(np.arange(1, 11), 410)
    rng.shuffle(train)
    extra = np.repeat(np.arange(1, 11), 205)
    rng.shuffle(extra)
    split = t7.svhn_split(train, extra)
    ids, idx = split["valid"]
    assert ids.size == 6000 and np.all(ids[:2000] == 1) and np.all(ids[2000:] == 0)
    for block, labels, per_class in ((slice(0, 2000), extra, 200), (slice(2000, 6000), train, 400)):
        expected = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(1, 11)])
        np.testing.assert_array_equal(idx[block], expected)                 # class by class, file order
    ids, idx = split["train"]
    assert ids.size == 100 + 50
    train_rest = sorted(idx[ids == 0])
    assert set(train_rest).isdisjoint(split["valid"][1][2000:]) and len(train_rest) == 100
    assert not np.array_equal(idx[ids == 0], np.sort(idx[ids == 0]))        # rows are permuted
    assert sorted(idx[ids == 1]) == sorted(set(range(2050)) - set(split["valid"][1][:2000]))


def test_svhn_pipeline_and_loader(tmp_path, monkeypatch):
    """Every set: [0, 1] (own min/max), GCN, LCN, / own max; then the training set's scalar z-score. Labels 1..10
    become 0..9 (10 = digit 0). The loader's split picks the first 2 (train) / 1 (extra) images per class here."""
    monkeypatch.setattr(t7, "SVHN_VALID_PER_CLASS", (2, 1))
    rng = np.random.RandomState(7)
    files = {}
    for name, n, per_class in (("train", 30, 2), ("extra", 20, 1), ("test", 5, 0)):
        y = np.concatenate([np.tile(np.arange(1, 11), per_class), rng.randint(1, 11, n - 10 * per_class)])
        rng.shuffle(y)
        X = rng.randint(0, 256, (32, 32, 3, n)).astype(np.uint8)
        files[name] = (X.transpose(3, 2, 0, 1), y)
        scipy.io.savemat(str(tmp_path / (name + "_32x32.mat")), {"X": X, "y": y.reshape(-1, 1).astype(np.uint8)})
    data = t7.svhn_data(str(tmp_path), cache_dir=str(tmp_path / "cache"), download=False)
    assert [f["name"] for f in data["files"]] == ["train_32x32.mat", "extra_32x32.mat", "test_32x32.mat"]

    split = t7.svhn_split(files["train"][1], files["extra"][1])
    sources = [files["train"], files["extra"]]
    sets = {part: (np.stack([sources[s][0][i] for s, i in zip(*split[part])]),
                   np.array([sources[s][1][i] for s, i in zip(*split[part])])) for part in ("train", "valid")}
    sets["test"] = files["test"]

    def before_z_score(images):
        out = []
        x = images.astype(np.float64)
        x = (x - x.min()) / (x.max() - x.min())
        for image in x:
            flat = image.ravel()
            g = ((flat - flat.mean()) / np.sqrt(((flat - flat.mean()) ** 2).mean() + 10.)).reshape(image.shape)
            out.append(t7.dp_lecun_lcn(g[None])[0])
        out = np.array(out, np.float64)
        return out / out.max()

    processed = {part: before_z_score(sets[part][0]) for part in sets}
    mean, std = processed["train"].mean(), processed["train"].std(ddof=1)
    assert data["X_train"].shape == (30 - 20 + 20 - 10, 3, 32, 32) and data["X_val"].shape == (30, 3, 32, 32)
    for part, name in (("train", "train"), ("valid", "val"), ("test", "test")):
        np.testing.assert_allclose(data["X_" + name], (processed[part] - mean) / std, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(data["y_" + name], pm1(sets[part][1] - 1))
