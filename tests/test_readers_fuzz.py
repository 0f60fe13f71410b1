"""Property-based fuzz of the file readers (issue 13): whatever bytes a data or model file holds, reading it gives
either data of the documented type or one ArchiveError with a one-line message, never another exception and
never a hang.

Readers: MNIST IDX (plain and gzipped), CIFAR-10 pickled batches and the tarball, SVHN .mat files, and the .npz
models of binary_inference.py (parameter files and packed exports). Inputs are arbitrary byte strings,
mutations of small valid files (truncations, bit flips, inserted, deleted and overwritten bytes) and valid
containers holding values of the wrong kind. Each example runs under a hang guard (SIGALRM) and a deadline.

The default profile is derandomized and sized to take about 20-30 s; for a longer random search set
BINARYNET_FUZZ_EXAMPLES (e.g. 5000) to that many examples per test.
"""
import contextlib
import gzip
import io
import os
import pickle
import signal
import struct
import tarfile
import time
from datetime import timedelta

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import binary_inference
from plumbing import datasets
from plumbing.errors import ArchiveError

EXAMPLES = int(os.environ.get("BINARYNET_FUZZ_EXAMPLES", "0"))
HANG_SECONDS = 20


def fuzz_settings(examples):
    """`examples` per test by default (derandomized: the same examples every run), or BINARYNET_FUZZ_EXAMPLES
    random ones."""
    return settings(max_examples=EXAMPLES or examples, derandomize=not EXAMPLES, database=None,
                    deadline=timedelta(seconds=5), print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class ReaderHang(BaseException):
    """Raised by the hang guard; a BaseException so that no reader's `except Exception` can swallow it."""


@contextlib.contextmanager
def hang_guard(seconds=HANG_SECONDS):
    def expire(signum, frame):
        raise ReaderHang(f"the reader ran for more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_or_refuse(read, *args):
    """read(*args), or None when it raises an ArchiveError whose message is one non-empty line.

    Any other exception (and ReaderHang) propagates and fails the property."""
    with hang_guard():
        try:
            return read(*args)
        except ArchiveError as err:
            message = str(err)
            assert message.strip() and "\n" not in message, repr(message)
            return None


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def write(folder, name, raw):
    path = os.path.join(str(folder), name)
    with open(path, "wb") as f:
        f.write(raw)
    return path


# ---------------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------------
any_bytes = st.binary(max_size=3000)
positions = st.one_of(st.integers(0, 80), st.integers(0, 2 ** 31))  # headers get most of the damage
operations = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]), positions,
                                st.integers(0, 7), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4)


def mutate(raw, ops):
    """Apply (operation, position, bit, payload) edits to a copy of raw."""
    data = bytearray(raw)
    for op, pos, bit, payload in ops:
        i = pos % (len(data) + 1)
        if op == "flip" and i < len(data):
            data[i] ^= 1 << bit
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = payload
        elif op == "delete":
            del data[i:i + len(payload)]
        elif op == "overwrite":
            data[i:i + len(payload)] = payload
    return bytes(data)


# ---------------------------------------------------------------------------------------------------------
# Small valid files, written from the format descriptions (ORIGINALS.md §3)
# ---------------------------------------------------------------------------------------------------------
def idx_bytes(array):
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(">" + "i" * (1 + array.ndim), magic, *array.shape) + array.astype(np.uint8).tobytes()


VALID_IDX = [idx_bytes(np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256), idx_bytes(np.array([3, 1, 4, 1, 5]))]


def cifar_batch(rows=2, labels=None, data=None):
    data = np.arange(rows * 3072).reshape(rows, 3072).astype(np.uint8) if data is None else data
    labels = [i % 10 for i in range(rows)] if labels is None else labels
    return pickle.dumps({b"batch_label": b"fuzz", b"data": data, b"labels": labels}, protocol=2)


def cifar_tar(batches, member_type=tarfile.REGTYPE):
    """Uncompressed tar bytes of the cifar-10-batches-py folder; data_batch_3 gets `member_type`."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, blob in batches.items():
            info = tarfile.TarInfo("cifar-10-batches-py/" + name)
            if name == "data_batch_3" and member_type != tarfile.REGTYPE:
                info.type, info.linkname = member_type, "cifar-10-batches-py/data_batch_1"
                tar.addfile(info)
            else:
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return out.getvalue()


VALID_BATCHES = {name: cifar_batch() for name in datasets.CIFAR10_BATCHES}
VALID_TAR = cifar_tar(VALID_BATCHES)


def mat_bytes(variables, compress=False):
    out = io.BytesIO()
    scipy.io.savemat(out, variables, do_compression=compress)
    return out.getvalue()


SVHN_X = (np.arange(32 * 32 * 3 * 2) % 251).astype(np.uint8).reshape(32, 32, 3, 2)
VALID_MATS = [mat_bytes({"X": SVHN_X, "y": np.array([[10], [3]], np.uint8)}, compress)
              for compress in (False, True)]


def model_arrays(widths=(5, 3, 2)):
    """A BinaryNet parameter file's arrays (§2.5): per block W, b, beta, gamma, mean, inv_std."""
    rng = np.random.RandomState(0)
    arrays = []
    for fan_in, units in zip(widths[:-1], widths[1:]):
        arrays += [rng.uniform(-1, 1, (fan_in, units)).astype(np.float32)]
        arrays += [rng.uniform(-1, 1, units).astype(np.float32) for _ in range(3)]
        arrays += [rng.uniform(-1, 1, units).astype(np.float32), rng.uniform(0.5, 2, units).astype(np.float32)]
    return arrays


def npz_bytes(arrays, compressed=False):
    """numpy.savez (or savez_compressed) of a list (arr_0, arr_1 ...) or a dict of arrays, as bytes."""
    out, save = io.BytesIO(), np.savez_compressed if compressed else np.savez
    if isinstance(arrays, dict):
        save(out, **arrays)
    else:
        save(out, *arrays)
    return out.getvalue()


VALID_MODELS = [npz_bytes(model_arrays(), compressed) for compressed in (False, True)]


# ---------------------------------------------------------------------------------------------------------
# The harness can fail
# ---------------------------------------------------------------------------------------------------------
def test_harness_lets_other_exceptions_and_hangs_through():
    with pytest.raises(KeyError):
        read_or_refuse(lambda: {}["missing"])
    start = time.monotonic()
    with pytest.raises(ReaderHang):
        with hang_guard(0.2):
            try:
                time.sleep(5)
            except Exception:  # a reader's broad handler must not swallow the guard
                pass
    assert time.monotonic() - start < 2
    with pytest.raises(AssertionError):
        read_or_refuse(lambda: (_ for _ in ()).throw(ArchiveError("two\nlines")))


# ---------------------------------------------------------------------------------------------------------
# MNIST IDX
# ---------------------------------------------------------------------------------------------------------
def check_idx(path):
    array = read_or_refuse(datasets.read_idx, path)
    if array is not None:
        assert array.dtype == np.uint8 and array.ndim in (1, 3)


@fuzz_settings(250)
@given(raw=any_bytes, packed=st.booleans())
def test_idx_any_bytes(folder, raw, packed):
    check_idx(write(folder, "any.gz", gzip.compress(raw) if packed else raw))


@fuzz_settings(250)
@given(which=st.sampled_from(VALID_IDX), ops=operations, packed=st.sampled_from(["plain", "gz", "gz-then-damage"]))
def test_idx_mutations(folder, which, ops, packed):
    if packed == "plain":
        raw = mutate(which, ops)
    elif packed == "gz":
        raw = gzip.compress(mutate(which, ops))
    else:
        raw = mutate(gzip.compress(which), ops)
    check_idx(write(folder, "mutated", raw))


@fuzz_settings(150)
@given(magic=st.sampled_from([2049, 2051, 2050, -1]), dims=st.lists(st.integers(-2 ** 31, 2 ** 31 - 1),
                                                                    min_size=0, max_size=3),
       body=st.binary(max_size=64))
def test_idx_headers(folder, magic, dims, body):
    raw = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in dims) + body
    check_idx(write(folder, "header", raw))


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10: pickled batches and the tarball
# ---------------------------------------------------------------------------------------------------------
def check_batch(raw):
    parsed = read_or_refuse(datasets._parse_cifar_batch, "data_batch_1", raw)
    if parsed is not None:
        data, labels = parsed
        assert data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
        assert labels.dtype == np.int64 and labels.shape == (data.shape[0],)
        assert labels.size == 0 or (labels.min() >= 0 and labels.max() <= 9)


@fuzz_settings(250)
@given(raw=st.one_of(any_bytes, st.builds(mutate, st.just(cifar_batch()), operations)))
def test_cifar_batch_bytes(raw):
    check_batch(raw)


label_values = st.one_of(st.integers(-3, 12), st.integers(), st.floats(), st.text(max_size=3), st.booleans(),
                         st.none(), st.lists(st.integers(0, 9), max_size=2), st.binary(max_size=2))
label_containers = st.one_of(
    st.lists(label_values, min_size=0, max_size=4),
    st.lists(st.integers(0, 9), min_size=0, max_size=4),
    st.builds(lambda v, d: np.array(v, dtype=d), st.lists(st.integers(-1, 10), max_size=4),
              st.sampled_from(["int64", "uint8", "float32", "bool", "int8"])),
    label_values)
data_values = st.one_of(
    st.builds(lambda rows, cols, d: np.zeros((rows, cols), dtype=d), st.integers(0, 4),
              st.sampled_from([3072, 3071, 1]), st.sampled_from(["uint8", "float32", "int16"])),
    st.builds(lambda n: np.zeros(n, np.uint8), st.integers(0, 3)),
    label_values)


@fuzz_settings(250)
@given(labels=label_containers, data=data_values)
def test_cifar_batch_values(labels, data):
    check_batch(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))


def check_tarball(folder, raw):
    data_dir = os.path.join(str(folder), "cifar")
    os.makedirs(data_dir, exist_ok=True)
    write(data_dir, datasets.CIFAR10_TARBALL, raw)
    data = read_or_refuse(datasets.read_cifar10, data_dir, False)
    if data is not None:
        assert data["X_train"].dtype == np.uint8 and data["X_train"].shape[1:] == (3, 32, 32)
        assert len(data["files"]) == 1 and data["files"][0]["name"] == datasets.CIFAR10_TARBALL


@fuzz_settings(150)
@given(raw=st.one_of(any_bytes, st.builds(gzip.compress, any_bytes),
                     st.builds(lambda ops: gzip.compress(mutate(VALID_TAR, ops)), operations),
                     st.builds(lambda ops: mutate(gzip.compress(VALID_TAR), ops), operations)))
def test_cifar_tarball_bytes(folder, raw):
    check_tarball(folder, raw)


@fuzz_settings(30)
@given(member_type=st.sampled_from([tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE,
                                    tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]))
def test_cifar_tarball_member_types(folder, member_type):
    check_tarball(folder, gzip.compress(cifar_tar(VALID_BATCHES, member_type)))


# ---------------------------------------------------------------------------------------------------------
# SVHN .mat
# ---------------------------------------------------------------------------------------------------------
def check_mat(path):
    parsed = read_or_refuse(datasets._read_svhn_mat, path)
    if parsed is not None:
        x, y = parsed
        assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[:3] == (32, 32, 3)
        assert y.dtype == np.int64 and y.shape == (x.shape[3],)
        assert y.size == 0 or (y.min() >= 1 and y.max() <= 10)


@fuzz_settings(250)
@given(raw=st.one_of(any_bytes, st.builds(mutate, st.sampled_from(VALID_MATS), operations)))
def test_svhn_mat_bytes(folder, raw):
    check_mat(write(folder, "any.mat", raw))


mat_values = st.one_of(
    st.builds(lambda shape, d: np.ones(shape, dtype=d), st.lists(st.integers(0, 3), min_size=1, max_size=4),
              st.sampled_from(["uint8", "float64", "int32", "bool"])),
    st.builds(lambda v: np.array(v, dtype=np.float64).reshape(-1, 1), st.lists(st.floats(-20, 20), max_size=2)),
    st.text(max_size=4),
    st.builds(lambda v: np.array([v, "x"], dtype=object), st.integers(0, 10)),
    st.just(SVHN_X), st.just(np.array([[10], [3]], np.uint8)), st.just(np.array([[10, 3]], np.float64)))


@fuzz_settings(150)
@given(x=mat_values, y=mat_values, compress=st.booleans())
def test_svhn_mat_values(folder, x, y, compress):
    check_mat(write(folder, "values.mat", mat_bytes({"X": x, "y": y}, compress)))


# ---------------------------------------------------------------------------------------------------------
# binary_inference .npz models
# ---------------------------------------------------------------------------------------------------------
def check_model(folder, path):
    blocks = read_or_refuse(binary_inference.load_blocks, path)
    if blocks is not None:
        assert len(blocks) >= 2 and all(b.W.dtype == np.float32 and min(b.W.shape) > 0 for b in blocks)
        packed = os.path.join(str(folder), "packed.npz")
        read_or_refuse(binary_inference.export_packed, path, packed)   # an accepted model exports
        check_packed(path=packed, fan_in=blocks[0].W.shape[0])


def check_packed(path, fan_in=None):
    model = read_or_refuse(binary_inference.load_packed, path)
    if model is not None:   # an accepted packed model runs
        fan_in = fan_in or int(model["widths"][0])
        if fan_in <= 4096:
            predictions = binary_inference.run_packed(path, np.ones((2, fan_in), np.float32))
            assert predictions.shape == (2,)


@fuzz_settings(250)
@given(raw=st.one_of(any_bytes, st.builds(lambda b: b"PK\x03\x04" + b, any_bytes),
                     st.builds(mutate, st.sampled_from(VALID_MODELS), operations)))
def test_model_bytes(folder, raw):
    check_model(folder, write(folder, "model.npz", raw))


array_values = st.builds(lambda shape, d, fill: np.full(shape, fill).astype(d),
                         st.lists(st.integers(0, 4), max_size=3),
                         st.sampled_from(["float32", "float64", "int32", "uint8", "float16"]),
                         st.sampled_from([0.0, 1.5, -1.0, np.inf, np.nan]))


@fuzz_settings(150)
@given(edits=st.dictionaries(st.sampled_from([f"arr_{i}" for i in range(13)] + ["x", "arr_x"]),
                             st.one_of(st.none(), array_values), max_size=3))
def test_model_values(folder, edits):
    arrays = {f"arr_{i}": a for i, a in enumerate(model_arrays())}
    for name, value in edits.items():
        if value is None:
            arrays.pop(name, None)
        else:
            arrays[name] = value
    check_model(folder, write(folder, "values.npz", npz_bytes(arrays)))


@pytest.fixture(scope="module")
def packed_arrays(tmp_path_factory):
    folder = tmp_path_factory.mktemp("packed")
    model = write(folder, "model.npz", VALID_MODELS[0])
    binary_inference.export_packed(model, os.path.join(str(folder), "packed.npz"))
    with np.load(os.path.join(str(folder), "packed.npz")) as data:
        return {key: data[key] for key in data.files}


@fuzz_settings(150)
@given(edits=st.dictionaries(st.sampled_from(["format", "version", "widths", "w0", "w1", "bn0", "bn1", "extra"]),
                             st.one_of(st.none(), array_values,
                                       st.builds(lambda v: np.array(v, dtype=np.int64),
                                                 st.lists(st.integers(-2, 2 ** 40), max_size=4))), max_size=3))
def test_packed_model_values(folder, packed_arrays, edits):
    arrays = dict(packed_arrays)
    for name, value in edits.items():
        if value is None:
            arrays.pop(name, None)
        else:
            arrays[name] = value
    check_packed(write(folder, "packed-values.npz", npz_bytes(arrays)))
