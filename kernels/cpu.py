"""CPU XNOR-popcount GEMM and baseline float GEMM (ORIGINALS.md §4.1-4.3; code paths and limits: docs/kernels.md).

The C source `xnor_cpu.c` next to this file is compiled with the system C compiler on first use into
`~/.cache/binarynet-archive/kernels/` (override with BINARYNET_KERNEL_CACHE), keyed by a hash of the source,
the flags and the compiler version, and loaded with ctypes.

Encoding (§4.1, 64-bit words): bit j of word w of a packed row is [x[64w + j] >= 0] (zero counts as +1).
Rows of A and columns of B are both packed along the inner dimension n, so that
    C[i, j] = n - 2 * popcount(Ap[i] xor Bp[j])       (the dot product of the two sign vectors).
Padding bits past n are 0 in both operands and never count as mismatches.

Code paths (path=): 'avx512' (AVX-512 VPOPCNTDQ), 'avx2' (Harley-Seal with a vpshufb popcount), 'neon' (AArch64),
'portable' (plain C); 'auto' takes the fastest this CPU runs.  Every path gives the same, exact result.
"""
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

from plumbing.errors import ArchiveError

__all__ = ["KernelError", "pack_rows", "pack_cols", "xnor_gemm_packed", "xnor_gemm", "baseline_gemm",
           "cpu_features", "available_paths", "resolved_path", "tuning_info", "set_tuning", "measure_rate",
           "library_path", "PATHS", "NEEDS", "RATES"]

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xnor_cpu.c")
CFLAGS = ["-O3", "-shared", "-fPIC", "-pthread", "-fvisibility=hidden", "-std=gnu11"]
PATHS = {"auto": 0, "avx512": 1, "portable": 2, "avx2": 3, "neon": 4}
# What each path needs from the CPU (for the error message when it is missing).
NEEDS = {"avx512": "AVX-512 F, DQ, VL, BW and VPOPCNTDQ", "avx2": "AVX2", "neon": "an AArch64 CPU (Advanced SIMD)",
         "portable": "nothing"}
# Instruction loops xnor_measure_rate times (see benchmark.py): code -> description.
RATES = {"popcnt512": (0, "vpopcntq zmm instructions"), "product512": (1, "512-bit xor + vpopcntq + vpaddq products"),
         "add512": (2, "vpaddq zmm instructions"), "add256": (3, "vpaddq ymm instructions")}
_ERRORS = {1: "the requested code path cannot run on this CPU", 2: "unknown path code", 3: "bad thread count",
           4: "out of memory for the packed operands"}

_lib = None


class KernelError(ArchiveError):
    """Bad input to a CPU kernel, or the kernel library could not be built."""


# -------------------------------------------------------------------------------------------------------------
# Building and loading the shared library.

def _compiler():
    cc = os.environ.get("CC", "gcc")
    path = shutil.which(cc)
    if path is None:
        raise KernelError(f"no C compiler '{cc}' found: install gcc (apt-get install gcc) or set CC")
    return path


def _cache_dir():
    return os.environ.get("BINARYNET_KERNEL_CACHE",
                          os.path.expanduser("~/.cache/binarynet-archive/kernels"))


def library_path():
    """Where the compiled library for the current source, flags and compiler lives (built if missing)."""
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    with open(SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(source + repr((cc, version, CFLAGS)).encode()).hexdigest()[:16]
    target = os.path.join(_cache_dir(), f"xnor_cpu-{key}.so")
    if not os.path.exists(target):
        _build(cc, target)
    return target


def _build(cc, target):
    """Compile into a temporary file in the cache directory, then rename atomically over `target`."""
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=directory)
    os.close(fd)
    try:
        result = subprocess.run([cc] + CFLAGS + ["-o", tmp, SOURCE], capture_output=True, text=True)
        if result.returncode != 0:
            first = (result.stderr.strip().splitlines() or ["(no output)"])[0]
            raise KernelError(f"compiling {SOURCE} failed: {first}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load():
    global _lib
    if _lib is not None:
        return _lib
    lib = ctypes.CDLL(library_path())
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    signatures = {
        "xnor_has_avx512_vpopcntdq": [],
        "xnor_has_popcnt": [],
        "xnor_path_available": [i32],
        "xnor_tuning_info": [ctypes.c_char_p, i32, ptr, ptr, ptr, ptr, ptr],
        "xnor_measure_rate": [i32, i32, ctypes.c_double, ptr],
        "xnor_gemm_f32": [ptr, ptr, i64, i64, i64, ptr, i32, i32],
        "xnor_pack_rows": [ptr, i64, i64, ptr, i32, i32],
        "xnor_pack_cols": [ptr, i64, i64, ptr, i32, i32],
        "xnor_gemm_packed": [ptr, ptr, i64, i64, i64, ptr, i32, i32],
        "baseline_gemm_f32": [ptr, ptr, ptr, i64, i64, i64, i32],
    }
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    lib.xnor_set_tuning.argtypes, lib.xnor_set_tuning.restype = [i32, ctypes.c_double, i32, ctypes.c_double, i32], None
    _lib = lib
    return lib


# -------------------------------------------------------------------------------------------------------------
# Argument checks.

def _threads(threads):
    if threads is None:
        return 0  # the C side: every online CPU, but no more threads than the size of the work justifies
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise KernelError(f"threads must be a positive integer or None (all cores), got {threads!r}")
    return int(threads)


def _path(path):
    if path not in PATHS:
        raise KernelError(f"path must be one of {sorted(PATHS)}, got {path!r}")
    if path != "auto" and not _load().xnor_path_available(PATHS[path]):
        raise KernelError(f"the {path!r} path needs {NEEDS[path]}, which this CPU lacks; use path='auto' "
                          f"(available here: {', '.join(available_paths())})")
    return PATHS[path]


def _matrix(x, dtype, name):
    if not isinstance(x, np.ndarray):
        raise KernelError(f"{name} must be a NumPy array, got {type(x).__name__}")
    if x.dtype != dtype:
        wanted = np.dtype(dtype).name
        raise KernelError(f"{name} must have dtype {wanted}, got {x.dtype} (convert with .astype(np.{wanted}))")
    if x.ndim != 2:
        raise KernelError(f"{name} must be 2-D, got shape {x.shape}")
    return np.ascontiguousarray(x)


def _check(code):
    if code != 0:
        raise KernelError(_ERRORS.get(code, f"kernel returned error code {code}"))


def _ptr(x):
    return x.ctypes.data_as(ctypes.c_void_p)


# -------------------------------------------------------------------------------------------------------------
# Public API.

def words_for(n):
    """Number of uint64 words holding n bits: ceil(n / 64)."""
    return (int(n) + 63) // 64


def pack_rows(A, threads=None, path="auto"):
    """Pack the signs of float32 A (m, n) row by row: uint64 (m, ceil(n/64)), bit j of word w = [A[r, 64w+j] >= 0]."""
    A = _matrix(A, np.float32, "A")
    out = np.empty((A.shape[0], words_for(A.shape[1])), dtype=np.uint64)
    _check(_load().xnor_pack_rows(_ptr(A), A.shape[0], A.shape[1], _ptr(out), _threads(threads), _path(path)))
    return out


def pack_cols(B, threads=None, path="auto"):
    """Pack the signs of float32 B (n, k) column by column, i.e. pack_rows(B.T): uint64 (k, ceil(n/64))."""
    B = _matrix(B, np.float32, "B")
    out = np.empty((B.shape[1], words_for(B.shape[0])), dtype=np.uint64)
    _check(_load().xnor_pack_cols(_ptr(B), B.shape[0], B.shape[1], _ptr(out), _threads(threads), _path(path)))
    return out


def _output(out, m, k):
    """A new float32 (m, k) array, or `out` after checking it can hold the product (C-contiguous float32)."""
    if out is None:
        return np.empty((m, k), dtype=np.float32)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (m, k) \
            or not out.flags.c_contiguous or not out.flags.writeable:
        got = f"{out.dtype} {out.shape} array" if isinstance(out, np.ndarray) else type(out).__name__
        raise KernelError(f"out must be a writeable C-contiguous float32 array of shape {(m, k)}, got {got}")
    return out


def xnor_gemm_packed(Ap, Bp, n, threads=None, path="auto", out=None):
    """C (m, k) float32 with C[i, j] = n - 2 popcount(Ap[i] xor Bp[j]); Ap = pack_rows(A), Bp = pack_cols(B).
    out: an existing (m, k) float32 array to write C into (no new allocation)."""
    Ap, Bp = _matrix(Ap, np.uint64, "Ap"), _matrix(Bp, np.uint64, "Bp")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise KernelError(f"n (the inner dimension in bits) must be a positive integer, got {n!r}")
    words = words_for(n)
    if Ap.shape[1] != words or Bp.shape[1] != words:
        raise KernelError(f"packed operands must have ceil(n/64) = {words} words per row for n = {n}, got Ap "
                          f"{Ap.shape} and Bp {Bp.shape}")
    if n % 64:
        pad = np.uint64(~((1 << (n % 64)) - 1) & 0xFFFFFFFFFFFFFFFF)
        if (Ap[:, -1] & pad).any() or (Bp[:, -1] & pad).any():
            raise KernelError(f"padding bits past n = {n} must be 0 in the last word (pack with pack_rows/pack_cols)"
                              )
    C = _output(out, Ap.shape[0], Bp.shape[0])
    _check(_load().xnor_gemm_packed(_ptr(Ap), _ptr(Bp), Ap.shape[0], Bp.shape[0], int(n), _ptr(C),
                                    _threads(threads), _path(path)))
    return C


def _check_product(A, B):
    A, B = _matrix(A, np.float32, "A"), _matrix(B, np.float32, "B")
    if A.shape[1] != B.shape[0]:
        raise KernelError(f"shapes do not match for A @ B: A {A.shape} and B {B.shape} (A's columns must equal B's "
                          "rows)")
    if A.shape[1] == 0:
        raise KernelError(f"the inner dimension is 0: A {A.shape} and B {B.shape}")
    return A, B


def xnor_gemm(A, B, threads=None, path="auto", out=None):
    """sign(A) @ sign(B) as float32, sign(0) = +1, by packing both and running the XNOR-popcount GEMM (§4.3).

    One C call: the packing is fused into the GEMM's pipeline (docs/kernels.md), same result as
    xnor_gemm_packed(pack_rows(A), pack_cols(B), n).  out: an existing (m, k) float32 array to write into."""
    A, B = _check_product(A, B)
    C = _output(out, A.shape[0], B.shape[1])
    _check(_load().xnor_gemm_f32(_ptr(A), _ptr(B), A.shape[0], A.shape[1], B.shape[1], _ptr(C),
                                 _threads(threads), _path(path)))
    return C


def baseline_gemm(A, B, threads=None):
    """A @ B in float32 with the naive 16x16-tiled scalar C kernel (the paper's "unoptimized baseline", §4.3)."""
    A, B = _check_product(A, B)
    C = np.empty((A.shape[0], B.shape[1]), dtype=np.float32)
    _check(_load().baseline_gemm_f32(_ptr(A), _ptr(B), _ptr(C), A.shape[0], A.shape[1], B.shape[1],
                                     _threads(threads)))
    return C


def _proc_cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_features():
    """CPU facts: model, logical CPUs usable by this process, and the instruction-set flags the kernels use."""
    lib = _load()
    info = _proc_cpuinfo()
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", info, re.M)
    flags = set(flags.group(1).split()) if flags else set()
    return {
        "model": model.group(1).strip() if model else "unknown",
        "cpus": len(os.sched_getaffinity(0)),
        "has_vpopcntdq": bool(lib.xnor_has_avx512_vpopcntdq()),
        "has_popcnt": bool(lib.xnor_has_popcnt()),
        "cpuinfo_avx512_vpopcntdq": "avx512_vpopcntdq" in flags,
        "cpuinfo_flags": sorted(f for f in flags if f.startswith(("avx", "popcnt", "fma"))),
    }


def available_paths():
    """Code paths that run on this CPU, fastest first ('auto' picks the first)."""
    lib = _load()
    return [name for name in ("avx512", "avx2", "neon", "portable") if lib.xnor_path_available(PATHS[name])]


def resolved_path(path="auto"):
    """The code path `path` runs on this CPU ('auto' = the first of available_paths())."""
    _path(path)
    return available_paths()[0] if path == "auto" else path


def tuning_info():
    """The microarchitecture the GEMM's tuning was chosen for (from cpuid) and the tuning values."""
    name = ctypes.create_string_buffer(160)
    l2, rows, share, first, overlap = (ctypes.c_int64(), ctypes.c_int(), ctypes.c_double(), ctypes.c_double(),
                                       ctypes.c_int())
    code = _load().xnor_tuning_info(name, len(name), ctypes.byref(l2), ctypes.byref(rows), ctypes.byref(share),
                                    ctypes.byref(first), ctypes.byref(overlap))
    return {"uarch": name.value.decode(), "uarch_code": code, "l2_bytes": l2.value, "task_rows": rows.value,
            "block_share": share.value, "first_block": first.value, "overlap": bool(overlap.value)}


def set_tuning(task_rows=None, block_share=None, prefetch=None, first_block=None, overlap=None):
    """Override the GEMM tuning chosen for this CPU (benchmarks and tests); None keeps a value.  task_rows is
    rounded up to a multiple of 24; block_share is the share of L2 a column block of packed B may take;
    first_block the width of block 0 (packed before any product) as a share of B's columns; overlap False packs
    both operands first instead of between the micro tiles."""
    if task_rows is not None and (isinstance(task_rows, bool) or not isinstance(task_rows, int) or task_rows < 1):
        raise KernelError(f"task_rows must be a positive integer, got {task_rows!r}")
    if block_share is not None and not (isinstance(block_share, (int, float)) and block_share > 0):
        raise KernelError(f"block_share must be a positive number, got {block_share!r}")
    if first_block is not None and not (isinstance(first_block, (int, float)) and 0 < first_block <= 1):
        raise KernelError(f"first_block must be in (0, 1], got {first_block!r}")
    _load().xnor_set_tuning(task_rows or 0, float(block_share or 0), -1 if prefetch is None else int(bool(prefetch)),
                            float(first_block or 0), -1 if overlap is None else int(bool(overlap)))


def measure_rate(which, threads=1, seconds=0.05):
    """Instructions (or 512-bit products) per second of thread CPU time of a register-only loop, summed over
    `threads` threads running it at once: which is a key of RATES.  None when this CPU lacks the instructions."""
    if which not in RATES:
        raise KernelError(f"which must be one of {sorted(RATES)}, got {which!r}")
    rate = ctypes.c_double()
    code = _load().xnor_measure_rate(RATES[which][0], _threads(threads) or 1, float(seconds), ctypes.byref(rate))
    if code == 1:
        return None
    _check(code)
    return rate.value
