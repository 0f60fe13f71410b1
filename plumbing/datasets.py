"""Raw data for the reproductions: downloads, file readers and the original train/validation/test splits.

This replaces the parts of pylearn2 the original scripts relied on (ORIGINALS.md §3). It needs only NumPy and
SciPy (for SVHN's MATLAB files) and never imports Theano.

Folders: with ``data_dir=None`` files live under DEFAULT_DATA_DIR (``$BINARYNET_DATA`` or
``~/.cache/binarynet-archive/data``), in ``mnist/``, ``cifar10/`` and ``svhn/``, and are downloaded when missing.
An explicit ``data_dir`` (the scripts' ``--data-dir``) is only read, never written: missing files raise DataError.

Command line: ``python -m plumbing.datasets {mnist,cifar10,svhn} [--data-dir DIR] [--no-extra]`` fetches (or checks) a
data set and prints the shapes of what it loads.
"""
import codecs
import gzip
import hashlib
import http.client
import io
import os
import pickle
import socket
import stat
import struct
import sys
import tarfile
import time
import urllib.error
import urllib.request
import warnings
import zlib

import numpy as np
import scipy.io

from plumbing import cli
from plumbing.errors import DataError


DEFAULT_DATA_DIR = os.path.abspath(os.path.expanduser(
    os.environ.get("BINARYNET_DATA", "~/.cache/binarynet-archive/data")))

# ---------------------------------------------------------------------------------------------------------
# Official files (ORIGINALS.md §3.5)
# ---------------------------------------------------------------------------------------------------------
MNIST_MIRRORS = [
    "http://yann.lecun.com/exdb/mnist/",              # official, often down
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # identical files (same MD5)
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
# key -> (file name without .gz, size of the .gz, MD5 of the .gz)
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", 9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte", 28881, "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte", 1648877, "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte", 4542, "ec29112dd5afa0611ce80d1b7f02629c"),
}
# key -> MD5 of the unpacked IDX file (the same data whether the file is gzipped, recompressed or unpacked)
MNIST_UNPACKED_MD5 = {
    "train_images": "6bbc9ace898e44ae57da46a324031adb",
    "train_labels": "a25bea736e30d166cdddb491f175f624",
    "test_images": "2646ac647ad5339dbf082846283269ea",
    "test_labels": "27ae3e4e09519cfbb04c329615203637",
}
# Known files in MNIST's format that are not MNIST (docs/data.md): name -> {key: MD5 of the unpacked file}.
MNIST_STAND_INS = {
    "Fashion-MNIST": {  # Zalando Research; Debian's dataset-fashion-mnist package ships these files
        "train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
        "test_images": "8181f5470baa50b63fa0f6fddb340f0a",
        "test_labels": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
MNIST_UNKNOWN_NOTE = "unknown data in MNIST's format (MD5 differs from the official MNIST files)"
MNIST_TRANSFORMS = ("pm1", "center")  # 2x - 1 (BinaryNet); minus the per-pixel mean (BinaryConnect)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_SIZE = 170498071
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_UNKNOWN_NOTE = "unknown data in CIFAR-10's python format"
CIFAR10_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
# name -> (file, size or None when unknown, MD5)
SVHN_FILES = {
    "train": ("train_32x32.mat", 182040794, "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", 64275384, "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("extra_32x32.mat", None, "a93ce644f1a588dc4d68dda5feec44a7"),
}
SVHN_UNKNOWN_NOTE = "unknown data in SVHN's format 2 (MD5 differs from the official files)"
SVHN_SEED = 322

_CHUNK = 1 << 16


# ---------------------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------------------
def file_digest(path, algorithm="md5"):
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Progress:
    """Plain-text progress line on stderr, redrawn at most every 0.25 s."""

    def __init__(self, name, total, enabled):
        self.name, self.total, self.enabled, self.last = name, total, enabled, time.monotonic()

    def show(self, done, final=False):
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < 0.25):
            return
        self.last = now
        mb = done / 1e6
        if self.total:
            text = f"\r  {self.name}: {mb:.1f} / {self.total / 1e6:.1f} MB ({100.0 * done / self.total:3.0f}%)"
        else:
            text = f"\r  {self.name}: {mb:.1f} MB"
        sys.stderr.write(text + ("\n" if final else ""))
        sys.stderr.flush()


def _fetch_once(url, part, timeout, progress):
    """One HTTP request appending to `part` (Range request when it already holds bytes).

    Returns (complete, total): complete is False when the connection ended before the announced length.
    Raises urllib/socket errors for failures that are worth trying another mirror for.
    """
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "binarynet-archive"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part may already be whole
            return True, have
        raise
    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if status == 206 and response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            mode, start = "ab", have
        else:  # server ignored the Range header (or answered oddly): start again from zero
            mode, start = "wb", 0
        total = start + length if length is not None else None
        bar = _Progress(os.path.basename(part[:-5]), total, progress)
        done = start
        with open(part, mode) as out:
            try:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    done += len(block)
                    bar.show(done)
            except (http.client.IncompleteRead, ConnectionError, socket.timeout):
                bar.show(done, final=True)
                return False, total
        bar.show(done, final=True)
    return total is None or done >= total, total


def _check_file(path, md5, sha256, size):
    """Return None when `path` matches the given size/digests, else a short description of the mismatch."""
    actual = os.path.getsize(path)
    if size is not None and actual != size:
        return f"size {actual} bytes, expected {size}"
    if md5 is not None and file_digest(path, "md5") != md5.lower():
        return "MD5 mismatch"
    if sha256 is not None and file_digest(path, "sha256") != sha256.lower():
        return "SHA-256 mismatch"
    return None


def download_file(urls, path, md5=None, sha256=None, size=None, progress=True, timeout=30):
    """Download one file to `path`, trying each URL in turn (official first, then identical mirrors).

    Bytes go to `path + '.part'`; a transfer cut short is resumed with an HTTP Range request (also across
    calls, from a leftover .part). The file is checked against `size`, `md5` and `sha256` (those given) and only
    then renamed to `path` (os.replace, atomic). A mismatch deletes the .part; the next mirror is tried and, when
    none is left, DataError is raised: a bad file is never kept. An existing `path` is returned as it is.
    Returns `path`. Raises DataError listing every URL tried and its failure (e.g. no network).
    """
    if isinstance(urls, str):
        urls = [urls]
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = path + ".part"
    failures = []
    for url in urls:
        if progress:
            sys.stderr.write(f"Downloading {url}\n")
        try:
            complete, stalls, last_size = False, 0, -1
            while not complete:
                complete, _ = _fetch_once(url, part, timeout, progress)
                size_now = os.path.getsize(part) if os.path.exists(part) else 0
                if not complete:  # resume as long as each attempt brings new bytes
                    stalls = stalls + 1 if size_now <= last_size else 0
                    if stalls >= 3:
                        raise ConnectionError(f"transfer keeps breaking off at {size_now} bytes")
                    last_size = size_now
        except urllib.error.HTTPError as e:
            failures.append(f"{url} (HTTP {e.code})")
            continue
        except urllib.error.URLError as e:
            failures.append(f"{url} ({e.reason})")
            continue
        except (OSError, http.client.HTTPException) as e:
            failures.append(f"{url} ({e or type(e).__name__})")
            continue
        problem = _check_file(part, md5, sha256, size)
        if problem:
            os.remove(part)
            failures.append(f"{url} (downloaded file rejected: {problem})")
            continue
        os.replace(part, path)
        return path
    raise DataError(f"could not download {os.path.basename(path)}: tried {'; '.join(failures)}. Without network "
                    "access, fetch the file elsewhere and pass its folder with --data-dir DIR")


# ---------------------------------------------------------------------------------------------------------
# Helpers shared by the loaders: finding and reading files, and the identity of what was read
# ---------------------------------------------------------------------------------------------------------
def _find(folders, names):
    """First existing `folder/name` over folders (outer loop) and names (inner loop), or None."""
    for folder in folders:
        for name in names:
            candidate = os.path.join(folder, name)
            if os.path.exists(candidate):
                return candidate
    return None


def _note(message):
    sys.stderr.write("note: " + message + "\n")


def _check_regular_file(path):
    """Raise DataError unless `path` is a regular file (a directory, FIFO or device would fail or hang)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the path or --data-dir") from None
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror}); check its permissions") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise DataError(f"{path} is {kind}, not a data file; remove it or replace it with the file")


def _read_file(path):
    """The bytes of one regular file (DataError for a missing, unreadable or odd file)."""
    _check_regular_file(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e}); check the file") from None


def file_info(path, size, md5, official, note):
    """The identity of one raw file a loader read: the entries of the 'files' list every loader returns."""
    return {"name": os.path.basename(path), "bytes": int(size), "md5": md5, "official": bool(official),
            "note": None if official else note}


def _accept_files(files, folder, dataset, unknown_note, downloaded):
    """Notes (one line per kind) for files that are not the official ones; refuse unknown files in the
    download folder (DEFAULT_DATA_DIR holds checked downloads only: a mismatch there is damage)."""
    odd = [f for f in files if not f["official"]]
    unknown = [f["name"] for f in odd if f["note"].startswith(unknown_note)]
    if downloaded and unknown:
        raise DataError(f"{', '.join(unknown)} in {folder} differ from the official {dataset} (MD5); delete them to "
                        "download them again, or pass a folder with your own files with --data-dir")
    for note in dict.fromkeys(f["note"] for f in odd):
        names = [f["name"] for f in odd if f["note"] == note]
        which = f"all {len(names)} files" if len(names) == len(files) > 1 else ", ".join(names)
        _note(f"{note} ({which} in {folder}); reading them anyway")


def one_hot_pm1(labels, n_classes=10):
    """Targets in {-1, +1}: 2 * onehot(labels) - 1 as float32 (N, n_classes) (ORIGINALS.md §3.1)."""
    labels = np.asarray(labels).ravel()
    if labels.size and (np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"class labels must be integers in 0..{n_classes - 1}, got values from {labels.min()} to "
                        f"{labels.max()}")
    targets = np.full((labels.size, n_classes), -1.0, dtype=np.float32)
    targets[np.arange(labels.size), labels.astype(np.int64)] = 1.0
    return targets


# ---------------------------------------------------------------------------------------------------------
# MNIST (ORIGINALS.md §3.1)
# ---------------------------------------------------------------------------------------------------------
def _gunzip(raw, path):
    """`raw` unpacked when it starts with the gzip magic bytes, else `raw` itself."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path} is a damaged gzip file ({e}); delete it and download it again") from None


def _parse_idx(raw, path):
    """uint8 array from the bytes of an unpacked IDX file (format in `read_idx`)."""
    if len(raw) < 8:
        raise DataError(f"{path} is truncated ({len(raw)} bytes, shorter than an IDX header); download it again")
    magic = struct.unpack(">i", raw[:4])[0]
    if magic not in (2049, 2051):
        raise DataError(f"{path} is not an MNIST IDX file (magic number {magic}, expected 2051 for images or 2049 for "
                        "labels); check that the right file is in place")
    ndim = 3 if magic == 2051 else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; download it again")
    dims = struct.unpack(">" + "i" * ndim, raw[4:header])
    if min(dims) < 0:
        raise DataError(f"{path} has a negative dimension in its header {dims}; the file is corrupt")
    count = 1
    for d in dims:  # Python integers: no overflow for any header
        count *= d
    if len(raw) < header + count:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, header {dims} needs {header + count}; download it "
                        "again")
    if len(raw) > header + count:
        raise DataError(f"{path} has {len(raw) - header - count} bytes after the data announced by its header {dims}; "
                        "the file is corrupt")
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(dims).copy()


def read_idx(path):
    """Read an MNIST IDX file (gzipped or plain) into a uint8 array.

    Format (ORIGINALS.md §3.1): big-endian int32 magic (2051 images: count, rows, cols; 2049 labels: count),
    then the uint8 data row-major. Wrong magic, truncated data or trailing bytes raise DataError.
    """
    return _parse_idx(_gunzip(_read_file(path), path), path)


def _read_mnist_file(key, path):
    """(uint8 array, file_info) of one of the four MNIST files; `official` compares the unpacked data's MD5
    (and the .gz's), so a recompressed or unpacked copy of the official file counts as official."""
    raw = _read_file(path)
    md5 = hashlib.md5(raw).hexdigest()
    content = _gunzip(raw, path)
    content_md5 = md5 if content is raw else hashlib.md5(content).hexdigest()
    array = _parse_idx(content, path)
    official = md5 == MNIST_FILES[key][2] or content_md5 == MNIST_UNPACKED_MD5[key]
    stand_ins = [name for name, table in MNIST_STAND_INS.items() if table[key] == content_md5]
    note = ("files in MNIST's format that are not MNIST: " + stand_ins[0]) if stand_ins else MNIST_UNKNOWN_NOTE
    return array, file_info(path, len(raw), md5, official, note)


def mnist_files(data_dir=None, download=True):
    """Local paths of the four MNIST files: {'train_images', 'train_labels', 'test_images', 'test_labels'}.

    In an explicit `data_dir` (or its `mnist/` subfolder) each file may be `NAME.gz` or unpacked `NAME`; they are
    never downloaded. With data_dir=None they live in DEFAULT_DATA_DIR/mnist and are downloaded (MD5 and size
    checked) when missing. The files' identity is checked where they are read (`load_mnist`).
    """
    if data_dir is not None:
        folders = [data_dir, os.path.join(data_dir, "mnist")]
        paths = {key: _find(folders, [name + ".gz", name]) for key, (name, _, _) in MNIST_FILES.items()}
        missing = [MNIST_FILES[key][0] + "[.gz]" for key, p in paths.items() if p is None]
        if missing:
            raise DataError(f"MNIST files missing in {data_dir}: {', '.join(missing)}; put the files there or omit "
                            "--data-dir to download them")
        return paths
    folder = os.path.join(DEFAULT_DATA_DIR, "mnist")
    paths = {}
    for key, (name, size, md5) in MNIST_FILES.items():
        found = _find([folder], [name + ".gz", name])
        if found is None:
            if not download:
                raise DataError(f"{name}.gz is not in {folder} and downloading is off; allow downloads or pass "
                                "--data-dir DIR with the MNIST files")
            found = download_file([m + name + ".gz" for m in MNIST_MIRRORS], os.path.join(folder, name + ".gz"),
                                  md5=md5, size=size)
        paths[key] = found
    return paths


def _mnist_split_size(n):
    """Validation rows at the end of the training file: n // 6 (10000 of the official 60000, spec §3.1)."""
    n_val = n // 6
    if n_val == 0:
        raise DataError(f"the MNIST training file has only {n} images, too few to split off a validation set; "
                        "use the full file")
    return n_val


def _mnist_pair(images, labels, images_path, labels_path):
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path} holds images of shape {images.shape[1:]}, expected 28x28 images; check the "
                        "file")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path} has {labels.shape[0]} labels for {images.shape[0]} images in {images_path}; "
                        "the files do not belong together")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path} has label {labels.max()} outside 0..9; check the file")
    return images, labels


def _mnist_inputs(images, transform):
    """float32 (N, 1, 28, 28): x/255, then 2x-1 ('pm1') or minus this set's per-pixel mean ('center')."""
    x = images.reshape(images.shape[0], 784).astype(np.float32) / np.float32(255)
    if transform == "pm1":
        x = np.float32(2) * x - np.float32(1)
    else:
        x -= x.mean(axis=0, dtype=np.float64).astype(np.float32)
    return x.reshape(-1, 1, 28, 28)


def load_mnist(transform, data_dir=None, download=True):
    """MNIST as the original scripts saw it (ORIGINALS.md §3.1).

    Returns dict X_train, y_train, X_val, y_val, X_test, y_test: X float32 (N, 1, 28, 28), y float32 (N, 10) in
    {-1, +1}. Split: validation = the last 10000 of the 60000 training rows (n // 6 for smaller files), no
    shuffle; test = t10k. Inputs x = pixel / 255, then
    * 'pm1' (BinaryNet): 2x - 1, in [-1, 1];
    * 'center' (BinaryConnect): pylearn2's center=True: train and validation minus the per-pixel mean of
      all training-file images; the test set minus its own per-pixel mean (pylearn2's transductive quirk).
    Also 'files': the identity of the four files read (`file_info`; docs/data.md). Files that are not the
    official MNIST are read with a one-line note (Fashion-MNIST named as such); in the download folder an
    unknown file is refused.
    """
    if transform not in MNIST_TRANSFORMS:
        raise DataError(f"unknown MNIST transform {transform!r}; use one of {', '.join(MNIST_TRANSFORMS)}")
    paths = mnist_files(data_dir, download)
    arrays, files = {}, []
    for key in MNIST_FILES:
        arrays[key], info = _read_mnist_file(key, paths[key])
        files.append(info)
    _accept_files(files, os.path.dirname(paths["train_images"]), "MNIST", MNIST_UNKNOWN_NOTE, data_dir is None)
    train_images, train_labels = _mnist_pair(arrays["train_images"], arrays["train_labels"],
                                             paths["train_images"], paths["train_labels"])
    test_images, test_labels = _mnist_pair(arrays["test_images"], arrays["test_labels"],
                                           paths["test_images"], paths["test_labels"])
    n_train = train_images.shape[0] - _mnist_split_size(train_images.shape[0])
    x_all, x_test = _mnist_inputs(train_images, transform), _mnist_inputs(test_images, transform)
    y_all = one_hot_pm1(train_labels)
    return {"X_train": x_all[:n_train], "y_train": y_all[:n_train],
            "X_val": x_all[n_train:], "y_val": y_all[n_train:],
            "X_test": x_test, "y_test": one_hot_pm1(test_labels), "files": files}


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10 (ORIGINALS.md §3.2)
# ---------------------------------------------------------------------------------------------------------
CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class _ArrayUnpickler(pickle._Unpickler):
    """Unpickler that only rebuilds plain NumPy arrays and Python containers (what the CIFAR-10 batches hold).

    Built on the pure-Python unpickler: the C one grows its memo table to any index a file names (a few bytes
    can make it allocate gigabytes). Globals are limited to what pickled arrays need, each replaced by a checked
    version: arrays start empty and are filled only from the file's own bytes, dtypes are simple and never hold
    Python objects, and BUILD accepts only the states NumPy writes for such arrays and dtypes.
    """

    def find_class(self, module, name):
        allowed = {("numpy.core.multiarray", "_reconstruct"): _empty_array, ("numpy", "ndarray"): _NDARRAY,
                   ("numpy", "dtype"): _simple_dtype, ("numpy.core.multiarray", "scalar"): _simple_scalar,
                   ("_codecs", "encode"): codecs.encode}
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the pickle")
        return allowed[module, name]

    def load_build(self):
        state, target = self.stack[-1], self.stack[-2]
        if isinstance(target, np.dtype):
            ok = isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("|", "<", ">", "=") \
                and state[2:] == (None, None, None, -1, -1, 0)
        elif isinstance(target, np.ndarray):
            ok = isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype) \
                and not state[2].hasobject and state[2].names is None and isinstance(state[4], bytes)
        else:
            ok = False
        if not ok:
            raise pickle.UnpicklingError("unexpected object state in the pickle")
        super().load_build()

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


_NDARRAY = object()  # stands for numpy.ndarray in a pickle: only as the first argument of _reconstruct


def _empty_array(subtype, shape, typecode):
    """numpy's _reconstruct as pickled arrays call it: an empty array, which BUILD then fills from the file."""
    if subtype is not _NDARRAY or tuple(shape) != (0,):
        raise pickle.UnpicklingError("unexpected array construction in the pickle")
    return np.core.multiarray._reconstruct(np.ndarray, (0,), typecode)


def _simple_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject or dtype.names is not None or dtype.itemsize > 64:
        raise pickle.UnpicklingError(f"unexpected data type {dtype} in the pickle")
    return dtype


def _simple_scalar(dtype, *args):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("unexpected scalar in the pickle")
    return np.core.multiarray.scalar(dtype, *args)


def cifar10_files(data_dir=None, download=True):
    """Path of the CIFAR-10 python data: an extracted `cifar-10-batches-py` folder or the official tarball.

    An explicit `data_dir` may hold the folder, the tarball, or be the folder itself (also looked for in its
    `cifar10/` subfolder); it is never downloaded into. With data_dir=None the tarball is kept in
    DEFAULT_DATA_DIR/cifar10 and downloaded (size and MD5 checked) when missing.
    """
    if data_dir is not None:
        if os.path.exists(os.path.join(data_dir, "data_batch_1")):
            return data_dir
        folders = [data_dir, os.path.join(data_dir, "cifar10")]
        found = _find(folders, [CIFAR10_FOLDER, CIFAR10_TARBALL])
        if found is None:
            raise DataError(f"CIFAR-10 not found in {data_dir}: expected {CIFAR10_TARBALL} or the folder "
                            f"{CIFAR10_FOLDER}/; put it there or omit --data-dir to download it")
        return found
    folder = os.path.join(DEFAULT_DATA_DIR, "cifar10")
    found = _find([folder], [CIFAR10_FOLDER, CIFAR10_TARBALL])
    if found is not None:
        return found
    if not download:
        raise DataError(f"{CIFAR10_TARBALL} is not in {folder} and downloading is off; allow downloads or pass "
                        "--data-dir DIR with the file")
    return download_file(CIFAR10_URL, os.path.join(folder, CIFAR10_TARBALL), md5=CIFAR10_MD5, size=CIFAR10_SIZE)


def _cifar_batches(source):
    """Yield (batch name, raw pickle bytes) for the five training batches and the test batch.

    `source` is an extracted folder or the tarball; a tarball's batch must be a regular member (a symlink,
    directory or device member is refused, never followed).
    """
    if os.path.isdir(source) and not source.endswith(".tar.gz"):
        for name in CIFAR10_BATCHES:
            path = os.path.join(source, name)
            if not os.path.exists(path):
                raise DataError(f"{name} is missing in {source}; restore the complete {CIFAR10_FOLDER} folder")
            yield name, _read_file(path)
        return
    _check_regular_file(source)
    try:
        with tarfile.open(source, "r:gz") as tar:
            for name in CIFAR10_BATCHES:
                try:
                    member = tar.getmember(CIFAR10_FOLDER + "/" + name)
                except KeyError:
                    raise DataError(f"{source} has no {CIFAR10_FOLDER}/{name}; it is not the CIFAR-10 python "
                                    "tarball") from None
                if not member.isreg():
                    raise DataError(f"{source}: the member {member.name} is a {_member_kind(member)}, not a file; "
                                    "this is not the CIFAR-10 python tarball")
                yield name, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{source} is damaged or truncated ({e}); delete it and download it again") from None


def _member_kind(member):
    kinds = [(member.issym(), "symbolic link"), (member.islnk(), "hard link"), (member.isdir(), "directory"),
             (member.isdev(), "device or FIFO")]
    return next((text for test, text in kinds if test), "special entry")


def _cifar_labels(name, labels, rows):
    """int64 (rows,) from a batch's labels: a list of Python ints or a 1-D integer array, each in 0..9.

    Anything else (strings, floats, nested or ragged lists, a wrong count) raises DataError: nothing is
    converted or truncated silently.
    """
    problem = None
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            problem = f"an array of {labels.dtype} {labels.shape}"
    elif isinstance(labels, (list, tuple)):
        odd = next((v for v in labels if isinstance(v, bool) or not isinstance(v, (int, np.integer))), None)
        if odd is not None:
            problem = f"a list holding {type(odd).__name__} {repr(odd)[:20]}"
    else:
        problem = f"a {type(labels).__name__}"
    if problem is None and len(labels) != rows:
        problem = f"{len(labels)} labels for {rows} images"
    if problem is None and not all(0 <= v <= 9 for v in labels):
        problem = "values outside 0..9"
    if problem:
        raise DataError(f"CIFAR-10 batch {name}: 'labels' must be a list of {rows} integers in 0..9, got {problem}; "
                        "replace the file")
    return np.array(labels, dtype=np.int64).reshape(rows)


def _parse_cifar_batch(name, raw):
    """(data uint8 (n, 3072), labels int64 (n,)) from one pickled batch (dict with b'data' and b'labels')."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any unpickling failure means a damaged or foreign file
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise DataError(f"CIFAR-10 batch {name} cannot be read ({reason}); replace the file") from None
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR-10 batch {name} is not a dict; replace the file")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"CIFAR-10 batch {name}: 'data' must be uint8 (n, 3072); replace the file")
    return data, _cifar_labels(name, labels, data.shape[0])


def read_cifar10(data_dir=None, download=True):
    """Raw CIFAR-10 (ORIGINALS.md §3.2): dict X_train uint8 (50000, 3, 32, 32), y_train int64, X_test, y_test,
    and 'files' (`file_info` of the tarball, or of the six batch files of an extracted folder).

    Training rows are data_batch_1..5 in order; rows keep the pickles' (C, H, W) order (R plane, G, B). Reads the
    tarball directly or the extracted folder. Each batch's MD5 is compared with the official one (a tarball is
    official when all six batches are): a mismatch raises DataError for the downloaded copy in DEFAULT_DATA_DIR
    and prints a note for a --data-dir folder.
    """
    source = cifar10_files(data_dir, download)
    parts, md5s, sizes = {}, {}, {}
    for name, raw in _cifar_batches(source):
        md5s[name], sizes[name] = hashlib.md5(raw).hexdigest(), len(raw)
        parts[name] = _parse_cifar_batch(name, raw)
    differ = [name for name in CIFAR10_BATCHES if md5s[name] != CIFAR10_BATCH_MD5[name]]
    if os.path.isdir(source):
        folder = source
        note = CIFAR10_UNKNOWN_NOTE + " (MD5 differs from the official batch)"
        files = [file_info(os.path.join(source, n), sizes[n], md5s[n], n not in differ, note) for n in CIFAR10_BATCHES]
    else:
        folder = os.path.dirname(source)
        note = f"{CIFAR10_UNKNOWN_NOTE} (MD5 of {', '.join(differ)} differs from the official)"
        files = [file_info(source, os.path.getsize(source), file_digest(source), not differ, note)]
    _accept_files(files, folder, "CIFAR-10", CIFAR10_UNKNOWN_NOTE, data_dir is None)
    train = [parts[f"data_batch_{i}"] for i in range(1, 6)]
    x_test, y_test = parts["test_batch"]
    return {"X_train": np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32),
            "y_train": np.concatenate([labels for _, labels in train]),
            "X_test": x_test.reshape(-1, 3, 32, 32), "y_test": y_test, "files": files}


def load_cifar10_raw(data_dir=None, download=True):
    """(X_train, y_train, X_test, y_test) of `read_cifar10`, without the files' identity."""
    data = read_cifar10(data_dir, download)
    return data["X_train"], data["y_train"], data["X_test"], data["y_test"]


# ---------------------------------------------------------------------------------------------------------
# SVHN format 2 (ORIGINALS.md §3.3)
# ---------------------------------------------------------------------------------------------------------
def svhn_files(data_dir=None, download=True, use_extra=True):
    """Paths {'train', 'test'[, 'extra']} of the SVHN .mat files.

    An explicit `data_dir` (or its `svhn/` or pylearn2-style `SVHN/format2/` subfolder) is only read. With
    data_dir=None they live in DEFAULT_DATA_DIR/svhn and are downloaded (MD5 checked; size too where known).
    """
    names = ["train", "test"] + (["extra"] if use_extra else [])
    if data_dir is not None:
        folders = [data_dir, os.path.join(data_dir, "svhn"), os.path.join(data_dir, "SVHN", "format2")]
        paths = {n: _find(folders, [SVHN_FILES[n][0]]) for n in names}
        missing = [SVHN_FILES[n][0] for n in names if paths[n] is None]
        if missing:
            hint = " (or use_extra=False / --no-extra to do without the extra set)" if "extra" in names else ""
            raise DataError(f"SVHN files missing in {data_dir}: {', '.join(missing)}; put them there or omit "
                            f"--data-dir to download them{hint}")
        return paths
    folder = os.path.join(DEFAULT_DATA_DIR, "svhn")
    paths = {}
    for n in names:
        filename, size, md5 = SVHN_FILES[n]
        path = os.path.join(folder, filename)
        if not os.path.exists(path):
            if not download:
                raise DataError(f"{filename} is not in {folder} and downloading is off; allow downloads or pass "
                                "--data-dir DIR with the SVHN files")
            download_file(SVHN_URL + filename, path, md5=md5, size=size)
        paths[n] = path
    return paths


def _read_svhn_mat(path):
    """(X uint8 (32, 32, 3, N) as stored, labels int64 (N,) in 1..10) from one SVHN format-2 .mat file.

    Labels may be stored as any integer type or as whole numbers in a float array (MATLAB's default double),
    shaped (N, 1), (1, N) or (N,); fractions, strings, cells or other shapes raise DataError.
    """
    _check_regular_file(path)
    try:
        with warnings.catch_warnings():  # scipy warns about oddities it can read past; the checks below decide
            warnings.simplefilter("ignore")
            mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as e:  # scipy raises many types for damaged files
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise DataError(f"{path} cannot be read as a MATLAB file ({reason}); delete it and download it again") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks the variables X and y of SVHN format 2; check the file")
    x, y = mat["X"], mat["y"]
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iuf" or y.ndim > 2 or y.size != max(y.shape, default=1):
        raise DataError(f"{path}: y must be a vector of N labels 1..10, got {getattr(y, 'dtype', type(y).__name__)} "
                        f"{getattr(y, 'shape', '')}; check the file")
    y = y.ravel()
    if y.size and not (np.all(np.isfinite(y)) and np.all(y == np.round(y)) and y.min() >= 1 and y.max() <= 10):
        raise DataError(f"{path}: labels must be whole numbers 1..10 (10 = digit 0), got values from {y.min()} to "
                        f"{y.max()}; check the file")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) \
            or x.shape[3] != y.size:
        raise DataError(f"{path}: X must be uint8 (32, 32, 3, N) with N = {y.size} labels, got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}; check the file")
    return x, y.astype(np.int64)


def _read_svhn_file(key, path):
    """(X, labels, file_info) of one SVHN file; the MD5 is computed in one chunked pass over the file."""
    _check_regular_file(path)
    md5 = file_digest(path)
    x, y = _read_svhn_mat(path)
    return x, y, file_info(path, os.path.getsize(path), md5, md5 == SVHN_FILES[key][2], SVHN_UNKNOWN_NOTE)


def _take_valid(rng, labels, per_class, name):
    """pylearn2's split of one file: per class 1..10, shuffle its indices with `rng`, keep the first `per_class`.

    Returns (valid indices, remaining indices), both sorted.
    """
    chosen = []
    for c in range(1, 11):
        idx = np.flatnonzero(labels == c)
        if idx.size < per_class:
            raise DataError(f"SVHN {name} has {idx.size} images of label {c}, fewer than the {per_class} per class the "
                            "validation split takes; use the full file")
        rng.shuffle(idx)
        chosen.append(idx[:per_class])
    valid = np.sort(np.concatenate(chosen))
    return valid, np.setdiff1d(np.arange(labels.size), valid, assume_unique=True)


def _gather_chw(sources, picks, chunk=8192):
    """Rows (N, 3, 32, 32) uint8 from (source number, index) picks into (32, 32, 3, n) arrays, one copy."""
    source_ids, indices = picks
    out = np.empty((indices.size, 3, 32, 32), dtype=np.uint8)
    for start in range(0, indices.size, chunk):
        stop = min(start + chunk, indices.size)
        ids, idx = source_ids[start:stop], indices[start:stop]
        for s, x in enumerate(sources):
            rows = np.flatnonzero(ids == s)
            if rows.size:
                out[start + rows] = x[:, :, :, idx[rows]].transpose(3, 2, 0, 1)
    return out


def load_svhn_raw(data_dir=None, download=True, use_extra=True,
                  valid_per_class_train=400, valid_per_class_extra=200, seed=SVHN_SEED):
    """Raw SVHN with pylearn2's split and shuffle (ORIGINALS.md §3.3).

    Returns {'train', 'valid', 'test', 'files'}: 'files' is the identity of the .mat files read (`file_info`);
    the three sets are each (X uint8 (N, 3, 32, 32) in (C, H, W) order, y int64 = label - 1, so
    digit 0 (label 10) -> class 9). With rng = RandomState(seed): for labels 1..10 shuffle that class's
    indices in `train` and keep the first `valid_per_class_train` (400) for validation, then the same on
    `extra` with `valid_per_class_extra` (200): valid = 6000, class-balanced. train = remaining train rows
    followed by remaining extra rows (598388 with the official files). Each set's rows are then permuted by
    rng.permutation with the rng continuing from its state after the split (the test set from a fresh
    RandomState(seed)), like pylearn2's separate per-set calls.
    Not bit-exact: pylearn2 listed index *sets*, so its pre-shuffle order was CPython set order; here the
    validation and remaining indices are in sorted order (train part, then extra part).
    use_extra=False splits `train` alone (valid 4000, train 69257) and does not need extra_32x32.mat.
    The per-class counts are parameters only so tiny test files can be split; keep the defaults otherwise.
    """
    paths = svhn_files(data_dir, download, use_extra)
    x_train, y_train, train_info = _read_svhn_file("train", paths["train"])
    sources, labels, files = [x_train], [y_train], [train_info]
    if use_extra:
        x_extra, y_extra, extra_info = _read_svhn_file("extra", paths["extra"])
        sources.append(x_extra)
        labels.append(y_extra)
        files.append(extra_info)

    rng = np.random.RandomState(seed)
    valid_picks, train_picks = [], []
    for s, (y, per_class) in enumerate(zip(labels, [valid_per_class_train, valid_per_class_extra])):
        valid, rest = _take_valid(rng, y, per_class, ["train", "extra"][s])
        valid_picks.append((np.full(valid.size, s), valid))
        train_picks.append((np.full(rest.size, s), rest))
    state = rng.get_state()

    result = {}
    for name, picks in (("valid", valid_picks), ("train", train_picks)):
        ids, idx = (np.concatenate(p) for p in zip(*picks))
        rng.set_state(state)
        order = rng.permutation(idx.size)
        ids, idx = ids[order], idx[order]
        x = _gather_chw(sources, (ids, idx))
        y = np.concatenate(labels)[idx + np.where(ids == 1, labels[0].size, 0)] - 1
        result[name] = (x, y)
    x_test, y_test, test_info = _read_svhn_file("test", paths["test"])
    files.append(test_info)
    _accept_files(files, os.path.dirname(paths["train"]), "SVHN", SVHN_UNKNOWN_NOTE, data_dir is None)
    order = np.random.RandomState(seed).permutation(y_test.size)
    result["test"] = (_gather_chw([x_test], (np.zeros(order.size, np.int64), order)), y_test[order] - 1)
    result["files"] = files
    return result


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------
def main(argv=None):
    parser = cli.Parser("Download (or check) a data set and print what loads: python -m plumbing.datasets mnist")
    parser.add_argument("dataset", choices=["mnist", "cifar10", "svhn"])
    parser.add_argument("--data-dir", default=None,
                        help=f"read the files from this folder instead of downloading (default: {DEFAULT_DATA_DIR})")
    parser.add_argument("--no-extra", action="store_true", help="SVHN: do without extra_32x32.mat")
    args = parser.parse_args(argv)
    if args.dataset == "mnist":
        data = load_mnist("pm1", args.data_dir)
        shapes = {k: v.shape for k, v in data.items() if k != "files"}
    elif args.dataset == "cifar10":
        data = read_cifar10(args.data_dir)
        shapes = {k: v.shape for k, v in data.items() if k.startswith("X_")}
    else:
        data = load_svhn_raw(args.data_dir, use_extra=not args.no_extra)
        shapes = {"X_" + k: data[k][0].shape for k in ("train", "valid", "test")}
    for key, shape in shapes.items():
        print(f"{key}: {shape}")
    for f in data["files"]:
        status = "official" if f["official"] else "not official: " + f["note"]
        print(f"file {f['name']}: {f['bytes']} bytes, MD5 {f['md5']}, {status}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.main_guard(main))
