"""Regenerate tests/data/reference_runs.json, the numbers tests/test_reference_runs.py expects (issue 7: a change that
is not meant to change the numbers must not move them).

    .venv/bin/python tests/data/make_reference.py        # from the project root; about a minute with a warm cache

Six short fixed-seed runs on tiny generated data (tests/conftest.py writers, fixed seeds), each a subprocess of the
real script: MNIST MLP with each method, and the two ConvNet families (CIFAR-10 BinaryNet on raw pixels, SVHN
BinaryConnect on GCN + LCN images). Recorded per run: the errors and losses of results.json, the training losses of
log.jsonl and a SHA-256 of the saved parameter arrays.

Reproducibility across machines: Theano linked to MKL on every CPU (BINARYNET_BLAS=mkl; by default AMD CPUs get
OpenBLAS, docs/speed.md), MKL_CBWR=COMPATIBLE (MKL's bitwise-reproducible code path, the same on Intel and AMD
CPUs) and one thread for MKL and OpenMP (reductions split over threads would depend on the core count). CIFAR-10's
BinaryConnect input (ZCA) is left out on purpose: its eigendecomposition runs in NumPy's OpenBLAS, which MKL_CBWR
does not cover. Theano compiles its C code for the local CPU (-march=native), so the numbers are those of an x86-64
CPU with FMA and the versions in requirements.txt. The ConvNets run Theano's CorrMM (BINARYNET_CONV=corrmm) and
batch norm's Theano graph (BINARYNET_BN=graph): the defaults, oneDNN's convolutions and the fused batch-norm ops,
sum in another order, and tests/test_reference_runs.py compares them with the stored numbers to a tolerance
instead. Regenerate (and say why in the commit) when a change is meant to
move them.
"""
import hashlib
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for the writers in conftest.py
from conftest import run_command, write_cifar10_files, write_mnist_files, write_svhn_files  # noqa: E402

REFERENCE = os.path.join(HERE, "reference_runs.json")
ENVIRONMENT = {"MKL_CBWR": "COMPATIBLE", "MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "BINARYNET_BLAS": "mkl", "BINARYNET_CONV": "corrmm", "BINARYNET_BN": "graph"}
MNIST = ["mnist.py", "--units", "32", "--epochs", "2", "--train-size", "300", "--batch-size", "50", "--seed", "7"]
CONVNET = ["--width", "0.0625", "--epochs", "2", "--train-size", "40", "--batch-size", "10", "--seed", "7"]
RUNS = {  # name: (command line without --data-dir/--out, data set folder, parameter file)
    "mnist-binarynet": (MNIST + ["--method", "binarynet"], "mnist", "mnist_parameters.npz"),
    "mnist-bc-det": (MNIST + ["--method", "bc-det"], "mnist", "mnist_parameters.npz"),
    "mnist-bc-stoch": (MNIST + ["--method", "bc-stoch"], "mnist", "mnist_parameters.npz"),
    "mnist-float": (MNIST + ["--method", "float"], "mnist", "mnist_parameters.npz"),
    "cifar10-binarynet": (["cifar10.py", "--method", "binarynet"] + CONVNET, "cifar10", "cifar10_parameters.npz"),
    "svhn-bc-det": (["svhn.py", "--method", "bc-det", "--no-extra"] + CONVNET, "svhn", "svhn_parameters.npz"),
}
RESULT_NUMBERS = ("best_epoch", "best_val_error", "test_error", "test_loss", "val_error", "epochs_done")


def write_data(root):
    """The three tiny data sets, always the same bytes."""
    write_mnist_files(os.path.join(root, "mnist"), n_train=600, n_test=100, seed=0)
    write_cifar10_files(os.path.join(root, "cifar10"), rows=20, seed=0)          # 90 train, 10 validate, 20 test
    write_svhn_files(os.path.join(root, "svhn"), {"train": 404, "test": 2}, seed=0)  # 40 train, 4000 validate


def parameters_sha256(path):
    """SHA-256 over arr_0, arr_1, ... (name, dtype, shape, bytes): the arrays, not the zip's time stamps."""
    digest = hashlib.sha256()
    with np.load(path) as saved:
        for i in range(len(saved.files)):
            array = saved[f"arr_{i}"]
            digest.update(f"arr_{i} {array.dtype.str} {array.shape}\n".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def run(name, root, **changes):
    """One run as a subprocess, in ENVIRONMENT with `changes` (environment variables); returns its numbers."""
    argv, dataset, params_file = RUNS[name]
    out = os.path.join(root, "runs", name + "".join(f"-{key}={value}" for key, value in sorted(changes.items())))
    env = dict(ENVIRONMENT, BINARYNET_DATA=os.path.join(root, "cache"), **changes)
    result = run_command(argv + ["--data-dir", os.path.join(root, dataset), "--out", out], env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed ({result.returncode}): {result.stderr[-2000:]}")
    with open(os.path.join(out, "results.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "log.jsonl")) as f:
        train_losses = [json.loads(line)["train_loss"] for line in f]
    numbers = {key: summary[key] for key in RESULT_NUMBERS}
    numbers.update(train_losses=train_losses, parameters_sha256=parameters_sha256(os.path.join(out, params_file)))
    return numbers


def run_all(root):
    write_data(root)
    return {name: run(name, root) for name in RUNS}


def main():
    with tempfile.TemporaryDirectory(prefix="binarynet-reference-") as root:
        runs = run_all(root)
    reference = {"how": "tests/data/make_reference.py", "environment": ENVIRONMENT,
                 "commands": {name: " ".join(argv) for name, (argv, _, _) in RUNS.items()}, "runs": runs}
    with open(REFERENCE, "w") as f:
        f.write(json.dumps(reference, indent=2, sort_keys=True) + "\n")
    print("wrote " + REFERENCE)


if __name__ == "__main__":
    main()
