"""Crafted bad inputs through the real command lines (issue 13, J and K): each gives a non-zero exit status and
exactly one line on stderr naming the problem (or, for an unwritable cache, the right result and one note);
plus the identity of the data files every loader reports ('files', issue 13 H).

Read-only folders: the tests run as root, and root ignores permission bits, so the command runs without the
capabilities that let root override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH dropped from its bounding set
before exec); a chmod 0555 folder is then read-only for it. A full disk is a file-size limit (RLIMIT_FSIZE):
Python ignores SIGXFSZ, so a write past the limit fails with EFBIG as on a full disk.
"""
import ctypes
import errno
import gzip
import hashlib
import io
import json
import os
import pickle
import resource
import stat
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import scipy.io

import binary_inference
from plumbing import datasets
from plumbing.errors import DataError

from conftest import invert_first_npy_header

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


# ---------------------------------------------------------------------------------------------------------
# Running a command
# ---------------------------------------------------------------------------------------------------------
def without_permission_override():
    """preexec_fn: as root, drop the capabilities that bypass file permissions (for this process and what it
    executes); as another user permissions already apply."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def file_size_limit(limit):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return preexec


def run(args, preexec=None, env=None, timeout=300):
    """Run `python args...` in the repository; returns the CompletedProcess (text)."""
    full_env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    return subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec, env=full_env)


def assert_one_line_error(result, *fragments):
    """Non-zero exit, exactly one line on stderr, no traceback, every fragment in that line."""
    lines = result.stderr.splitlines()
    assert result.returncode != 0, result.stdout + result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def read_only(path):
    os.chmod(path, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


# ---------------------------------------------------------------------------------------------------------
# Tiny files in the official formats (written from the format descriptions, ORIGINALS.md §3)
# ---------------------------------------------------------------------------------------------------------
MNIST_NAMES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def idx_bytes(array):
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(">" + "i" * (1 + array.ndim), magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(folder, n_train=12, n_test=3, gz=True, seed=0):
    """The four MNIST files; returns {key: (file bytes, unpacked bytes)}."""
    rng = np.random.RandomState(seed)
    arrays = {"train_images": rng.randint(0, 256, (n_train, 28, 28)), "train_labels": rng.randint(0, 10, n_train),
              "test_images": rng.randint(0, 256, (n_test, 28, 28)), "test_labels": rng.randint(0, 10, n_test)}
    os.makedirs(folder, exist_ok=True)
    written = {}
    for key, array in arrays.items():
        unpacked = idx_bytes(array)
        raw = gzip.compress(unpacked, mtime=0) if gz else unpacked
        with open(os.path.join(folder, MNIST_NAMES[key] + (".gz" if gz else "")), "wb") as f:
            f.write(raw)
        written[key] = (raw, unpacked)
    return written


def cifar_blob(rows=2, labels=None):
    data = (np.arange(rows * 3072) % 256).astype(np.uint8).reshape(rows, 3072)
    return pickle.dumps({b"data": data, b"labels": [i % 10 for i in range(rows)] if labels is None else labels},
                        protocol=2)


def write_cifar_tar(folder, third_batch=None, member_type=tarfile.REGTYPE):
    """cifar-10-python.tar.gz; data_batch_3 gets the blob `third_batch` or the tar entry type `member_type`."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "cifar-10-python.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for name in datasets.CIFAR10_BATCHES:
            info = tarfile.TarInfo("cifar-10-batches-py/" + name)
            if name == "data_batch_3" and member_type != tarfile.REGTYPE:
                info.type, info.linkname = member_type, "cifar-10-batches-py/data_batch_1"
                tar.addfile(info)
                continue
            blob = third_batch if name == "data_batch_3" and third_batch is not None else cifar_blob()
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def write_svhn(folder, per_class_train=401, per_class_test=1, seed=0):
    """train_32x32.mat and test_32x32.mat: X uint8 (32, 32, 3, N), y uint8 (N, 1) in 1..10."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    for name, per_class in (("train", per_class_train), ("test", per_class_test)):
        y = rng.permutation(np.repeat(np.arange(1, 11), per_class)).astype(np.uint8).reshape(-1, 1)
        x = rng.randint(0, 256, (32, 32, 3, y.shape[0])).astype(np.uint8)
        scipy.io.savemat(os.path.join(folder, name + "_32x32.mat"), {"X": x, "y": y})


# ---------------------------------------------------------------------------------------------------------
# MNIST files
# ---------------------------------------------------------------------------------------------------------
def mnist_check(data_dir):
    return run(["-m", "plumbing.datasets", "mnist", "--data-dir", str(data_dir)])


def test_mnist_directory_named_like_a_gz(tmp_path):
    write_mnist(str(tmp_path))
    os.remove(str(tmp_path / "t10k-images-idx3-ubyte.gz"))
    os.makedirs(str(tmp_path / "t10k-images-idx3-ubyte.gz"))
    assert_one_line_error(mnist_check(tmp_path), "t10k-images-idx3-ubyte.gz is a directory")


def test_mnist_truncated_idx(tmp_path):
    written = write_mnist(str(tmp_path), gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(written["train_images"][1][:-100])
    assert_one_line_error(mnist_check(tmp_path), "train-images-idx3-ubyte is truncated")


def test_mnist_garbage_gz(tmp_path):
    write_mnist(str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    assert_one_line_error(mnist_check(tmp_path), "train-labels-idx1-ubyte.gz is a damaged gzip file")


def test_mnist_garbage_plain_file(tmp_path):
    write_mnist(str(tmp_path), gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file at all")
    assert_one_line_error(mnist_check(tmp_path), "is not an MNIST IDX file")


def test_mnist_unknown_files_in_data_dir_are_read_with_one_note(tmp_path):
    write_mnist(str(tmp_path))
    result = mnist_check(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"note: {datasets.MNIST_UNKNOWN_NOTE} (all 4 files in {tmp_path}); reading "
                                          "them anyway"]


def test_mnist_unknown_files_in_the_download_folder_are_refused(tmp_path):
    write_mnist(str(tmp_path / "mnist"))
    result = run(["-m", "plumbing.datasets", "mnist"], env={"BINARYNET_DATA": str(tmp_path)})
    assert_one_line_error(result, "differ from the official MNIST (MD5)", "delete them to download them again")


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10 tarball
# ---------------------------------------------------------------------------------------------------------
def cifar_check(data_dir):
    return run(["-m", "plumbing.datasets", "cifar10", "--data-dir", str(data_dir)])


@pytest.mark.parametrize("member_type, kind", [(tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"),
                                               (tarfile.DIRTYPE, "directory"), (tarfile.CHRTYPE, "device"),
                                               (tarfile.FIFOTYPE, "device or FIFO")])
def test_cifar_batch_member_that_is_not_a_file(tmp_path, member_type, kind):
    write_cifar_tar(str(tmp_path), member_type=member_type)
    assert_one_line_error(cifar_check(tmp_path), "cifar-10-batches-py/data_batch_3 is a " + kind)


@pytest.mark.parametrize("labels, shown", [
    (["1", "2"], "a list holding str '1'"),
    ([1.0, 2.7], "a list holding float 1.0"),      # not truncated to 1 and 2
    ([[1, 2], [3]], "a list holding list [1, 2]"),  # ragged
    ([1, 2, 3], "3 labels for 2 images"),
    ([1, 10], "values outside 0..9"),
    (np.array([1.0, 2.0]), "an array of float64 (2,)"),
])
def test_cifar_bad_labels(tmp_path, labels, shown):
    write_cifar_tar(str(tmp_path), third_batch=cifar_blob(labels=labels))
    assert_one_line_error(cifar_check(tmp_path), "data_batch_3: 'labels' must be a list of 2 integers in 0..9",
                          "got " + shown)


def test_cifar_truncated_tarball(tmp_path):
    path = write_cifar_tar(str(tmp_path))
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[:len(raw) // 2])
    assert_one_line_error(cifar_check(tmp_path), "is damaged or truncated")


def test_cifar_memo_bomb_is_read_without_a_huge_memo(tmp_path):
    """A 9-byte LONG_BINPUT with index ~1.4e9 made the C unpickler allocate an 11 GB memo table (found by the
    fuzz). Under a 4 GB address-space limit the old reader failed with MemoryError ("cannot be read"); now the
    pickle is read ({'data': None}) and refused for what it holds."""
    bomb = b"\x80\x02}q\x00(X\x04\x00\x00\x00dataq\x01r_\x00\x08R" + b"N" + b"u."
    write_cifar_tar(str(tmp_path), third_batch=bomb)
    result = run(["-m", "plumbing.datasets", "cifar10", "--data-dir", str(tmp_path)],
                 preexec=lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.RLIM_INFINITY)),
                 timeout=60)
    assert_one_line_error(result, "CIFAR-10 batch data_batch_3: 'data' must be uint8 (n, 3072)")


# ---------------------------------------------------------------------------------------------------------
# SVHN .mat
# ---------------------------------------------------------------------------------------------------------
def svhn_check(data_dir):
    return run(["-m", "plumbing.datasets", "svhn", "--no-extra", "--data-dir", str(data_dir)])


def test_svhn_garbage_mat(tmp_path):
    write_svhn(str(tmp_path), per_class_train=1)
    (tmp_path / "train_32x32.mat").write_bytes(b"garbage" * 40)
    assert_one_line_error(svhn_check(tmp_path), "train_32x32.mat cannot be read as a MATLAB file")


@pytest.mark.parametrize("variables, shown", [
    ({"X": np.zeros((32, 32, 1, 2), np.uint8), "y": np.array([[1], [2]], np.uint8)}, "X must be uint8 (32, 32, 3, N)"),
    ({"X": np.zeros((32, 32, 3, 2), np.float32), "y": np.array([[1], [2]], np.uint8)}, "got float32"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1.5], [2]])}, "labels must be whole numbers 1..10"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 2), np.uint8)}, "y must be a vector of N labels"),
    ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": "ab"}, "y must be a vector of N labels"),
])
def test_svhn_wrong_shapes_and_types(tmp_path, variables, shown):
    write_svhn(str(tmp_path), per_class_train=1)
    scipy.io.savemat(str(tmp_path / "train_32x32.mat"), variables)
    assert_one_line_error(svhn_check(tmp_path), "train_32x32.mat", shown)


# ---------------------------------------------------------------------------------------------------------
# Model files and --export (binary_inference.py, mnist.py --runtime)
# ---------------------------------------------------------------------------------------------------------
WIDTHS = (784, 16, 16, 10)


@pytest.fixture
def model(tmp_path):
    path = str(tmp_path / "model.npz")
    binary_inference.write_random_model(path, widths=WIDTHS)
    return path


def inference(*args, **kwargs):
    return run(["binary_inference.py"] + list(args), **kwargs)


def test_runtime_with_a_npy_file(tmp_path):
    np.save(str(tmp_path / "x.npy"), np.zeros(3))
    result = run(["mnist.py", "--runtime", str(tmp_path / "x.npy")])
    assert_one_line_error(result, "x.npy is a single NumPy array (.npy), not a .npz model")


@pytest.mark.parametrize("content, shown", [
    (b"", "is empty (0 bytes)"),
    (b"PK\x05\x06" + b"\0" * 18, "is an empty .npz (no arrays)"),
    (b"just some text", "is not a .npz file"),
    (pickle.dumps([1, 2]), "is not a .npz file"),
])
def test_model_files_that_are_not_models(tmp_path, content, shown):
    (tmp_path / "m.npz").write_bytes(content)
    result = inference("--model", str(tmp_path / "m.npz"), "--random-inputs", "5")
    assert_one_line_error(result, shown)
    assert "pickled" not in result.stderr


def test_damaged_model(tmp_path, model):
    with open(model, "rb") as f:
        raw = f.read()
    (tmp_path / "cut.npz").write_bytes(raw[:len(raw) // 2])
    assert_one_line_error(inference("--model", str(tmp_path / "cut.npz"), "--random-inputs", "5"),
                          "is a damaged .npz file")


def test_model_with_a_damaged_array_header(tmp_path, model):
    """64 inverted bytes inside the first array's .npy header: NumPy's parser raises tokenize.TokenError."""
    with open(model, "rb") as f:
        (tmp_path / "flipped.npz").write_bytes(invert_first_npy_header(f.read()))
    assert_one_line_error(inference("--model", str(tmp_path / "flipped.npz"), "--random-inputs", "5"),
                          "is a damaged .npz file")


def test_model_with_object_arrays(tmp_path):
    np.savez(str(tmp_path / "obj.npz"), np.array([None, 1], dtype=object))
    assert_one_line_error(inference("--model", str(tmp_path / "obj.npz"), "--random-inputs", "5"),
                          "holds pickled Python objects, which are never loaded")


def test_model_with_a_zero_unit_layer(tmp_path):
    path = str(tmp_path / "zero.npz")
    arrays = []
    for fan_in, units in ((784, 16), (16, 0), (0, 10)):  # W, b, beta, gamma, mean, inv_std per block (§2.5)
        arrays += [np.ones((fan_in, units), np.float32)] + [np.ones(units, np.float32)] * 5
    np.savez(path, *arrays)
    assert_one_line_error(inference("--model", path, "--random-inputs", "5"),
                          "dense block 2: W has shape (16, 0), a layer with 0 inputs or 0 units")


def assert_not_evaluated(result):
    assert "run-time inference" not in result.stdout, "the export path must be checked before the evaluation"


def test_export_into_a_missing_folder(tmp_path, model):
    target = str(tmp_path / "missing" / "packed.npz")
    result = inference("--model", model, "--random-inputs", "5", "--export", target)
    assert_one_line_error(result, f"the folder {tmp_path / 'missing'} does not exist")
    assert_not_evaluated(result)


def test_export_into_a_read_only_folder(tmp_path, model):
    folder = tmp_path / "ro"
    folder.mkdir()
    read_only(str(folder))
    result = inference("--model", model, "--random-inputs", "5", "--export", str(folder / "packed.npz"),
                       preexec=without_permission_override)
    assert_one_line_error(result, f"cannot write in {folder}", "Permission denied")
    assert_not_evaluated(result)
    assert os.listdir(str(folder)) == []


def test_export_onto_the_model_itself_is_refused(tmp_path, model):
    with open(model, "rb") as f:
        before = f.read()
    os.link(model, str(tmp_path / "same.npz"))  # also under another name
    for target in (model, str(tmp_path / "same.npz")):
        result = inference("--model", model, "--random-inputs", "5", "--export", target)
        assert_one_line_error(result, "is the model file itself")
        assert_not_evaluated(result)
    with open(model, "rb") as f:
        assert f.read() == before


def test_export_is_atomic_on_a_full_disk(tmp_path, model, monkeypatch):
    """A write that fails half-way leaves the previous file as it was and no temporary file."""
    target = tmp_path / "packed.npz"
    target.write_bytes(b"previous export")

    def half_write(handle, **arrays):
        handle.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(binary_inference.np, "savez", half_write)
    with pytest.raises(binary_inference.InferenceError, match="could not write .*No space left on device"):
        binary_inference.export_packed(model, str(target))
    assert target.read_bytes() == b"previous export"
    assert sorted(os.listdir(str(tmp_path))) == ["model.npz", "packed.npz"]


def test_export_replaces_the_previous_file(tmp_path, model):
    target = tmp_path / "packed.npz"
    target.write_bytes(b"previous export")
    binary_inference.export_packed(model, str(target))
    assert binary_inference.load_packed(str(target))["widths"].tolist() == list(WIDTHS)
    assert sorted(os.listdir(str(tmp_path))) == ["model.npz", "packed.npz"]


def test_out_of_memory_names_batch_size_not_train_size(model):
    result = inference("--model", model, "--random-inputs", str(10 ** 9),
                       preexec=lambda: resource.setrlimit(resource.RLIMIT_AS, (8 << 30, resource.RLIM_INFINITY)))
    assert_one_line_error(result, "out of memory during run-time inference", "--batch-size")
    assert "--train-size" not in result.stderr


# ---------------------------------------------------------------------------------------------------------
# The preprocessing cache (python -m plumbing.preprocessing svhn, GCN + LCN)
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def svhn_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("svhn")
    write_svhn(str(folder))
    return folder


def preprocess(svhn_dir, cache_dir, preexec=None):
    return run(["-m", "plumbing.preprocessing", "svhn", "--no-extra", "--data-dir", str(svhn_dir),
                "--cache-dir", str(cache_dir)], preexec=preexec)


EXPECTED_SHAPES = ["X_test float32 (10, 3, 32, 32)", "X_train float32 (10, 3, 32, 32)",
                   "X_val float32 (4000, 3, 32, 32)"]


def cache_notes(result):
    return [line for line in result.stderr.splitlines() if "preprocessing cache" in line]


def assert_computed_without_cache(result, *reasons):
    """Exit 0, the arrays printed, and one note naming the cache, one of the reasons and what happens next."""
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:3] == EXPECTED_SHAPES
    notes = cache_notes(result)
    assert len(notes) == 1 and "continuing without it" in notes[0], result.stderr
    assert any(reason in notes[0] for reason in reasons), notes[0]
    assert "Traceback" not in result.stderr


def test_cache_on_a_read_only_disk(tmp_path, svhn_dir):
    cache = tmp_path / "cache"
    cache.mkdir()
    read_only(str(cache))
    result = preprocess(svhn_dir, cache, preexec=without_permission_override)
    assert_computed_without_cache(result, "Permission denied")
    assert os.listdir(str(cache)) == []


def test_cache_on_a_full_disk_leaves_no_temporary_folder(tmp_path, svhn_dir):
    cache = tmp_path / "cache"
    result = preprocess(svhn_dir, cache, preexec=file_size_limit(1 << 20))  # X_val needs 49 MB
    assert_computed_without_cache(result, "short write", "File too large")
    assert os.listdir(str(cache)) == []


def test_cache_manifest_with_no_arrays_is_rebuilt(tmp_path, svhn_dir):
    cache = tmp_path / "cache"
    assert preprocess(svhn_dir, cache).returncode == 0
    [folder] = os.listdir(str(cache))
    manifest_path = cache / folder / "manifest.json"
    built = np.load(str(cache / folder / "X_train.npy"))
    manifest = json.loads(manifest_path.read_text())
    manifest["arrays"] = {}
    manifest_path.write_text(json.dumps(manifest))
    result = preprocess(svhn_dir, cache)
    assert result.returncode == 0 and result.stdout.splitlines()[:3] == EXPECTED_SHAPES, result.stderr
    assert sorted(json.loads(manifest_path.read_text())["arrays"]) == ["X_test", "X_train", "X_val"]
    np.testing.assert_array_equal(np.load(str(cache / folder / "X_train.npy")), built)


def test_temporary_folder_of_a_killed_build_is_removed_at_start(tmp_path, svhn_dir):
    cache = tmp_path / "cache"
    leftover = cache / "svhn-gcn-lcn-0123.tmp-1"   # pid 1 runs, but nobody holds the lock file
    leftover.mkdir(parents=True)
    (leftover / ".writing").write_bytes(b"")
    (leftover / "X_val.npy").write_bytes(b"\0" * 4096)
    assert preprocess(svhn_dir, cache).returncode == 0
    assert not leftover.exists() and len(os.listdir(str(cache))) == 1


# ---------------------------------------------------------------------------------------------------------
# The identity of the data files ('files', issue 13 H)
# ---------------------------------------------------------------------------------------------------------
def test_mnist_files_identity(tmp_path, capsys):
    written = write_mnist(str(tmp_path))
    files = datasets.load_mnist("pm1", data_dir=str(tmp_path))["files"]
    assert [f["name"] for f in files] == [MNIST_NAMES[k] + ".gz" for k in MNIST_NAMES]
    for f, key in zip(files, MNIST_NAMES):
        raw = written[key][0]
        assert f == {"name": MNIST_NAMES[key] + ".gz", "bytes": len(raw), "md5": hashlib.md5(raw).hexdigest(),
                     "official": False, "note": datasets.MNIST_UNKNOWN_NOTE}
    capsys.readouterr()


def fake_table(written):
    return {key: hashlib.md5(unpacked).hexdigest() for key, (_, unpacked) in written.items()}


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_official_by_content(tmp_path, monkeypatch, capsys, gz):
    """A file is official when its unpacked data has the official MD5, gzipped or not (and in the download
    folder too, where official files give no note)."""
    written = write_mnist(str(tmp_path / "mnist"), gz=gz)
    monkeypatch.setattr(datasets, "MNIST_UNPACKED_MD5", fake_table(written))
    monkeypatch.setattr(datasets, "DEFAULT_DATA_DIR", str(tmp_path))
    for data_dir in (str(tmp_path), None):
        files = datasets.load_mnist("center", data_dir=data_dir, download=False)["files"]
        assert all(f["official"] and f["note"] is None for f in files)
    assert capsys.readouterr().err == ""


def test_fashion_mnist_note_is_the_same_in_both_folders(tmp_path, monkeypatch, capsys):
    written = write_mnist(str(tmp_path / "mnist"))
    monkeypatch.setattr(datasets, "MNIST_STAND_INS", {"Fashion-MNIST": fake_table(written)})
    monkeypatch.setattr(datasets, "DEFAULT_DATA_DIR", str(tmp_path))
    notes = []
    for data_dir in (str(tmp_path), None):
        files = datasets.load_mnist("pm1", data_dir=data_dir, download=False)["files"]
        assert all(not f["official"] and f["note"] == "files in MNIST's format that are not MNIST: Fashion-MNIST"
                   for f in files)
        notes.append(capsys.readouterr().err)
    assert notes[0] == notes[1] == ("note: files in MNIST's format that are not MNIST: Fashion-MNIST (all 4 files "
                                    f"in {tmp_path / 'mnist'}); reading them anyway\n")


def test_fashion_mnist_table_matches_the_debian_package():
    """When Debian's dataset-fashion-mnist is installed, its files are the ones the table names."""
    folder = "/usr/share/datasets/fashion-mnist"
    if not os.path.isdir(folder):
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    for key, name in MNIST_NAMES.items():
        with gzip.open(os.path.join(folder, name + ".gz"), "rb") as f:
            assert hashlib.md5(f.read()).hexdigest() == datasets.MNIST_STAND_INS["Fashion-MNIST"][key]


def test_cifar_files_identity(tmp_path, capsys):
    path = write_cifar_tar(str(tmp_path / "tar"))
    with open(path, "rb") as f:
        raw = f.read()
    [entry] = datasets.read_cifar10(str(tmp_path / "tar"))["files"]
    assert entry["name"] == "cifar-10-python.tar.gz" and entry["bytes"] == len(raw)
    assert entry["md5"] == hashlib.md5(raw).hexdigest() and not entry["official"]
    assert entry["note"].startswith(datasets.CIFAR10_UNKNOWN_NOTE)

    folder = tmp_path / "dir" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in datasets.CIFAR10_BATCHES:
        (folder / name).write_bytes(cifar_blob(rows=1 + len(name) % 3))
    files = datasets.read_cifar10(str(tmp_path / "dir"))["files"]
    assert [f["name"] for f in files] == datasets.CIFAR10_BATCHES
    assert all(f["md5"] == hashlib.md5((folder / f["name"]).read_bytes()).hexdigest() for f in files)
    assert all(f["bytes"] == os.path.getsize(str(folder / f["name"])) for f in files)
    capsys.readouterr()


def test_svhn_files_identity_and_download_folder_check(tmp_path, monkeypatch, capsys):
    write_svhn(str(tmp_path / "svhn"), per_class_train=1)
    data = datasets.load_svhn_raw(str(tmp_path), use_extra=False, valid_per_class_train=1)
    assert [f["name"] for f in data["files"]] == ["train_32x32.mat", "test_32x32.mat"]
    for f in data["files"]:
        raw = (tmp_path / "svhn" / f["name"]).read_bytes()
        assert f["md5"] == hashlib.md5(raw).hexdigest() and f["bytes"] == len(raw) and not f["official"]
    monkeypatch.setattr(datasets, "DEFAULT_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="differ from the official SVHN"):
        datasets.load_svhn_raw(use_extra=False, download=False, valid_per_class_train=1)
    official = {n: (name, None, hashlib.md5((tmp_path / "svhn" / name).read_bytes()).hexdigest())
                for n, (name, _, _) in datasets.SVHN_FILES.items() if n != "extra"}
    monkeypatch.setattr(datasets, "SVHN_FILES", dict(datasets.SVHN_FILES, **official))
    data = datasets.load_svhn_raw(use_extra=False, download=False, valid_per_class_train=1)
    assert all(f["official"] for f in data["files"])
    capsys.readouterr()
