"""Readers and splits of plumbing/datasets.py on tiny files written in the official formats (tests/conftest.py)."""
import gzip
import hashlib
import os
import struct

import numpy as np
import pytest
import scipy.io

from plumbing import cli, datasets
from plumbing.errors import DataError

from conftest import error_lines


# --------------------------------------------------------------------------- MNIST / IDX
def test_read_idx_plain_and_gzip(tmp_path, idx_bytes):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    labels = np.array([3, 7, 0], np.uint8)
    (tmp_path / "im").write_bytes(idx_bytes(images))
    (tmp_path / "lab.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    got = datasets.read_idx(str(tmp_path / "im"))
    assert got.dtype == np.uint8 and got.shape == (2, 28, 28)
    np.testing.assert_array_equal(got, images)
    assert got[1, 0, 5] == (784 + 5) % 256  # hand-computed: row-major order
    np.testing.assert_array_equal(datasets.read_idx(str(tmp_path / "lab.gz")), [3, 7, 0])


@pytest.mark.parametrize("damage, message", [
    (lambda raw: struct.pack(">i", 2050) + raw[4:], "magic number 2050"),
    (lambda raw: raw[:-1], "truncated"),
    (lambda raw: raw[:6], "truncated"),
    (lambda raw: raw + b"\0", "after the data"),
])
def test_read_idx_rejects_damaged_files(tmp_path, idx_bytes, damage, message):
    path = tmp_path / "bad"
    path.write_bytes(damage(idx_bytes(np.zeros((2, 28, 28)))))
    with pytest.raises(DataError, match=message):
        datasets.read_idx(str(path))


def test_read_idx_rejects_truncated_gzip(tmp_path, idx_bytes):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 28, 28))))[:-20])
    with pytest.raises(DataError, match="damaged gzip"):
        datasets.read_idx(str(path))


def test_load_mnist_pm1_split_and_scaling(tmp_path, write_mnist):
    arrays = write_mnist(str(tmp_path), n_train=60, n_test=12)
    data = datasets.load_mnist("pm1", data_dir=str(tmp_path))
    x = arrays["train_images"].astype(np.float64)
    expected = 2 * (x / 255) - 1
    for key in ("X_train", "X_val", "X_test", "y_train", "y_val", "y_test"):
        assert data[key].dtype == np.float32, key
    assert data["X_train"].shape == (50, 1, 28, 28) and data["X_val"].shape == (10, 1, 28, 28)
    np.testing.assert_allclose(data["X_train"][:, 0], expected[:50], atol=1e-6, rtol=0)
    np.testing.assert_allclose(data["X_val"][:, 0], expected[50:], atol=1e-6, rtol=0)
    t = arrays["test_images"].astype(np.float64)
    np.testing.assert_allclose(data["X_test"][:, 0], 2 * (t / 255) - 1, atol=1e-6, rtol=0)
    labels = arrays["train_labels"]
    np.testing.assert_array_equal(data["y_val"], 2 * np.eye(10)[labels[50:]] - 1)
    np.testing.assert_array_equal(data["y_test"], 2 * np.eye(10)[arrays["test_labels"]] - 1)


def test_load_mnist_center_quirk(tmp_path, write_mnist):
    arrays = write_mnist(str(tmp_path / "mnist"), n_train=30, n_test=8, gz=False)
    data = datasets.load_mnist("center", data_dir=str(tmp_path))  # found in the mnist/ subfolder
    x = arrays["train_images"] / 255.0
    centred = x - x.mean(axis=0)  # mean over all training-file rows, train and validation alike
    np.testing.assert_allclose(data["X_train"][:, 0], centred[:25], atol=1e-6, rtol=0)
    np.testing.assert_allclose(data["X_val"][:, 0], centred[25:], atol=1e-6, rtol=0)
    t = arrays["test_images"] / 255.0
    np.testing.assert_allclose(data["X_test"][:, 0], t - t.mean(axis=0), atol=1e-6, rtol=0)  # its own mean


def test_load_mnist_official_size_split(tmp_path, write_mnist):
    """60000 training rows: train = rows 0-49999, validation = rows 50000-59999 (spec §3.1)."""
    arrays = write_mnist(str(tmp_path), n_train=60000, n_test=3, gz=False)
    data = datasets.load_mnist("pm1", data_dir=str(tmp_path))
    assert data["X_train"].shape == (50000, 1, 28, 28) and data["X_val"].shape == (10000, 1, 28, 28)
    x = arrays["train_images"].astype(np.float64)
    np.testing.assert_allclose(data["X_val"][0, 0], 2 * x[50000] / 255.0 - 1, atol=1e-6, rtol=0)
    np.testing.assert_allclose(data["X_train"][-1, 0], 2 * x[49999] / 255.0 - 1, atol=1e-6, rtol=0)


def test_mnist_missing_files_name_folder_and_files(tmp_path):
    with pytest.raises(DataError) as info:
        datasets.load_mnist("pm1", data_dir=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and "t10k-labels-idx1-ubyte" in message and "\n" not in message


def test_mnist_unofficial_files_are_read_with_a_note(tmp_path, write_mnist, capsys):
    write_mnist(str(tmp_path), n_train=12, n_test=2)
    datasets.load_mnist("pm1", str(tmp_path))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown data in MNIST's format" in err


def test_mnist_bad_transform_and_mismatched_files(tmp_path, write_mnist, idx_bytes):
    arrays = write_mnist(str(tmp_path), n_train=12, n_test=2, gz=False)
    with pytest.raises(DataError, match="unknown MNIST transform 'bnn'; use one of pm1, center"):
        datasets.load_mnist("bnn", data_dir=str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3)))
    with pytest.raises(DataError, match="3 labels for 2 images"):
        datasets.load_mnist("pm1", data_dir=str(tmp_path))
    assert arrays  # files were written


def test_one_hot_pm1():
    got = datasets.one_hot_pm1(np.array([[2], [0], [9]], np.uint8))
    assert got.dtype == np.float32 and got.shape == (3, 10)
    np.testing.assert_array_equal(got, 2 * np.eye(10)[[2, 0, 9]] - 1)
    with pytest.raises(DataError, match="0..9"):
        datasets.one_hot_pm1([10])
    with pytest.raises(DataError):
        datasets.one_hot_pm1([1.5])


# --------------------------------------------------------------------------- CIFAR-10
def hand_made_batches(cifar10_batches):
    """Three images per batch; the first training image is R plane 10, G plane 20, B plane 30, G (1, 2) = 99."""
    batches = cifar10_batches(rows=3)
    image = np.repeat(np.array([10, 20, 30], np.uint8), 1024)
    image[1024 + 1 * 32 + 2] = 99
    batches["data_batch_1"][b"data"][0] = image
    return batches


@pytest.mark.parametrize("tarball", [True, False])
def test_load_cifar10_raw(tmp_path, tarball, cifar10_batches, write_cifar10):
    batches = hand_made_batches(cifar10_batches)
    write_cifar10(str(tmp_path), batches, tarball)
    x_train, y_train, x_test, y_test = datasets.load_cifar10_raw(str(tmp_path))
    assert x_train.dtype == np.uint8 and x_train.shape == (15, 3, 32, 32) and x_test.shape == (3, 3, 32, 32)
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    assert x_train[0, 0, 0, 0] == 10 and x_train[0, 2, 31, 31] == 30 and x_train[0, 1, 1, 2] == 99
    assert x_train[0, 1, 2, 1] == 20
    expected = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal(x_train.reshape(15, 3072), expected)
    np.testing.assert_array_equal(y_train, sum((batches[f"data_batch_{i}"][b"labels"]
                                                for i in range(1, 6)), []))
    np.testing.assert_array_equal(x_test.reshape(3, 3072), batches["test_batch"][b"data"])
    np.testing.assert_array_equal(y_test, batches["test_batch"][b"labels"])


def test_cifar10_md5_note_for_user_folder_error_for_download_cache(tmp_path, capsys, monkeypatch, write_cifar10):
    write_cifar10(str(tmp_path / "user"), rows=3)
    datasets.load_cifar10_raw(str(tmp_path / "user"))
    assert "unknown data in CIFAR-10's python format" in capsys.readouterr().err

    blobs = write_cifar10(str(tmp_path / "cache" / "cifar10"), rows=3).blobs
    monkeypatch.setattr(datasets, "DEFAULT_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="differ from the official CIFAR-10"):
        datasets.load_cifar10_raw(download=False)
    monkeypatch.setattr(datasets, "CIFAR10_BATCH_MD5", {n: hashlib.md5(b).hexdigest() for n, b in blobs.items()})
    x_train, _, _, _ = datasets.load_cifar10_raw(download=False)
    assert x_train.shape == (15, 3, 32, 32)


def test_cifar10_missing_truncated_and_hostile_files(tmp_path, cifar10_batches, write_cifar10):
    with pytest.raises(DataError, match="CIFAR-10 not found in"):
        datasets.load_cifar10_raw(str(tmp_path))
    path = write_cifar10(str(tmp_path / "cut"), rows=3).path
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="damaged or truncated"):
        datasets.load_cifar10_raw(str(tmp_path / "cut"))

    class Hostile:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    batches = cifar10_batches(rows=3)
    batches["data_batch_2"][b"labels"] = Hostile()
    write_cifar10(str(tmp_path / "evil"), batches)
    with pytest.raises(DataError, match="data_batch_2 cannot be read"):
        datasets.load_cifar10_raw(str(tmp_path / "evil"))
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- SVHN
def image_key(chw):
    return chw.tobytes()


def test_svhn_orientation_and_labels(tmp_path, write_svhn):
    written = write_svhn(str(tmp_path), {"train": 2, "test": 2})
    x, y = written["test"]
    x[:, :, :, 0] = 0
    x[1, 2, 0, 0] = 200   # red pixel at row 1, column 2
    x[5, 3, 2, 0] = 77    # blue pixel at row 5, column 3
    y[0] = 10             # digit 0
    scipy.io.savemat(str(tmp_path / "test_32x32.mat"), {"X": x, "y": y.reshape(-1, 1)})
    sets = datasets.load_svhn_raw(str(tmp_path), use_extra=False, valid_per_class_train=1)
    xt, yt = sets["test"]
    assert xt.dtype == np.uint8 and xt.shape == (20, 3, 32, 32) and yt.dtype == np.int64
    k = int(np.flatnonzero(xt.reshape(20, -1).sum(axis=1) == 277)[0])
    assert xt[k, 0, 1, 2] == 200 and xt[k, 2, 5, 3] == 77 and yt[k] == 9
    lookup = {image_key(x[:, :, :, i].transpose(2, 0, 1)): int(y[i]) - 1 for i in range(20)}
    assert sorted(lookup[image_key(img)] for img in xt) == sorted(lookup.values())
    assert all(lookup[image_key(img)] == label for img, label in zip(xt, yt))


def test_svhn_split_balanced_disjoint_and_complete(tmp_path, write_svhn):
    written = write_svhn(str(tmp_path / "SVHN" / "format2"), {"train": 5, "extra": 4, "test": 1})
    sets = datasets.load_svhn_raw(str(tmp_path), valid_per_class_train=2, valid_per_class_extra=1)
    (xv, yv), (xtr, ytr) = sets["valid"], sets["train"]
    assert xv.shape == (30, 3, 32, 32) and xtr.shape == (60, 3, 32, 32)
    np.testing.assert_array_equal(np.bincount(yv, minlength=10), [3] * 10)  # class-balanced
    origin = {}
    for name in ("train", "extra"):
        x, y = written[name]
        for i in range(y.size):
            origin[image_key(x[:, :, :, i].transpose(2, 0, 1))] = (name, i, int(y[i]) - 1)
    valid_keys = [image_key(img) for img in xv]
    train_keys = [image_key(img) for img in xtr]
    assert not set(valid_keys) & set(train_keys)                    # disjoint
    assert sorted(valid_keys + train_keys) == sorted(origin)         # every image exactly once
    assert [origin[k][2] for k in valid_keys] == list(yv)            # labels travel with images
    assert [origin[k][2] for k in train_keys] == list(ytr)
    from_extra = [origin[k][2] for k in valid_keys if origin[k][0] == "extra"]
    np.testing.assert_array_equal(np.bincount(from_extra, minlength=10), [1] * 10)


def test_svhn_split_follows_the_pylearn2_rule(tmp_path, write_svhn):
    """Reference written from spec §3.3 on indices: one RandomState(322); per label 1..10 shuffle that label's
    indices and keep the first k (train, then extra); then permute each set with the rng continuing."""
    written = write_svhn(str(tmp_path), {"train": 4, "extra": 3, "test": 2})
    sets = datasets.load_svhn_raw(str(tmp_path), valid_per_class_train=2, valid_per_class_extra=1)
    rng = np.random.RandomState(322)
    valid, rest = [], []
    for name, k in (("train", 2), ("extra", 1)):
        y = written[name][1]
        chosen = set()
        for label in range(1, 11):
            idx = [i for i in range(y.size) if y[i] == label]
            rng.shuffle(idx)
            chosen.update(idx[:k])
        valid += [(name, i) for i in sorted(chosen)]
        rest += [(name, i) for i in range(y.size) if i not in chosen]
    state = rng.get_state()
    for set_name, rows in (("valid", valid), ("train", rest)):
        rng.set_state(state)
        order = list(range(len(rows)))
        rng.shuffle(order)
        expected = np.stack([written[rows[j][0]][0][:, :, :, rows[j][1]].transpose(2, 0, 1) for j in order])
        np.testing.assert_array_equal(sets[set_name][0], expected)
        np.testing.assert_array_equal(sets[set_name][1], [written[rows[j][0]][1][rows[j][1]] - 1 for j in order])
    test_order = list(range(20))
    np.random.RandomState(322).shuffle(test_order)
    np.testing.assert_array_equal(sets["test"][0], written["test"][0].transpose(3, 2, 0, 1)[test_order])
    again = datasets.load_svhn_raw(str(tmp_path), valid_per_class_train=2, valid_per_class_extra=1)
    for name in sets:
        np.testing.assert_array_equal(again[name][0], sets[name][0])


def test_svhn_errors(tmp_path, write_svhn):
    write_svhn(str(tmp_path), {"train": 3, "test": 1})
    with pytest.raises(DataError, match="extra_32x32.mat.*--no-extra"):
        datasets.load_svhn_raw(str(tmp_path))
    with pytest.raises(DataError, match="fewer than the 400 per class"):
        datasets.load_svhn_raw(str(tmp_path), use_extra=False)
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="cannot be read as a MATLAB file"):
        datasets.load_svhn_raw(str(tmp_path), use_extra=False, valid_per_class_train=1)


# --------------------------------------------------------------------------- command line
def test_command_line_prints_the_shapes_or_one_error_line(tmp_path, write_mnist, capsys):
    write_mnist(str(tmp_path), n_train=12, n_test=2)
    assert cli.main_guard(datasets.main, ["mnist", "--data-dir", str(tmp_path)]) == 0
    assert "X_train: (10, 1, 28, 28)" in capsys.readouterr().out
    assert cli.main_guard(datasets.main, ["cifar10", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR-10 not found") and err.count("\n") == 1


@pytest.mark.slow
def test_module_command_line(tmp_path, write_mnist, run_command):
    write_mnist(str(tmp_path), n_train=12, n_test=2)
    ok = run_command(["-m", "plumbing.datasets", "mnist", "--data-dir", str(tmp_path)], timeout=60)
    assert ok.returncode == 0 and "X_train: (10, 1, 28, 28)" in ok.stdout
    bad = run_command(["-m", "plumbing.datasets", "cifar10", "--data-dir", str(tmp_path)], timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: CIFAR-10 not found")
    assert len(error_lines(bad.stderr)) == 1 and "Traceback" not in bad.stderr
