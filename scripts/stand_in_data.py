"""Write a --data-dir for reproduce.py where the official data sets are not at hand: files in the official formats
that are not the official data (docs/reproduce.md).

    python scripts/stand_in_data.py DIR --mnist-from /usr/share/datasets/fashion-mnist   # Debian's Fashion-MNIST
    python scripts/stand_in_data.py DIR --small                                         # quick, smaller files

DIR/mnist/: links to four MNIST-format files (--mnist-from), else random pixels; DIR/cifar10/cifar-10-batches-py/:
five training batches and a test batch of random pixels and labels (python pickles as the official ones);
DIR/svhn/: train_32x32.mat and test_32x32.mat of random pixels (format 2, no extra_32x32.mat: use --no-extra).
Official sizes (60000 / 50000 + 10000 / 73257 + 26032 images) unless --small. Each folder gets a DATA_LABEL.txt
whose first line the report prints next to the files' MD5 verdict.
"""
import argparse
import gzip
import os
import pickle
import struct
import sys

import numpy as np
import scipy.io

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from plumbing import cli, datasets  # noqa: E402

MNIST_NAMES = [name for name, _, _ in datasets.MNIST_FILES.values()]


def write_label(folder, text):
    with open(os.path.join(folder, "DATA_LABEL.txt"), "w") as f:
        f.write(text + "\n")


def write_idx(path, array):
    """An MNIST IDX file, gzipped: big-endian magic (2051 images, 2049 labels), dimensions, uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def mnist(folder, source, n_train, n_test, rng):
    os.makedirs(folder, exist_ok=True)
    if source:
        for name in MNIST_NAMES:
            found = [os.path.join(source, name + ext) for ext in (".gz", "") if
                     os.path.exists(os.path.join(source, name + ext))]
            if not found:
                raise datasets.DataError(f"{source} has no {name}[.gz]; pass the folder holding the four files")
            link = os.path.join(folder, os.path.basename(found[0]))
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.abspath(found[0]), link)
        write_label(folder, f"MNIST-format files from {os.path.abspath(source)} (not MNIST)")
        return
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(os.path.join(folder, prefix + "-images-idx3-ubyte.gz"), rng.randint(0, 256, (n, 28, 28)))
        write_idx(os.path.join(folder, prefix + "-labels-idx1-ubyte.gz"), rng.randint(0, 10, n))
    write_label(folder, "random-pixel stand-in files in the MNIST format (not data)")


def cifar10(folder, per_batch, n_test, rng):
    batches = os.path.join(folder, datasets.CIFAR10_FOLDER)
    os.makedirs(batches, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.randint(0, 10, n)],
                 b"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8),
                 b"filenames": [f"stand_in_{i:05d}.png".encode() for i in range(n)]}
        with open(os.path.join(batches, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    write_label(folder, "random-pixel stand-in files in the CIFAR-10 format (not data)")


def svhn(folder, n_train, n_test, rng):
    os.makedirs(folder, exist_ok=True)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = rng.randint(0, 256, (32, 32, 3, n)).astype(np.uint8)
        y = rng.randint(1, 11, (n, 1)).astype(np.uint8)
        scipy.io.savemat(os.path.join(folder, name), {"X": x, "y": y}, do_compression=False)
    write_label(folder, "random-pixel stand-in files in the SVHN format 2 (not data)")


def main(argv=None):
    p = cli.Parser(__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the --data-dir to write (mnist/, cifar10/, svhn/ inside)")
    p.add_argument("--mnist-from", help="link these four MNIST-format files instead of writing random ones")
    p.add_argument("--small", action="store_true", help="a tenth of the official sizes (SVHN: 6000 training images)")
    p.add_argument("--seed", type=cli.seed_int, default=0)
    args = p.parse_args(argv)
    rng = np.random.RandomState(args.seed)
    small = args.small
    mnist(os.path.join(args.folder, "mnist"), args.mnist_from, 6000 if small else 60000, 1000 if small else 10000,
          rng)
    cifar10(os.path.join(args.folder, "cifar10"), 1000 if small else 10000, 1000 if small else 10000, rng)
    svhn(os.path.join(args.folder, "svhn"), 6000 if small else 73257, 2600 if small else 26032, rng)
    print(f"wrote {args.folder}: mnist/, cifar10/, svhn/ (see DATA_LABEL.txt in each)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.main_guard(main))
