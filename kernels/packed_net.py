"""ctypes front end of kernels/packed_net.c, the fast run-time path of a BinaryNet MLP (docs/runtime.md).

The C file is compiled on first use with the system C compiler into the kernel cache of kernels/cpu.py
(`~/.cache/binarynet-archive/kernels/`, or $BINARYNET_KERNEL_CACHE), keyed by a hash of the source, the flags,
the compiler version and the CPU: the 'native' library is built with -march=native on x86-64, so the
instruction set is the one of the CPU it runs on (AVX-512 VPOPCNTDQ when present, else portable popcount
loops); the 'portable' library never uses the AVX-512 code (tests run both). The model's math (thresholds,
layouts) lives in binary_inference.py; this module only builds, loads and calls the library.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

import numpy as np

from plumbing.errors import ArchiveError

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "packed_net.c")
BASE_FLAGS = ["-O3", "-shared", "-fPIC", "-pthread", "-fvisibility=hidden", "-std=gnu11", "-ffp-contract=off"]
VARIANTS = ("native", "portable")
PATH_NAMES = {1: "avx512", 2: "portable"}
ERRORS = {1: "bad arguments", 2: "out of memory for the per-thread scratch buffers"}

_libraries = {}


class FastPathError(ArchiveError):
    """The fast path's library cannot be built, or a call failed (one-line message)."""


def _compiler():
    cc = os.environ.get("CC", "gcc")
    path = shutil.which(cc)
    if path is None:
        raise FastPathError(f"no C compiler '{cc}' found: install gcc (apt-get install gcc) or set CC")
    return path


def _cpu_identity():
    """Model name and flags of this CPU: part of the cache key of a -march=native build."""
    try:
        with open("/proc/cpuinfo") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags"))]
    except OSError:
        lines = []
    return platform.machine() + "".join(sorted(set(lines)))


def flags(variant):
    """Compiler flags of a variant: 'native' = -march=native on x86-64, 'portable' = no AVX-512 code."""
    if variant not in VARIANTS:
        raise FastPathError(f"unknown fast-path variant {variant!r}; use one of {', '.join(VARIANTS)}")
    march = ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else []
    return BASE_FLAGS + march + (["-DBNN_PORTABLE"] if variant == "portable" else [])


def library_path(variant="native"):
    """Path of the compiled library for this source, variant, compiler and CPU (built when missing)."""
    cc, options = _compiler(), flags(variant)
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    with open(SOURCE, "rb") as handle:
        source = handle.read()
    key = hashlib.sha256(source + repr((cc, version, options, _cpu_identity())).encode()).hexdigest()[:16]
    cache = os.environ.get("BINARYNET_KERNEL_CACHE", os.path.expanduser("~/.cache/binarynet-archive/kernels"))
    target = os.path.join(cache, f"packed_net-{variant}-{key}.so")
    if not os.path.exists(target):
        _build(cc, options, target)
    return target


def _build(cc, options, target):
    """Compile into a temporary file next to `target`, then rename it over `target` (atomic)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=os.path.dirname(target))
    os.close(fd)
    try:
        result = subprocess.run([cc] + options + ["-o", tmp, SOURCE], capture_output=True, text=True)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["(no output)"]
            first = next((line for line in lines if "error" in line), lines[0])
            raise FastPathError(f"compiling {SOURCE} failed: {first}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(variant="native"):
    """The ctypes library of a variant (built and loaded once per process)."""
    if variant not in _libraries:
        lib = ctypes.CDLL(library_path(variant))
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        lib.bnn_fast_path.argtypes, lib.bnn_fast_path.restype = [], ctypes.c_int
        lib.bnn_panel_units.argtypes, lib.bnn_panel_units.restype = [], i64
        lib.bnn_run.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_int]
        lib.bnn_run.restype = ctypes.c_int
        if lib.bnn_panel_units() != PANEL:
            raise FastPathError(f"{SOURCE} and kernels/packed_net.py disagree on the panel width; rebuild")
        _libraries[variant] = lib
    return _libraries[variant]


def code_path(variant="native"):
    """'avx512' or 'portable': the code the variant's library runs on this CPU."""
    return PATH_NAMES[load(variant).bnn_fast_path()]


PANEL = 32  # units per panel of packed_net.c's weight layout
NEVER = 1 << 62  # bounds of a unit that is never on: lo = NEVER > hi = -NEVER


def words(n):
    """uint64 words per activation row of n units: ceil(n / 64)."""
    return -(-int(n) // 64)


def panels(bits, units):
    """packed_net.c's weight layout from rows of sign bits (units x words, kernels.cpu.pack_cols): panels of 32
    units, panel p = words x 32 with word w of unit 32p + c at [w, c]; units past `units` are 0."""
    count, width = -(-units // PANEL), bits.shape[1]
    padded = np.zeros((count * PANEL, width), dtype=np.uint64)
    padded[:units] = bits
    return np.ascontiguousarray(padded.reshape(count, PANEL, width).transpose(0, 2, 1))


def bounds(directions, taus):
    """(lo, hi) int64 per unit, padded to whole panels: dir·value >= tau  <=>  lo <= value <= hi; padding units
    are never on."""
    count = -(-len(taus) // PANEL) * PANEL
    lo, hi = np.full(count, NEVER, dtype=np.int64), np.full(count, -NEVER, dtype=np.int64)
    up = np.asarray(directions) > 0
    taus = np.asarray(taus, dtype=np.int64)
    lo[:len(taus)] = np.where(up, taus, -NEVER)
    hi[:len(taus)] = np.where(up, NEVER, -taus)
    return lo, hi


def _pointer(array):
    return array.ctypes.data_as(ctypes.c_void_p)


def _pointers(arrays):
    return (ctypes.c_void_p * max(1, len(arrays)))(*[array.ctypes.data for array in arrays])


def run_network(pixels, widths, weights, lo, hi, out_bn, threads, variant="native", scores=False, first_bits=False):
    """Run the C pass; returns {'predictions': int32 (N,)} plus 'scores' (N, classes) float32 and
    'first_bits' (N, words(widths[1])) uint64 when asked. weights[k] = panels(...) of layer k, lo/hi = bounds(...)
    of layers 0 .. L-2 (binary_inference.prepare_fast builds them); dtypes and shapes are checked here."""
    widths = np.ascontiguousarray(widths, dtype=np.int64)
    L = len(widths) - 1
    n = len(pixels)
    if len(weights) != L or len(lo) != L - 1 or len(hi) != L - 1 or L < 2:
        raise FastPathError(f"fast path: {len(weights)} weight matrices and {len(lo)} thresholds for {L} layers")
    checks = [(pixels, np.uint8, (n, widths[0]))]
    checks += [(w, np.uint64, (-(-widths[k + 1] // PANEL), words(widths[k]), PANEL)) for k, w in enumerate(weights)]
    checks += [(b, np.int64, (-(-widths[k + 1] // PANEL) * PANEL,)) for bound in (lo, hi) for k, b in enumerate(bound)]
    checks += [(out_bn, np.float32, (4, widths[L]))]
    for array, dtype, shape in checks:
        if array.dtype != dtype or array.shape != tuple(shape) or not array.flags.c_contiguous:
            raise FastPathError(f"fast path: an array of shape {array.shape} and dtype {array.dtype} where "
                                f"{tuple(shape)} {np.dtype(dtype).name} (C order) was expected")
    out = {"predictions": np.empty(n, dtype=np.int32)}
    if scores:
        out["scores"] = np.empty((n, widths[L]), dtype=np.float32)
    if first_bits:
        out["first_bits"] = np.empty((n, words(widths[1])), dtype=np.uint64)
    code = load(variant).bnn_run(_pointer(pixels), n, L, _pointer(widths), _pointers(weights), _pointers(lo),
                                 _pointers(hi), _pointer(out_bn), _pointer(out["predictions"]),
                                 _pointer(out["scores"]) if scores else None,
                                 _pointer(out["first_bits"]) if first_bits else None, int(threads))
    if code != 0:
        raise FastPathError(f"fast path failed: {ERRORS.get(code, f'error code {code}')}")
    return out
