"""Run a trained BinaryNet MNIST MLP at run time, and export it as a bit-packed model.

Two ways to run the network of ORIGINALS.md §4.5 (deterministic inference, whole test set in one batch):

* `evaluate` / `run`: Lasagne layers (`kernels.theano_ops.DenseLayer` + `compat.BatchNormLayer` + a sign
  nonlinearity), the product chosen per run: 'blas' (T.dot, MKL), 'baseline' (naive C float GEMM) or 'xnor'
  (XNOR-popcount GEMM); on a GPU host the `kernels.gpu.GpuKernels` products.
* `export_packed` / `run_packed`: one file with the binary weights as bits and every hidden layer's batch norm
  + sign folded into an integer threshold; run with NumPy + `kernels.cpu` only (no Theano).

Network (§2.2, §4.5), with L dense blocks and per block [W, b, beta, gamma, mean, inv_std] (§2.5):
    x_1 = X · sign(W_1)                         (real inputs: always the float product)
    a_k = sign(BN_k(x_k + b_k)),  x_{k+1} = a_k · sign(W_{k+1})     for hidden blocks k < L
    out = BN_L(x_L + b_L),  prediction = argmax(out)
where sign(v) = +1 if v >= 0 else -1 (§4.1, §7.3: zero maps to +1) and, in deterministic mode (§1.7.2),
    BN(v) = (v - mean) * (gamma * inv_std) + beta,  evaluated in float32 in exactly this order.

Command line: python binary_inference.py --model M.npz [--data-dir DIR] [--kernels blas,baseline,xnor]
              [--device cpu|gpu|auto] [--export PACKED.npz] [--batch-size 10000]
"""
import math
import os
import statistics
import struct
import sys
import tempfile
import time
import zipfile
from fractions import Fraction

import numpy as np
from threadpoolctl import threadpool_info

from kernels import packed_net
from kernels.cpu import available_paths, pack_cols, pack_rows, xnor_gemm_packed
from plumbing import cli, datasets
from plumbing.errors import DAMAGED_NUMPY_FILE, ArchiveError

# Theano (plumbing.compat, batch_norm, kernels.theano_ops) and the GPU modules are imported inside the functions
# that use them: the packed run time (export_packed, run_packed) needs NumPy and kernels.cpu only.

KERNELS = ("blas", "baseline", "xnor")
DEVICES = ("cpu", "gpu", "auto")
PACKED_FORMAT = "binarynet-packed"
PACKED_VERSION = 1
ARRAYS_PER_BLOCK = 6  # W, b, beta, gamma, mean, inv_std (ORIGINALS.md §2.5)
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a .npz is a zip archive (with members / empty)
# What NumPy and zipfile raise for a damaged archive or member (ValueError is handled on its own).
NPZ_ERRORS = DAMAGED_NUMPY_FILE + (zipfile.LargeZipFile, NotImplementedError, struct.error, MemoryError)


class InferenceError(ArchiveError):
    """A problem the user can fix (bad model file, bad option, kernels that disagree): one line, no traceback."""


# ----------------------------------------------------------------------------------------------------------
# Loading the original parameter file (§2.5)
# ----------------------------------------------------------------------------------------------------------

class Block:
    """One dense block: real-valued W (fan_in, units) and float32 vectors b, beta, gamma, mean, inv_std."""

    def __init__(self, W, b, beta, gamma, mean, inv_std):
        self.W, self.b, self.beta, self.gamma, self.mean, self.inv_std = W, b, beta, gamma, mean, inv_std

    @property
    def scale(self):
        """gamma * inv_std in float32, the factor Lasagne's BatchNormLayer multiplies by (§1.7.2)."""
        return (self.gamma * self.inv_std).astype(np.float32)

    def arrays(self):
        return [self.W, self.b, self.beta, self.gamma, self.mean, self.inv_std]


def load_blocks(npz_path):
    """Read a BinaryNet MNIST parameter file (arr_0 ... arr_{6L-1}, §2.5) into a list of L `Block`s."""
    arrays = _read_npz(npz_path)
    if not arrays:
        raise InferenceError(f"{npz_path} is an empty .npz (no arrays); pass the .npz saved by mnist.py")
    names = [f"arr_{i}" for i in range(len(arrays))]
    if sorted(arrays) != sorted(names) or not arrays or len(arrays) % ARRAYS_PER_BLOCK:
        found = ",".join(sorted(arrays))[:80]
        raise InferenceError(f"{npz_path} is not a BinaryNet parameter file: expected arr_0 ... arr_N with 6 arrays "
                             f"per dense block (W, b, beta, gamma, mean, inv_std), found keys {found}; save the "
                             "trained network with numpy.savez(path, *lasagne.layers.get_all_param_values(net))")
    blocks = []
    for k in range(len(arrays) // ARRAYS_PER_BLOCK):
        group = [arrays[f"arr_{ARRAYS_PER_BLOCK * k + j}"] for j in range(ARRAYS_PER_BLOCK)]
        blocks.append(_check_block(npz_path, k, group, blocks[-1].W.shape[1] if blocks else None))
    if len(blocks) < 2:
        raise InferenceError(f"{npz_path} holds {len(blocks)} dense block; a BinaryNet MLP needs at least 2 (input "
                             "layer and output layer)")
    return blocks


def _read_npz(path):
    """{name: array} of a .npz file; a missing, empty, non-zip, pickled or damaged file raises InferenceError."""
    if not os.path.exists(path):
        raise InferenceError(f"model file {path} does not exist; pass the .npz saved by mnist.py")
    if not os.path.isfile(path):
        raise InferenceError(f"model file {path} is a folder or a special file, not a .npz file; pass the .npz saved "
                             "by mnist.py")
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
    except OSError as err:
        raise InferenceError(f"model file {path} cannot be read ({err.strerror}); check its permissions")
    if not head:
        raise InferenceError(f"model file {path} is empty (0 bytes); pass the .npz saved by mnist.py")
    if head == b"\x93NUMPY":
        raise InferenceError(f"{path} is a single NumPy array (.npy), not a .npz model; pass the .npz saved by "
                             "mnist.py (numpy.savez of the network's parameters)")
    if head[:4] not in ZIP_MAGIC:
        raise InferenceError(f"{path} is not a .npz file (it does not start like a zip archive); pass the .npz saved "
                             "by mnist.py")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InferenceError(f"{path} holds pickled Python objects, which are never loaded (only plain arrays "
                                 "are); pass the .npz saved by mnist.py")
        raise InferenceError(f"{path} is a damaged .npz file ({_first_line(err)}); pass the .npz saved by mnist.py")
    except NPZ_ERRORS as err:
        raise InferenceError(f"{path} is a damaged .npz file ({_first_line(err)}); pass the .npz saved by mnist.py")


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _check_block(path, k, group, fan_in_expected):
    W = group[0]
    where = f"{path}, dense block {k + 1}"
    if W.ndim != 2 or (fan_in_expected is not None and W.shape[0] != fan_in_expected):
        fan_in = fan_in_expected if fan_in_expected is not None else "fan_in"
        raise InferenceError(f"{where}: W has shape {W.shape}, expected ({fan_in}, units); the file is not a chain of "
                             "dense blocks")
    if 0 in W.shape:
        raise InferenceError(f"{where}: W has shape {W.shape}, a layer with 0 inputs or 0 units; retrain or re-save "
                             "the model")
    units = W.shape[1]
    for name, vector in zip(("b", "beta", "gamma", "mean", "inv_std"), group[1:]):
        if vector.shape != (units,):
            raise InferenceError(f"{where}: {name} has shape {vector.shape}, expected ({units},) (per block: W, b, "
                                 "beta, gamma, mean, inv_std)")
    for name, array in zip(("W", "b", "beta", "gamma", "mean", "inv_std"), group):
        if array.dtype.kind != "f" or not np.all(np.isfinite(array)):
            raise InferenceError(f"{where}: {name} is not a finite floating-point array; retrain or re-save the model")
    return Block(*[np.ascontiguousarray(a, dtype=np.float32) for a in group])


def save_blocks(blocks, npz_path):
    """Write blocks in the original layout (numpy.savez with arr_0 ... arr_{6L-1}, §2.5)."""
    np.savez(npz_path, *[a for block in blocks for a in block.arrays()])


# ----------------------------------------------------------------------------------------------------------
# Shared math
# ----------------------------------------------------------------------------------------------------------

def sign_numpy(x):
    """2·[x >= 0] − 1 as float32 (zero maps to +1; §4.4 SignNumpy)."""
    return np.where(np.asarray(x) >= 0, np.float32(1), np.float32(-1))


def batch_norm_float32(x, bias, mean, scale, beta):
    """BN(x + b) = ((x + b) − mean) · scale + beta in float32, in the order of §1.7.2 (scale = gamma·inv_std)."""
    x = np.asarray(x, dtype=np.float32)
    return ((x + bias) - mean) * scale + beta


def _flatten(X, fan_in):
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    if X.shape[1] != fan_in:
        raise InferenceError(f"inputs have {X.shape[1]} features per example but the model's first layer expects "
                             f"{fan_in}; use the data set the model was trained on")
    return X


def _labels(y):
    """Class indices from (N, 10) ±1 targets (§3) or from an integer vector."""
    y = np.asarray(y)
    return np.argmax(y, axis=1) if y.ndim == 2 else y.astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# Theano / Lasagne inference (§4.5)
# ----------------------------------------------------------------------------------------------------------

def build_network(blocks, kernel, first_activations=False):
    """Lasagne stack of §4.5 with binarized weights; returns (input variable, predictions variable), or with
    first_activations=True (input variable, the first block's ±1 activations) from the same layers.

    The first block's product is always T.dot ('blas'): its inputs are real-valued. (The original used its
    float GPU kernel there; on this CPU the fastest float product is MKL, and using one product for the first
    layer in every run keeps the predictions of all kernels comparable.)
    """
    from plumbing.compat import T, lasagne
    from batch_norm import BatchNormLayer
    from kernels.theano_ops import DenseLayer

    def sign_theano(x):
        # 2 * [x >= 0] - 1 without a branch per element (a Switch on random signs is several times slower)
        return T.cast(T.ge(x, 0), "float32") * np.float32(2) - np.float32(1)

    identity = lasagne.nonlinearities.identity
    input_var = T.matrix("inputs")
    layer = lasagne.layers.InputLayer((None, blocks[0].W.shape[0]), input_var=input_var)
    for k, block in enumerate(blocks):
        layer = DenseLayer(layer, block.W.shape[1], kernel="blas" if k == 0 else kernel,
                           W=sign_numpy(block.W), b=block.b, nonlinearity=identity)
        layer = BatchNormLayer(layer)
        if k < len(blocks) - 1:
            layer = lasagne.layers.NonlinearityLayer(layer, nonlinearity=sign_theano)
        if first_activations:
            break
    values = []
    for block in blocks[:1] if first_activations else blocks:
        values += [sign_numpy(block.W), block.b, block.beta, block.gamma, block.mean, block.inv_std]
    lasagne.layers.set_all_param_values(layer, values)
    output = lasagne.layers.get_output(layer, deterministic=True)
    return input_var, output if first_activations else T.argmax(output, axis=1)


def compile_predictor(blocks, kernel):
    """A function X (N, fan_in) float32 -> predicted classes (N,), using the Theano graph of `build_network`."""
    from plumbing.compat import theano
    input_var, predictions = build_network(blocks, kernel)
    return theano.function([input_var], predictions)


def compile_first_layer(blocks):
    """Theano function X -> X · sign(W_1) + b_1 (float32), built like the first layer of `build_network`, so
    that MKL computes the same float32 sums (their order, hence their rounding, depends on the library)."""
    from plumbing.compat import T, lasagne, theano
    from kernels.theano_ops import DenseLayer
    input_var = T.matrix("inputs")
    layer = lasagne.layers.InputLayer((None, blocks[0].W.shape[0]), input_var=input_var)
    layer = DenseLayer(layer, blocks[0].W.shape[1], kernel="blas", W=sign_numpy(blocks[0].W), b=blocks[0].b,
                       nonlinearity=lasagne.nonlinearities.identity)
    return theano.function([input_var], lasagne.layers.get_output(layer, deterministic=True))


def gpu_network_arrays(blocks):
    """(weights, batch norms) of the blocks in the form kernels.gpu.GpuNetwork takes: W (fan_in, units) and
    (4, units) rows b, mean, gamma·inv_std, beta (§1.7.2)."""
    return [block.W for block in blocks], [np.stack([block.b, block.mean, block.scale, block.beta]) for block in blocks]


def evaluate_gpu(blocks, X, kernels, batch_size):
    """{kernel: (predictions, seconds)} on the GPU: one session, the network resident on the device per kernel
    (kernels.gpu.GpuNetwork; the first layer always on cuBLAS), timed like the CPU runs (time_predictor)."""
    from kernels.gpu import GpuKernels, GpuNetwork
    weights, bn = gpu_network_arrays(blocks)
    timings = {}
    with GpuKernels() as session:
        for kernel in kernels:
            network = GpuNetwork(session, weights, bn, kernel)
            timings[kernel] = time_predictor(network.predict, X, batch_size)
            network.free()
    return timings


def gpu_inference_report(blocks, X, reference, repeats):
    """The network on the GPU with cuBLAS and with the XNOR kernels, everything resident on the device: input
    upload, network (CUDA events, median and min of `repeats` after a warm-up) and download + argmax reported
    separately; printed and returned as rows."""
    from kernels.gpu import GpuKernels, GpuNetwork
    weights, bn = gpu_network_arrays(blocks)
    rows = []
    with GpuKernels() as session:
        print(f"GPU: {session.device_name} (sm_{session.arch}, kernels compiled by {session.compiler}); "
              f"{len(X)} images resident on the device")
        print(f"  {'path':<34} {'upload s':>9} {'network median s':>17} {'min s':>9} {'download+argmax s':>18} "
              f"{'differ from Theano float':>25}")
        for product, name in (("blas", "float, cuBLAS (first layer too)"), ("xnor", "XNOR, fused BN+sign+pack")):
            network = GpuNetwork(session, weights, bn, product)
            timing = network.time(X, repeats=repeats, warmup=1)
            network.free()
            timing.update(path=name, product=product, differ=int(np.sum(timing["predictions"] != reference)))
            rows.append(timing)
            print(f"  {name:<34} {timing['upload']:9.4f} {timing['median']:17.5f} {timing['min']:9.5f} "
                  f"{timing['download']:18.4f} {timing['differ']:>25}")
    print(f"  GPU network: XNOR {rows[0]['median'] / rows[1]['median']:.2f}x faster than cuBLAS (medians)")
    return rows


def resolve_device(device):
    """'cpu', or 'gpu' when one is usable; 'gpu' without a GPU raises, 'auto' falls back to 'cpu' and says so."""
    if device not in DEVICES:
        choices = ", ".join(DEVICES)
        raise InferenceError(f"unknown device {device!r}; choose one of {choices}")
    if device == "cpu":
        return "cpu"
    try:
        from kernels.gpu import gpu_status
        usable, message = gpu_status()
    except ImportError as err:
        usable, message = False, f"kernels.gpu cannot be imported ({err})"
    if usable:
        return "gpu"
    if device == "gpu":
        raise InferenceError(f"--device gpu: no usable GPU ({message}); run with --device cpu")
    print(f"device auto: no usable GPU ({message}); running on the CPU")
    return "cpu"


def _batches(X, batch_size):
    return [X[i:i + batch_size] for i in range(0, len(X), batch_size)]


WARM_UP_EXAMPLES = 100


def time_predictor(predict, X, batch_size):
    """(predictions, seconds): one warm-up call on the first 100 examples (loads the compiled code, starts the
    threads; a full-size warm-up would double the minutes the naive baseline takes), then one timed pass over
    X in batches of batch_size."""
    parts = _batches(X, batch_size)
    predict(X[:WARM_UP_EXAMPLES])
    start = time.perf_counter()
    predictions = np.concatenate([np.asarray(predict(part)) for part in parts])
    return predictions, time.perf_counter() - start


def evaluate(blocks, X, y, kernels=KERNELS, device="cpu", batch_size=10000):
    """Run the network with each kernel; print and return {kernel: {'error', 'seconds', 'predictions'}}.

    error = percentage of examples whose argmax differs from the label (§4.5). Prints the speed-ups against
    'blas' and 'baseline' when those ran. Raises InferenceError if the kernels' predictions differ.
    """
    kernels = _check_kernels(kernels)
    if batch_size < 1:
        raise InferenceError(f"batch size must be positive, got {batch_size}")
    X = _flatten(X, blocks[0].W.shape[0])
    labels = _labels(y)
    device = resolve_device(device)
    results = {}
    timings = evaluate_gpu(blocks, X, kernels, batch_size) if device == "gpu" else \
        {kernel: time_predictor(compile_predictor(blocks, kernel), X, batch_size) for kernel in kernels}
    for kernel, (predictions, seconds) in timings.items():
        results[kernel] = {"error": 100.0 * float(np.mean(predictions != labels)), "seconds": seconds,
                           "predictions": predictions}
    print_table(results, f"{device}, {len(X)} examples, batch {batch_size}")
    if device == "cpu":
        print(describe_cpu_libraries())
    _check_identical(results)
    return results


def describe_cpu_libraries():
    """One line naming the float BLAS Theano links and NumPy's, and the XNOR code path (docs/environment.md)."""
    from plumbing import compat
    numpy_blas = ", ".join(f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
                           for i in threadpool_info() if i.get("user_api") == "blas") or "unknown"
    return (f"Theano BLAS: {compat.BLAS_NAME}; NumPy BLAS: {numpy_blas}; XNOR path: {available_paths()[0]}; "
            f"CPUs: {len(os.sched_getaffinity(0))}")


def _check_kernels(kernels):
    if isinstance(kernels, str):
        kernels = [k.strip() for k in kernels.split(",") if k.strip()]
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown or not kernels:
        given, choices = ",".join(unknown) or "(none given)", ",".join(KERNELS)
        raise InferenceError(f"unknown kernel(s) {given}; choose from {choices} (comma-separated)")
    return list(dict.fromkeys(kernels))


def print_table(results, title):
    """One line per kernel: test error, run time, speed-up vs blas and vs baseline."""
    print(f"run-time inference ({title})")
    print(f"{'kernel':<10} {'error %':>10} {'run time s':>12} {'vs blas':>10} {'vs baseline':>13}")
    for name, r in results.items():
        error, seconds = r["error"], r["seconds"]
        speedups = {ref: results[ref]["seconds"] / seconds for ref in ("blas", "baseline") if ref in results}
        vs_blas, vs_baseline = (f"{speedups[ref]:.2f}x" if ref in speedups else "-" for ref in ("blas", "baseline"))
        print(f"{name:<10} {error:10.2f} {seconds:12.4f} {vs_blas:>10} {vs_baseline:>13}")


def _check_identical(results):
    names = list(results)
    first = results[names[0]]["predictions"]
    differing = {n: int(np.sum(results[n]["predictions"] != first)) for n in names[1:]}
    bad = {n: count for n, count in differing.items() if count}
    if bad:
        detail = ", ".join(f"{n} differs from {names[0]} on {c} examples" for n, c in bad.items())
        print(f"!!! PREDICTIONS DIFFER BETWEEN KERNELS: {detail} !!!")
        raise InferenceError(f"kernels disagree ({detail}); the binary kernels are not computing the same network")
    if len(names) > 1:
        print(f"all {len(names)} runs give identical predictions")


# ----------------------------------------------------------------------------------------------------------
# Packed model: binary weights as bits, batch norm + sign folded into integer thresholds
# ----------------------------------------------------------------------------------------------------------

def fold_threshold(bias, mean, scale, beta, fan_in):
    """Per-unit (direction d in {+1, −1} as int8, threshold tau as int32) with, for every integer s in [−n, n]:

        sign(BN(s + b)) = +1   <=>   d·s >= tau

    where BN(s + b) = ((s + b) − mean)·scale + beta is evaluated in float32 as at run time (§1.7.2) and
    sign(0) = +1. Derivation (exact arithmetic): with g = scale = gamma·inv_std,
        g > 0:  (s + b − mean)·g + beta >= 0  <=>  s >= mean − b − beta/g   ->  d = +1, tau = ceil(mean − b − beta/g)
        g < 0:  ... <=> s <= mean − b − beta/g  <=>  −s >= −floor(mean − b − beta/g)   ->  d = −1
        g = 0:  output is the constant sign(beta): d = +1, tau = −n (always +1) or n + 1 (never).
    Rounding of the float32 formula can move the exact boundary by one integer, so tau is found as the
    smallest t in [−n, n+1] with BN(d·t + b) >= 0 (the float32 formula is monotone in s), by bisection;
    tau = n + 1 means "never +1", tau = −n means "always +1".
    """
    bias, mean, scale, beta = (np.asarray(v, dtype=np.float32) for v in (bias, mean, scale, beta))
    direction = np.where(scale < 0, -1, 1).astype(np.int8)

    def plus_one(t):
        s = (direction * t).astype(np.float32)
        return batch_norm_float32(s, bias, mean, scale, beta) >= 0

    low = np.full(scale.shape, -fan_in, dtype=np.int64)
    high = np.full(scale.shape, fan_in + 1, dtype=np.int64)  # invariant: answer in [low, high]
    while np.any(low < high):
        middle = (low + high) // 2  # <= n, a real value of t
        active, ok = low < high, plus_one(middle)
        high = np.where(active & ok, middle, high)
        low = np.where(active & ~ok, middle + 1, low)
    return direction, low.astype(np.int32)


def export_packed(npz_path, out_path):
    """Write the packed model of `npz_path` (§2.5 layout) to `out_path`; returns (float bytes, packed bytes).

    File (numpy .npz, format 'binarynet-packed' version 1):
      widths      int64 (L+1,)          layer widths, input first
      w{k}        uint64 (units, ceil(fan_in/64))  sign(W_k) as bits (1 = +1), packed along the input
                                        dimension LSB first (kernels.cpu.pack_cols layout), k = 0 … L−1
      bn0, bn{L−1} float32 (4, units)   first and output blocks keep float BN: rows b, mean, gamma·inv_std, beta
      dir{k}, tau{k}  int8 / int32 (units,)  hidden blocks 1 … L−2: a = +1 iff dir·s >= tau (`fold_threshold`)
    The first block's input is real-valued (float product), and the output needs the BN values for argmax.
    The file is written atomically (a temporary file in the same folder, renamed over `out_path`); writing onto
    the model file itself is refused.
    """
    check_export_path(out_path, npz_path)
    blocks = load_blocks(npz_path)
    arrays = {"format": np.array(PACKED_FORMAT), "version": np.array(PACKED_VERSION, dtype=np.int32),
              "widths": np.array([blocks[0].W.shape[0]] + [b.W.shape[1] for b in blocks], dtype=np.int64)}
    last = len(blocks) - 1
    for k, block in enumerate(blocks):
        arrays[f"w{k}"] = np.ascontiguousarray(pack_cols(block.W), dtype=np.uint64)
        if k in (0, last):
            arrays[f"bn{k}"] = np.stack([block.b, block.mean, block.scale, block.beta]).astype(np.float32)
        else:
            arrays[f"dir{k}"], arrays[f"tau{k}"] = fold_threshold(block.b, block.mean, block.scale, block.beta,
                                                                  block.W.shape[0])
    _write_npz_atomically(out_path, arrays)
    return os.path.getsize(npz_path), os.path.getsize(out_path)


def check_export_path(out_path, model_path):
    """Refuse, before any long evaluation, an export path that is the model itself, a folder, or in a folder
    that is missing or not writable (probed by creating a temporary file there)."""
    if os.path.isdir(out_path):
        example = os.path.join(out_path, "packed.npz")
        raise InferenceError(f"--export {out_path} is a folder; pass a file name such as {example}")
    if os.path.exists(out_path) and os.path.exists(model_path) and os.path.samefile(out_path, model_path):
        raise InferenceError(f"--export {out_path} is the model file itself, which would be destroyed; pass another "
                             "file name")
    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise InferenceError(f"--export {out_path}: the folder {folder} does not exist; create it or choose another "
                             "path")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".export-probe-"):
            pass
    except OSError as err:
        raise InferenceError(f"--export {out_path}: cannot write in {folder} ({err.strerror or err}); choose a "
                             "writable folder")


def _write_npz_atomically(path, arrays):
    """numpy.savez into a temporary file next to `path`, fsync, rename over `path`, fsync the folder: `path`
    is either the old file or the complete new one. A failed write (full disk ...) leaves no temporary file."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as err:
        raise InferenceError(f"cannot write {path} ({err.strerror or err}); choose a writable folder")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # the permissions a plain open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError):
            reason = err.strerror or f"short write: {err}"
            raise InferenceError(f"could not write {path} ({reason}); free some space or choose another --export path")
        raise
    folder_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


def load_packed(packed_path):
    """Read and check a packed model file; returns the dict of its arrays."""
    arrays = _read_npz(packed_path)
    if "format" not in arrays or str(arrays["format"]) != PACKED_FORMAT:
        raise InferenceError(f"{packed_path} is not a packed BinaryNet model; create one with "
                             f"python binary_inference.py --model M.npz --export {packed_path}")
    version = arrays.get("version")
    if version is None or version.shape != () or version.dtype.kind not in "iu" or int(version) != PACKED_VERSION:
        found = "none" if version is None else (str(version) if version.shape == () and version.dtype.kind in "iu"
                                                else f"a {version.dtype} array of shape {version.shape}")
        raise InferenceError(f"{packed_path} has packed-format version {found}, this code reads version "
                             f"{PACKED_VERSION}; re-export it")
    widths = arrays.get("widths")
    if widths is None or widths.ndim != 1 or widths.dtype.kind not in "iu" or len(widths) < 3 or widths.min() < 1:
        raise InferenceError(f"{packed_path} is damaged: 'widths' must list at least 3 positive layer widths; "
                             "re-export it")
    widths = [int(w) for w in widths]
    for k in range(len(widths) - 1):
        units = widths[k + 1]
        expected = {f"w{k}": ("u", (units, -(-widths[k] // 64)))}
        if 0 < k < len(widths) - 2:
            expected.update({f"dir{k}": ("i", (units,)), f"tau{k}": ("i", (units,))})
        else:
            expected[f"bn{k}"] = ("f", (4, units))
        bad = [name for name, (kind, shape) in expected.items()
               if name not in arrays or arrays[name].dtype.kind != kind or arrays[name].shape != shape]
        if bad:
            missing = ",".join(bad)
            raise InferenceError(f"{packed_path} is damaged: layer {k}'s {missing} missing or of the wrong type or "
                                 "shape; re-export it")
    return arrays


def unpack_weights(bits, fan_in):
    """±1 float32 matrix (fan_in, units) from bits (units, words) packed LSB first along the input dimension."""
    as_bytes = np.ascontiguousarray(bits, dtype="<u8").view(np.uint8)
    ones = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :fan_in]
    return (2 * ones.astype(np.float32) - 1).T.copy()


def run_packed(packed_path, X, threads=None, first_layer=None):
    """Predicted classes for inputs X (N, fan_in or N,1,28,28) from a packed model, with NumPy + kernels.cpu.

    Layer 1: z = X · W + b (float32, weights unpacked once; or z = first_layer(X) if given, e.g. Theano's own
    product, to compare bit for bit), a = [BN(z) >= 0] packed to bits.
    Hidden layers: s = xnor_gemm_packed (integer dot of ±1 vectors), a = [dir·s >= tau].
    Output: argmax of BN(s + b) in float32.
    """
    model = load_packed(packed_path)
    widths = [int(w) for w in model["widths"]]
    L = len(widths) - 1
    X = _flatten(X, widths[0])
    bias, mean, scale, beta = model["bn0"]
    z = first_layer(X) if first_layer else X @ unpack_weights(model["w0"], widths[0]) + bias
    y = (z - mean) * scale + beta  # BN(x + b) in the §1.7.2 order
    bits = pack_rows(y)  # bit = [y >= 0] = [sign(y) = +1]
    for k in range(1, L):
        s = xnor_gemm_packed(bits, model[f"w{k}"], widths[k], threads=threads)
        if k == L - 1:
            bias, mean, scale, beta = model[f"bn{k}"]
            return np.argmax(batch_norm_float32(s, bias, mean, scale, beta), axis=1)
        margin = model[f"dir{k}"].astype(np.float32) * s - model[f"tau{k}"].astype(np.float32)
        bits = pack_rows(margin)  # margin >= 0 <=> dir·s >= tau (integers below 2^24 are exact in float32)


def time_packed(packed_path, X, threads=None):
    """(predictions, seconds) of `run_packed` after one warm-up call (the timed call includes loading the file)."""
    run_packed(packed_path, X[:WARM_UP_EXAMPLES], threads=threads)
    start = time.perf_counter()
    predictions = run_packed(packed_path, X, threads=threads)
    return predictions, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------
# The fast path: the first layer exactly from 8-bit pixels, all layers in one native pass (kernels/packed_net.c)
# ----------------------------------------------------------------------------------------------------------

PIXEL_MAX = 255  # MNIST inputs are x = 2 * pixel / 255 - 1 ('pm1', ORIGINALS.md §3.1)


def pm1_from_pixels(pixels):
    """float32 inputs as plumbing.datasets computes them from uint8 pixels: 2 * (pixel / 255) - 1 in float32."""
    x = np.asarray(pixels).astype(np.float32) / np.float32(PIXEL_MAX)
    return np.float32(2) * x - np.float32(1)


def pixels_from_pm1(X):
    """The uint8 pixels p (N, features) with pm1_from_pixels(p) == X bit for bit; InferenceError otherwise."""
    X = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    p = np.rint((X.astype(np.float64) + 1) * (PIXEL_MAX / 2))
    if X.size and not (np.isfinite(p).all() and p.min() >= 0 and p.max() <= PIXEL_MAX):
        raise InferenceError("the fast path needs 8-bit pixel inputs x = 2 * pixel / 255 - 1 (MNIST 'pm1'), got "
                             "values outside [-1, 1]; use the float path for other inputs")
    pixels = p.astype(np.uint8)
    if not np.array_equal(pm1_from_pixels(pixels), X):
        raise InferenceError("the fast path needs 8-bit pixel inputs x = 2 * pixel / 255 - 1 (MNIST 'pm1'); these "
                             "inputs are not of that form; use the float path for other inputs")
    return pixels


def row_popcounts(bits):
    """Number of set bits in each row of a uint64 matrix."""
    as_bytes = np.ascontiguousarray(bits, dtype="<u8").view(np.uint8)
    return np.unpackbits(as_bytes, axis=1).sum(axis=1, dtype=np.int64)


def first_layer_thresholds(w0_bits, fan_in, bias, mean, scale, beta):
    """Per unit (dir int8, tau int32) with, for every integer P = sum_i p_i w_i (pixels p_i in 0..255):

        BN(z) >= 0 in exact arithmetic   <=>   dir·P >= tau,   z = sum_i x_i w_i + b = 2P/255 − S + b

    where x_i = 2p_i/255 − 1 and S = sum_i w_i = 2·popcount(w bits) − fan_in ([BNN] §2.5: the first layer from
    the pixels' bit planes; the affine part of the input scaling folds into S). With g = scale = gamma·inv_std
    (the float32 values as exact rationals) and t = (255/2)·(S − b + mean − beta/g):
        g > 0:  BN >= 0  <=>  P >= t   ->  dir = +1, tau = ceil(t)
        g < 0:  BN >= 0  <=>  P <= t   ->  dir = −1, tau = −floor(t)
        g = 0:  BN = beta, a constant: tau = −255·fan_in (always on) or 255·fan_in + 1 (never on).
    Computed with Python fractions, so the thresholds are exact; the float path rounds its sums and can differ
    where BN(z) is within float32 rounding of 0 (`first_layer_ties`).
    """
    S = 2 * row_popcounts(w0_bits) - fan_in
    limit = PIXEL_MAX * fan_in
    directions = np.ones(len(S), dtype=np.int8)
    taus = np.empty(len(S), dtype=np.int64)
    for u in range(len(S)):
        b, m, g, e = (Fraction(float(v[u])) for v in (bias, mean, scale, beta))
        if g == 0:
            taus[u] = -limit if e >= 0 else limit + 1
            continue
        t = Fraction(PIXEL_MAX, 2) * (int(S[u]) - b + m - e / g)
        if g > 0:
            taus[u] = math.ceil(t)
        else:
            directions[u], taus[u] = -1, -math.floor(t)
    return directions, np.clip(taus, -limit, limit + 1).astype(np.int32)


class FastModel:
    """A packed model laid out for kernels/packed_net.c: weights packed once (in panels of 32 units), every
    batch norm + sign an integer interval test."""

    def __init__(self, widths, weights, lo, hi, out_bn):
        self.widths, self.weights, self.lo, self.hi, self.out_bn = widths, weights, lo, hi, out_bn


def prepare_fast(packed_path):
    """FastModel of a packed model file (`export_packed`): the first layer's exact integer thresholds
    (`first_layer_thresholds`) and the hidden layers' folded ones as bounds, the weights in packed_net's panels."""
    model = load_packed(packed_path)
    widths = [int(w) for w in model["widths"]]
    L = len(widths) - 1
    weights = [packed_net.panels(model[f"w{k}"], widths[k + 1]) for k in range(L)]
    thresholds = [first_layer_thresholds(model["w0"], widths[0], *model["bn0"])]
    thresholds += [(model[f"dir{k}"], model[f"tau{k}"]) for k in range(1, L - 1)]
    bounds = [packed_net.bounds(directions, taus) for directions, taus in thresholds]
    out_bn = np.ascontiguousarray(model[f"bn{L - 1}"], dtype=np.float32)
    return FastModel(np.array(widths, dtype=np.int64), weights, [b[0] for b in bounds], [b[1] for b in bounds],
                     out_bn)


def run_fast(fast, pixels, threads=None, variant="native", scores=False, first_bits=False):
    """Predicted classes of uint8 pixels (N, fan_in) by the fast path; threads=None: every usable CPU.
    With scores / first_bits, returns a dict that also holds the output layer's batch-norm values and the first
    layer's activations as bits (rows of packed_net.words(widths[1]) words)."""
    pixels = np.ascontiguousarray(np.asarray(pixels).reshape(len(pixels), -1))
    if pixels.dtype != np.uint8 or pixels.shape[1] != fast.widths[0]:
        raise InferenceError(f"the fast path takes uint8 pixels with {fast.widths[0]} per example, got "
                             f"{pixels.dtype} {pixels.shape}; convert float inputs with pixels_from_pm1")
    threads = len(os.sched_getaffinity(0)) if threads is None else threads
    out = packed_net.run_network(pixels, fast.widths, fast.weights, fast.lo, fast.hi, fast.out_bn, threads,
                                 variant, scores, first_bits)
    return out if scores or first_bits else out["predictions"]


def unpack_activation_bits(bits, units):
    """bool (N, units) from activation rows packed LSB first (True = +1)."""
    as_bytes = np.ascontiguousarray(bits, dtype="<u8").view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :units].astype(bool)


def numpy_predictor(blocks):
    """The float network of §4.5 with NumPy's BLAS (float32 products, BN in the §1.7.2 order, sign)."""
    weights = [sign_numpy(block.W) for block in blocks]

    def predict(X):
        a = _flatten(X, blocks[0].W.shape[0])
        for k, (block, Wb) in enumerate(zip(blocks, weights)):
            y = batch_norm_float32(a @ Wb, block.b, block.mean, block.scale, block.beta)
            a = sign_numpy(y) if k < len(blocks) - 1 else y
        return np.argmax(a, axis=1)

    return predict


def first_layer_bound(fan_in, x_abs_sum, z, bias, mean, scale, beta):
    """Bound on |BN_float − BN_exact| of a first-layer unit (arrays broadcast elementwise): float32 inputs (3u
    each), a float32 sum of fan_in terms in any order or blocking (gamma_n · sum|x|), four rounded BN operations
    and a possibly rounded gamma·inv_std, with u = 2^-24; generous by a factor 1.01 (standard error analysis
    of floating-point sums, e.g. Higham, Accuracy and Stability of Numerical Algorithms, ch. 2-4)."""
    u = 2.0 ** -24
    gamma_n = fan_in * u / (1 - fan_in * u)
    error_z = 3 * u * fan_in + gamma_n * (x_abs_sum + 3 * u * fan_in)
    magnitude = np.abs(z) + np.abs(bias) + np.abs(mean)
    return 1.01 * (np.abs(scale) * (error_z + 6 * u * magnitude) + 2 * u * np.abs(beta))


def first_layer_ties(block, fast_bits, float_bits, pixels):
    """Compare the fast path's exact first-layer activations with the float path's (bool, examples x units).

    Returns {'differ': activations that differ, 'ties': of those, how many have an exact BN value within the
    float32 rounding bound of 0 (`first_layer_bound`), 'beyond': the others (a bug if not 0), 'examples': the
    examples with a differing activation (indices)}.
    """
    rows, units = np.nonzero(fast_bits != float_bits)
    Wb = np.where(block.W[:, units] >= 0, 1, -1).astype(np.int64)
    P = np.einsum("ij,ji->i", pixels[rows].astype(np.int64), Wb)  # exact integers
    z = 2 * P / PIXEL_MAX - Wb.sum(axis=0) + block.b[units]
    scale = block.scale[units].astype(np.float64)
    y = (z - block.mean[units]) * scale + block.beta[units]
    x_abs_sum = np.abs(2 * pixels[rows].astype(np.float64) / PIXEL_MAX - 1).sum(axis=1)
    bound = first_layer_bound(block.W.shape[0], x_abs_sum, z, block.b[units], block.mean[units], scale,
                              block.beta[units])
    within = np.abs(y) <= bound
    return {"differ": len(rows), "ties": int(within.sum()), "beyond": int((~within).sum()),
            "examples": np.unique(rows)}


# ----------------------------------------------------------------------------------------------------------
# End-to-end inference benchmark (python benchmark.py --inference [--model FILE | --random])
# ----------------------------------------------------------------------------------------------------------

def benchmark_inputs(model_path, data_dir, examples, seed=1):
    """(pixels uint8, X float32 pm1, labels): the MNIST test set for a trained model, else random pixels."""
    if model_path is None:
        rng = np.random.RandomState(seed)
        pixels = rng.randint(0, PIXEL_MAX + 1, (examples, 784)).astype(np.uint8)
        return pixels, pm1_from_pixels(pixels), rng.randint(0, 10, examples)
    data = datasets.load_mnist("pm1", data_dir=data_dir)
    X = data["X_test"].reshape(len(data["X_test"]), -1)[:examples]
    return pixels_from_pm1(X), X, _labels(data["y_test"])[:examples]


def parse_thread_counts(text):
    """'1,all' -> [1, number of usable CPUs]."""
    counts = []
    for item in str(text).split(","):
        item = item.strip().lower()
        if item == "all":
            counts.append(len(os.sched_getaffinity(0)))
        elif item.isdigit() and int(item) >= 1:
            counts.append(int(item))
        else:
            raise InferenceError(f"bad thread count {item!r} in --threads: use positive integers or 'all', e.g. 1,all")
    return list(dict.fromkeys(counts))


class cpu_limit:
    """Context: BLAS/OpenMP limited to `threads` (threadpoolctl); with 1 thread the process is also pinned to one
    core, so kernels that start their own threads (the XnorGemm op) use one core too."""

    def __init__(self, threads):
        self.threads = threads

    def __enter__(self):
        from threadpoolctl import threadpool_limits
        self.affinity = os.sched_getaffinity(0)
        if self.threads == 1:
            os.sched_setaffinity(0, {min(self.affinity)})
        self.limits = threadpool_limits(limits=self.threads)
        return self

    def __exit__(self, *exc):
        self.limits.unregister()
        os.sched_setaffinity(0, self.affinity)


def time_path(run, repeats):
    """(median s, min s, median process CPU s, predictions) of `repeats` calls of run() after one warm-up call on a
    few examples. The CPU time (all threads of the process) is robust to other processes on the machine."""
    run(WARM_UP_EXAMPLES)
    seconds, cpu_seconds, predictions = [], [], None
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        predictions = np.asarray(run(None))
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return statistics.median(seconds), min(seconds), statistics.median(cpu_seconds), predictions


def network_name(widths):
    """'3x4096' for 784-4096-4096-4096-10, else the hidden widths joined by '-'."""
    hidden = [int(w) for w in widths[1:-1]]
    return f"{len(hidden)}x{hidden[0]}" if len(set(hidden)) == 1 else "-".join(map(str, hidden))


def benchmark_inference(model_path=None, data_dir=None, thread_counts=None, repeats=3, examples=10000):
    """Time the network on `examples` images with each path at each thread count, side by side; print a table,
    the first-layer tie analysis, the packed model's size and, last, the speed-up line. Returns the rows.

    Paths: the float network with Theano's BLAS (the faithful reproduction, and the reference predictions)
    and with NumPy's BLAS, the original-style XNOR path (Theano graph with the XnorGemm op), and the fast path
    (`run_fast`). model_path=None: a random 3x4096 model (`write_random_model`) on random pixels.
    """
    thread_counts = thread_counts or [1, len(os.sched_getaffinity(0))]
    with tempfile.TemporaryDirectory(prefix="bnn-inference-") as tmp:
        random_model = model_path is None
        if random_model:
            model_path = os.path.join(tmp, "random.npz")
            write_random_model(model_path)
        blocks = load_blocks(model_path)
        pixels, X, labels = benchmark_inputs(None if random_model else model_path, data_dir, examples)
        X = _flatten(X, blocks[0].W.shape[0])
        packed_path = os.path.join(tmp, "packed.npz")
        float_bytes, packed_bytes = export_packed(model_path, packed_path)
        fast = prepare_fast(packed_path)
        return _benchmark_paths(blocks, fast, pixels, X, labels, thread_counts, repeats,
                                "random pixels, random model" if random_model else
                                f"test set of the MNIST-format files in {data_dir or 'the download folder'}",
                                (float_bytes, packed_bytes))


def _benchmark_paths(blocks, fast, pixels, X, labels, thread_counts, repeats, inputs_name, sizes):
    from plumbing import compat
    widths = [blocks[0].W.shape[0]] + [block.W.shape[1] for block in blocks]
    numpy_blas = numpy_blas_name()
    float_paths = {f"float, Theano BLAS ({compat.BLAS_NAME.split(' ')[0]})": compile_predictor(blocks, "blas"),
                   f"float, NumPy BLAS ({numpy_blas})": numpy_predictor(blocks)}
    xnor_theano = compile_predictor(blocks, "xnor")
    fast_name = f"fast XNOR (bit planes, one pass, {packed_net.code_path()})"
    print(f"end-to-end inference, BinaryNet MLP {'-'.join(map(str, widths))}, {len(X)} images ({inputs_name}); "
          f"median and min of {repeats} runs after a warm-up; 1 thread = process pinned to one core")
    march = " ".join(f for f in packed_net.flags("native") if f.startswith("-march")) or "no -march"
    print(f"{describe_cpu_libraries()}; fast path: {packed_net.code_path()} (gcc {march})")
    print(f"load average before: {cli.load_averages()}")
    rows = []
    for threads in thread_counts:
        with cpu_limit(threads):
            runs = [(name, lambda n, p=predict: p(X[:n] if n else X)) for name, predict in float_paths.items()]
            runs.append(("XNOR, original style (Theano + XnorGemm op)", lambda n: xnor_theano(X[:n] if n else X)))
            runs.append((fast_name, lambda n: run_fast(fast, pixels[:n] if n else pixels, threads)))
            for name, run in runs:
                median, minimum, cpu, predictions = time_path(run, repeats)
                rows.append({"threads": threads, "path": name, "median": median, "min": minimum, "cpu": cpu,
                             "predictions": predictions, "error": 100.0 * float(np.mean(predictions != labels))})
                print(f"  measured threads={threads} {name:<52} {median:8.4f} s", flush=True)
    print_inference_table(rows, float_paths)
    reference = rows[0]["predictions"]
    from kernels.gpu import gpu_status
    usable, message = gpu_status()
    if usable:
        gpu_inference_report(blocks, X, reference, repeats)
    else:
        print(f"GPU: not measured ({message})")
    # The float first layer is recomputed at the reference row's thread count: OpenBLAS splits its sums
    # differently at other thread counts, which moves float32 ties (the float rows at 2 threads may differ).
    with cpu_limit(rows[0]["threads"]):
        ties = fast_path_ties(blocks, fast, pixels, X, reference, [r for r in rows if r["path"] == fast_name])
    print(f"packed model: {sizes[1]} bytes, float model {sizes[0]} bytes, {sizes[0] / sizes[1]:.1f}x smaller")
    print(f"load average after:  {cli.load_averages()}")
    print(speedup_line(rows, float_paths, fast_name, widths, len(X), ties))
    if ties["unexplained"] or ties["beyond"]:
        raise InferenceError(f"the fast path disagrees with the float path beyond first-layer float32 ties "
                             f"({ties['unexplained']} predictions, {ties['beyond']} activations): a bug")
    return rows


def numpy_blas_name():
    """'openblas 0.3.20 SkylakeX' (threadpoolctl's view of the BLAS NumPy uses)."""
    for info in threadpool_info():
        if info.get("user_api") == "blas" and "numpy" in info.get("filepath", ""):
            return f"{info.get('internal_api')} {info.get('version')} {info.get('architecture') or ''}".strip()
    return "unknown"


def print_inference_table(rows, float_paths):
    reference = rows[0]["predictions"]
    print(f"\n{'threads':>7}  {'path':<52} {'median s':>9} {'min s':>8} {'best float/t':>12} {'CPU s':>8} "
          f"{'error %':>8} {'differ from Theano float':>25}")
    for row in rows:
        same = [r for r in rows if r["threads"] == row["threads"]]
        best_float = min(r["median"] for r in same if r["path"] in float_paths)
        print(f"{row['threads']:>7}  {row['path']:<52} {row['median']:9.4f} {row['min']:8.4f} "
              f"{best_float / row['median']:11.2f}x {row['cpu']:8.3f} {row['error']:8.2f} "
              f"{int(np.sum(row['predictions'] != reference)):>25}")
    print("(seconds: wall clock; CPU s: median CPU time of the process, all its threads, robust to other load)\n")


def fast_path_ties(blocks, fast, pixels, X, reference, fast_rows):
    """First-layer tie analysis of the fast path against the Theano float path (`first_layer_ties`), printed.
    'unexplained' = examples whose prediction differs although their first-layer activations are the same."""
    from plumbing.compat import theano
    input_var, activations = build_network(blocks, "blas", first_activations=True)
    float_bits = np.asarray(theano.function([input_var], activations)(X)) > 0
    exact = run_fast(fast, pixels, first_bits=True)
    fast_bits = unpack_activation_bits(exact["first_bits"], blocks[0].W.shape[1])
    ties = first_layer_ties(blocks[0], fast_bits, float_bits, pixels)
    differ = np.nonzero(exact["predictions"] != reference)[0]
    ties["predictions"] = len(differ)
    ties["unexplained"] = int(len(np.setdiff1d(differ, ties["examples"])))
    ties["runs_agree"] = all(np.array_equal(r["predictions"], exact["predictions"]) for r in fast_rows)
    print(f"first layer, fast path (exact from the pixels) vs Theano float: {ties['differ']} of {fast_bits.size} "
          f"activations differ on {len(ties['examples'])} examples; {ties['ties']} of them are float32 ties (exact "
          f"batch-norm value within the float32 rounding bound of 0), {ties['beyond']} are not")
    print(f"predictions, fast path vs Theano float: {ties['predictions']} of {len(X)} differ, "
          f"{ties['predictions'] - ties['unexplained']} of them on examples with a first-layer tie; "
          f"fast-path runs at every thread count identical: {ties['runs_agree']}")
    return ties


def speedup_line(rows, float_paths, fast_name, widths, examples, ties):
    """The last line: the fast path's speed-up over the best float path (the smaller over the thread counts)."""
    parts, ratios = [], []
    for threads in dict.fromkeys(r["threads"] for r in rows):
        same = [r for r in rows if r["threads"] == threads]
        best = min((r for r in same if r["path"] in float_paths), key=lambda r: r["median"])
        fast_row = next(r for r in same if r["path"] == fast_name)
        ratios.append(best["median"] / fast_row["median"])
        label = best["path"].split("(")[0].replace("float, ", "").strip()
        parts.append(f"{threads} thread{'s' if threads > 1 else ''}: {ratios[-1]:.2f}x, "
                     f"{best['median']:.3f} s {label} vs {fast_row['median']:.3f} s")
    predictions = "identical predictions" if not ties["predictions"] else \
        f"{ties['predictions']} predictions differ, all at first-layer float32 ties"
    return (f"end-to-end MNIST {network_name(widths)}, {examples} images: fast XNOR path {min(ratios):.2f}x faster "
            f"than the best float path ({'; '.join(parts)}; {predictions})")


def benchmark_from_args(args):
    """Entry of `python benchmark.py --inference [--model FILE | --random] [--data-dir D] [--threads 1,all]`."""
    if bool(args.model) == bool(args.random):
        raise InferenceError("--inference needs exactly one of --model FILE (a trained model, run on the MNIST test "
                             "set) or --random (a random 3x4096 model on random pixels)")
    benchmark_inference(args.model, args.data_dir, parse_thread_counts(args.threads), args.repeats)
    return 0


# ----------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------

def run(model_path, data_dir=None, kernels=KERNELS, device="cpu", export_path=None, batch_size=10000,
        X=None, y=None):
    """Evaluate a trained model on the MNIST test set (or on given X, y) with each kernel; optionally export.

    Returns {'kernels': evaluate(...) results, 'packed': None or {'path', 'float_bytes', 'packed_bytes',
    'ratio', 'error', 'seconds', 'predictions'}}.
    """
    blocks = load_blocks(model_path)
    kernels = _check_kernels(kernels)  # options first: no data download for a typo
    if export_path:
        check_export_path(export_path, model_path)  # before the evaluation, which can take minutes
    if batch_size < 1:
        raise InferenceError(f"batch size must be positive, got {batch_size}")
    device = resolve_device(device)
    if X is None:
        data = datasets.load_mnist("pm1", data_dir=data_dir)
        X, y = data["X_test"], data["y_test"]
    results = {"kernels": evaluate(blocks, X, y, kernels, device, batch_size), "packed": None}
    if export_path:
        float_bytes, packed_bytes = export_packed(model_path, export_path)
        predictions, seconds = time_packed(export_path, X)
        error = 100.0 * float(np.mean(predictions != _labels(y)))
        ratio = float_bytes / packed_bytes
        print(f"packed model {export_path}: {packed_bytes} bytes, float model {float_bytes} bytes, "
              f"{ratio:.1f}x smaller")
        print(f"packed run (numpy + kernels.cpu): error {error:.2f} %, run time {seconds:.4f} s")
        name, reference = next(iter(results["kernels"].items()))
        differ = int(np.sum(predictions != reference["predictions"]))
        # Bit-exact check: the same packed model with the first layer's float product taken from Theano (MKL).
        same_product = run_packed(export_path, X, first_layer=compile_first_layer(blocks)) if device == "cpu" \
            else predictions
        exact_differ = int(np.sum(same_product != reference["predictions"]))
        if exact_differ:  # loud but not fatal: Theano's fused BN may round (x·gamma)·inv_std, not x·(gamma·inv_std)
            print(f"!!! PACKED MODEL (THEANO'S FIRST-LAYER PRODUCT) DIFFERS FROM THE {name.upper()} RUN ON "
                  f"{exact_differ} EXAMPLES !!!")
        else:
            print(f"packed model with Theano's first-layer product: same predictions as the {name} run")
        print(f"packed model with NumPy's first-layer product: {differ} of {len(X)} predictions differ from the "
              f"{name} run (float32 sums of the real-valued first layer in another order; all other layers are "
              "exact)")
        results["packed"] = {"path": export_path, "float_bytes": float_bytes, "packed_bytes": packed_bytes,
                             "ratio": ratio, "error": error, "seconds": seconds, "predictions": predictions,
                             "differ_numpy_first_layer": differ, "differ_theano_first_layer": exact_differ}
    return results


def write_random_model(path, widths=(784, 4096, 4096, 4096, 10), seed=0):
    """Write an untrained model in the §2.5 layout (for timing): W ~ U(−1, 1), b = beta = mean = 0, gamma = 1,
    inv_std = 1/sqrt(fan_in) (the spread of a sum of fan_in ±1 terms)."""
    rng = np.random.RandomState(seed)
    blocks = []
    for fan_in, units in zip(widths[:-1], widths[1:]):
        zeros, ones = np.zeros(units, np.float32), np.ones(units, np.float32)
        blocks.append(Block(rng.uniform(-1, 1, (fan_in, units)).astype(np.float32), zeros, zeros, ones, zeros,
                            ones / np.float32(np.sqrt(fan_in))))
    save_blocks(blocks, path)


def random_inputs(n, fan_in, seed=1):
    """(X, labels): n inputs uniform in [−1, 1] and random labels, for timing without a data set."""
    rng = np.random.RandomState(seed)
    return rng.uniform(-1, 1, (n, fan_in)).astype(np.float32), rng.randint(0, 10, n)


def add_arguments(parser):
    """Options shared with mnist.py --runtime (which has --data-dir and --batch-size of its own)."""
    parser.add_argument("--kernels", default=",".join(KERNELS),
                        help="comma-separated products to time: blas, baseline, xnor (default: all)")
    parser.add_argument("--device", default="cpu", choices=DEVICES,
                        help="cpu; gpu (error if none); auto (GPU if usable, else CPU)")
    parser.add_argument("--export", default=None, metavar="FILE", help="also write the bit-packed model here, "
                        "report its size and check its predictions")
    return parser


def main(argv=None):
    parser = cli.Parser("BinaryNet MNIST run-time inference (ORIGINALS.md §4.5).")
    parser.add_argument("--model", required=True, help="trained parameters (.npz, arr_0 ... arr_23)")
    parser.add_argument("--random-inputs", type=cli.positive_int, metavar="N",
                        help="time on N random inputs in [-1, 1] (random labels) instead of the MNIST test set")
    parser.add_argument("--data-dir", help="folder with the MNIST IDX files (default: download)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=10000, help="examples per call")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args.model, args)


def run_from_args(model_path, args):
    """Call `run` with parsed options (data_dir, kernels, device, export, batch_size, random_inputs; missing ones
    take their defaults). For this file's main and mnist.py --runtime."""
    X = y = None
    batch_size = getattr(args, "batch_size", None) or 10000
    try:
        if getattr(args, "random_inputs", None):
            X, y = random_inputs(args.random_inputs, load_blocks(model_path)[0].W.shape[0])
        run(model_path, getattr(args, "data_dir", None), getattr(args, "kernels", KERNELS),
            getattr(args, "device", "cpu"), getattr(args, "export", None), batch_size, X, y)
    except MemoryError:
        n_random = getattr(args, "random_inputs", None)
        inputs = f", {n_random} random inputs" if n_random else ""
        fewer = " or fewer --random-inputs" if n_random else ""
        raise InferenceError(f"out of memory during run-time inference (batches of {batch_size} examples{inputs}); "
                             f"pass a smaller --batch-size{fewer}") from None
    return 0


if __name__ == "__main__":
    sys.exit(cli.main_guard(main))
