"""GPU side of the run-time kernels (ORIGINALS.md §4) and of run-time inference (docs/runtime.md, "The GPU path").

Everything GPU-related is imported lazily, so this module imports on machines without a GPU, a driver or PyCUDA;
`gpu_status()` says which of these is missing. `compile_cubin()` needs no GPU at all.

* Compilation: binary_kernels.cu -> a cubin for the device's exact architecture, by nvcc when it supports that
  architecture (`nvcc --list-gpu-arch`; CUDA 13 starts at sm_75) and otherwise, or when nvcc is missing or fails,
  by NVRTC 12 from PyPI (sm_50, the paper's GTX 750, up to sm_90), driven through ctypes. The cubin is loaded with
  pycuda.driver.module_from_buffer; PyCUDA's SourceModule is not used (it needs nvcc on the GPU host and raises
  OSError, not CompileError, without it).
* cuBLAS: three functions of the v2 API that cuBLAS 12 and 13 both export (cublasCreate_v2, cublasSgemm_v2,
  cublasDestroy_v2), bound with ctypes from the nvidia-cublas-cu12 / -cu13 wheels, the CUDA toolkit, or the file
  $BINARYNET_CUBLAS names. (scikit-cuda 0.5.3 cannot load cuBLAS 12 or 13.)
* `GpuKernels` owns the device context (the device's primary context, pushed when it is created), the module,
  the cuBLAS handle and every device allocation it makes; `close()` or leaving its `with` block releases them in
  order. It must be used from the thread that created it (checked); it has no __del__ (the garbage collector may
  run on another thread), and sessions still open at exit are closed by an atexit hook on their own thread.
* Launches respect the device's grid limits: row-wise kernels are split into launches of at most
  MAX_GRID_DIM_Y (GEMMs) or MAX_GRID_DIM_X (1-D kernels) blocks; a launch that cannot be split is refused.
* Timing: one pair of CUDA events per repetition, median and minimum over the repetitions, after warm-up.

    python -m kernels.gpu                 # print the status line (exit 1 when no GPU is usable)
    python -m kernels.gpu --time M N K    # time baseline, cuBLAS and XNOR on random ±1 matrices
"""
import atexit
import contextlib
import ctypes
import ctypes.util
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from plumbing.errors import ArchiveError

KERNEL_SOURCE = Path(__file__).with_name("binary_kernels.cu")
KERNEL_NAMES = ("pack_rows", "pack_cols", "xnor_gemm", "baseline_gemm", "bn_sign_pack_rows", "bn_rows")
BLOCK_SIZE = 16          # GEMM tile edge (spec §4.3)
PACK_THREADS = 64        # threads per block of the 1-D kernels (spec §4.2)
BITS = 32                # bits per packed word
NVCC_LOWEST_ARCH = 75    # CUDA 13 nvcc cannot target below sm_75 (used when nvcc cannot list its targets)
NVRTC_PIP = "nvidia-cuda-nvrtc-cu12==12.9.86"
CUBLAS_PIP = "nvidia-cublas-cu12 (CUDA 12) or nvidia-cublas (CUDA 13)"
CUBLAS_SONAMES = ("libcublas.so.13", "libcublas.so.12")
CUBLAS_FUNCTIONS = ("cublasCreate_v2", "cublasSgemm_v2", "cublasDestroy_v2")
CUBLAS_STATUS = {1: "not initialized (no usable device or driver)", 3: "allocation failed", 7: "invalid value",
                 8: "architecture mismatch", 11: "mapping error", 13: "execution failed", 14: "internal error",
                 15: "not supported", 16: "license error"}
NO_DRIVER = "libcuda.so.1 not found: no NVIDIA driver on this machine; use --device cpu"
NO_PYCUDA = "pycuda not installed: pip install -r requirements-gpu.txt (on a GPU host)"

_OPEN_SESSIONS = weakref.WeakSet()


class GpuUnavailable(ArchiveError):
    """No usable GPU: no driver, no device, PyCUDA or cuBLAS missing (one-line message)."""


class KernelCompileError(ArchiveError):
    """The CUDA source could not be compiled, or no compiler is installed (one-line message)."""


class KernelInputError(ArchiveError, ValueError):
    """Operands have the wrong shape or size, or a launch exceeds the device's limits (one-line message)."""


class GpuUsageError(ArchiveError):
    """A GpuKernels session used after close() or from another thread (one-line message)."""


# ----------------------------------------------------------------------------- launch geometry

def words_per_vector(n):
    """Packed 32-bit words holding n bits: ceil(n / 32)."""
    return (n + BITS - 1) // BITS


def pack_launch(total_words):
    """(grid, block) for a 1-D kernel: one thread per item (packed word or element), blocks of 64."""
    return (max(1, -(-total_words // PACK_THREADS)), 1, 1), (PACK_THREADS, 1, 1)


def gemm_launch(m, k):
    """(grid, block) for both GEMM kernels: 16x16 threads, one per element of C (m x k)."""
    return (-(-k // BLOCK_SIZE), -(-m // BLOCK_SIZE), 1), (BLOCK_SIZE, BLOCK_SIZE, 1)


def row_chunks(rows, rows_per_launch):
    """[(first row, row count), ...] covering `rows` in launches of at most rows_per_launch rows."""
    return [(first, min(rows_per_launch, rows - first)) for first in range(0, rows, rows_per_launch)]


def rows_per_1d_launch(name, items_per_row, max_grid_x):
    """Rows a 1-D launch (one thread per item, blocks of 64) may cover within max_grid_x blocks."""
    rows = max_grid_x * PACK_THREADS // max(1, items_per_row)
    if rows < 1:
        raise KernelInputError(f"{name}: one row needs {-(-items_per_row // PACK_THREADS)} blocks of {PACK_THREADS} "
                               f"threads, more than the device's grid limit of {max_grid_x}; split the operand")
    return rows


def rows_per_gemm_launch(name, k, max_grid_x, max_grid_y):
    """Rows of C a GEMM launch may cover: gridDim.y = ceil(rows/16) <= max_grid_y; gridDim.x = ceil(k/16) must fit."""
    if -(-k // BLOCK_SIZE) > max_grid_x:
        raise KernelInputError(f"{name}: {k} columns need {-(-k // BLOCK_SIZE)} blocks along x, more than the device's "
                               f"grid limit of {max_grid_x}; split the product")
    return max_grid_y * BLOCK_SIZE


def check_operands(A, B):
    """Return A, B as C-contiguous float32 (m x n), (n x k); raise KernelInputError otherwise."""
    A = np.asarray(A)
    B = np.asarray(B)
    if A.ndim != 2 or B.ndim != 2:
        raise KernelInputError(f"need 2-D matrices, got shapes {A.shape} and {B.shape}; reshape the inputs")
    (m, n), (n_b, k) = A.shape, B.shape
    if n != n_b:
        raise KernelInputError(f"inner sizes differ: A is {A.shape}, B is {B.shape}; need A (m x n) and B (n x k)")
    if min(m, n, k) == 0:
        raise KernelInputError(f"empty operand: A is {A.shape}, B is {B.shape}; all sizes must be >= 1")
    if max(m * n, n * k, m * k) >= 2 ** 31:
        raise KernelInputError(f"matrices too large for 32-bit kernel indices (m={m}, n={n}, k={k}); split the product")
    return (np.ascontiguousarray(A, dtype=np.float32), np.ascontiguousarray(B, dtype=np.float32))


# ----------------------------------------------------------------------------- compilation

def _arch_number(arch):
    """50, 'sm_50', '50' or 'compute_50' -> 50."""
    text = str(arch).lower().replace("sm_", "").replace("compute_", "")
    if not text.isdigit():
        raise KernelCompileError(f"bad GPU architecture {arch!r}; use a number such as 75 or 'sm_75'")
    return int(text)


def nvcc_archs():
    """Architectures (numbers) the nvcc on PATH can compile for; empty without nvcc."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return []
    result = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True)
    numbers = [_arch_number(a) for a in result.stdout.split() if a.startswith("compute_") and a[8:].isdigit()]
    return numbers if result.returncode == 0 and numbers else list(range(NVCC_LOWEST_ARCH, 200))


def compile_cubin(arch, compiler="auto", defines=()):
    """Compile binary_kernels.cu to a cubin (bytes) for sm_<arch>, without needing a GPU.

    compiler: 'nvcc' (CUDA 13: sm_75 and newer), 'nvrtc' (NVRTC 12 wheel: sm_50..sm_90) or
    'auto' (nvcc when it can target `arch`, NVRTC otherwise).
    """
    number = _arch_number(arch)
    if compiler == "auto":
        compiler = "nvcc" if number in nvcc_archs() else "nvrtc"
    if compiler == "nvcc":
        return _compile_with_nvcc(number, defines)
    if compiler == "nvrtc":
        return _compile_with_nvrtc(number, defines)
    raise KernelCompileError(f"unknown compiler {compiler!r}; use 'nvcc', 'nvrtc' or 'auto'")


def compile_for_device(arch):
    """(compiler name, cubin) for a device of architecture `arch`: nvcc if it supports the architecture, else (or
    if nvcc fails) NVRTC; KernelCompileError naming both failures when neither works."""
    failures = []
    for compiler in (["nvcc"] if arch in nvcc_archs() else []) + ["nvrtc"]:
        try:
            return compiler, compile_cubin(arch, compiler)
        except KernelCompileError as error:
            failures.append(str(error))
    raise KernelCompileError(f"no compiler could build binary_kernels.cu for sm_{arch}: {'; '.join(failures)}")


def _compile_with_nvcc(number, defines):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise KernelCompileError("nvcc not found on PATH: install the CUDA toolkit (e.g. apt-get install "
                                 "cuda-nvcc-13-0) or put its bin directory on PATH")
    with tempfile.TemporaryDirectory(prefix="bnn-nvcc-") as tmp:
        out = Path(tmp) / "kernels.cubin"
        command = [nvcc, "-cubin", f"-arch=sm_{number}", "-o", str(out), str(KERNEL_SOURCE)]
        command += [f"-D{name}" for name in defines]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["no message"]
            first = next((line for line in lines if "error" in line.lower()), lines[0])
            raise KernelCompileError(f"nvcc failed for sm_{number}: {first}")
        return out.read_bytes()


def find_nvrtc():
    """Path of libnvrtc.so.12 (pip wheel nvidia-cuda-nvrtc-cu12, or the system); KernelCompileError if absent."""
    for entry in sys.path:
        hits = sorted(glob.glob(os.path.join(entry, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.12")))
        if hits:
            return hits[0]
    system = ctypes.util.find_library("nvrtc")
    if system and ".so.12" in system:
        return system
    raise KernelCompileError(f"NVRTC 12 not found: pip install {NVRTC_PIP}")


def nvrtc_version():
    """(major, minor) of the NVRTC library found by find_nvrtc()."""
    lib = ctypes.CDLL(find_nvrtc())
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def _compile_with_nvrtc(number, defines):
    lib = ctypes.CDLL(find_nvrtc())
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    program = ctypes.c_void_p()

    def check(status, what):
        if status != 0:
            raise KernelCompileError(f"NVRTC {what} failed for sm_{number}: "
                                     f"{lib.nvrtcGetErrorString(status).decode()}{log_tail()}")

    def log_tail():
        size = ctypes.c_size_t()
        if not program or lib.nvrtcGetProgramLogSize(program, ctypes.byref(size)) != 0 or size.value <= 1:
            return ""
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, log)
        lines = log.value.decode(errors="replace").strip().splitlines()
        return f" ({lines[0]})" if lines else ""

    source = KERNEL_SOURCE.read_text().encode()
    check(lib.nvrtcCreateProgram(ctypes.byref(program), source, b"binary_kernels.cu", 0, None, None), "create")
    try:
        options = [f"--gpu-architecture=sm_{number}".encode()] + [f"-D{name}".encode() for name in defines]
        check(lib.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options)),
              "compile")
        size = ctypes.c_size_t()
        check(lib.nvrtcGetCUBINSize(program, ctypes.byref(size)), "cubin size")
        cubin = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetCUBIN(program, cubin), "cubin")
        return cubin.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


# ----------------------------------------------------------------------------- cuBLAS through ctypes

def cublas_candidates():
    """Files that may hold cuBLAS, in the order tried: $BINARYNET_CUBLAS, the pip wheels' libcublas.so.13/.12,
    the CUDA toolkit's, then the sonames on the loader's path."""
    candidates = [os.environ["BINARYNET_CUBLAS"]] if os.environ.get("BINARYNET_CUBLAS") else []
    for entry in sys.path:
        for pattern in ("nvidia/cu13/lib/libcublas.so.13", "nvidia/cublas/lib/libcublas.so.1[23]"):
            candidates += sorted(glob.glob(os.path.join(entry, pattern)), reverse=True)
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            candidates += sorted(glob.glob(os.path.join(root, "lib64", "libcublas.so.1[23]")), reverse=True)
    return candidates + list(CUBLAS_SONAMES)


def find_cublas():
    """The first cuBLAS candidate that loads and exports the three functions used; GpuUnavailable otherwise."""
    reasons = []
    for candidate in cublas_candidates():
        try:
            library = ctypes.CDLL(candidate)
        except OSError as error:
            reasons.append(_first_line(error))
            continue
        missing = [name for name in CUBLAS_FUNCTIONS if not hasattr(library, name)]
        if not missing:
            return candidate
        reasons.append(f"{candidate} lacks {', '.join(missing)}")
    raise GpuUnavailable(f"cuBLAS 12 or 13 not found ({reasons[-1] if reasons else 'no candidate'}): pip install "
                         f"{CUBLAS_PIP}, or set BINARYNET_CUBLAS to libcublas.so")


class Cublas:
    """cublasCreate_v2 / cublasSgemm_v2 / cublasDestroy_v2 of one cuBLAS library, with one-line errors."""

    def __init__(self, path):
        self.path = path
        self.lib = ctypes.CDLL(path)
        handle, ptr, i32, f32p = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)
        self.lib.cublasCreate_v2.argtypes = [ctypes.POINTER(handle)]
        self.lib.cublasDestroy_v2.argtypes = [handle]
        self.lib.cublasSgemm_v2.argtypes = [handle, i32, i32, i32, i32, i32, f32p, ptr, i32, ptr, i32, f32p, ptr, i32]
        for name in CUBLAS_FUNCTIONS:
            getattr(self.lib, name).restype = ctypes.c_int

    def check(self, status, what):
        if status != 0:
            raise GpuUnavailable(f"cuBLAS {what} failed: status {status} "
                                 f"({CUBLAS_STATUS.get(status, 'unknown')}); library {self.path}")

    def create(self):
        handle = ctypes.c_void_p()
        self.check(self.lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate_v2")
        return handle

    def destroy(self, handle):
        self.check(self.lib.cublasDestroy_v2(handle), "cublasDestroy_v2")

    def sgemm_row_major(self, handle, a, b, c, m, n, k):
        """Row-major C (m x k) = A (m x n) . B (n x k) on device pointers, as column-major C^T = B^T . A^T:
        no transposes, B first (spec §4.6)."""
        one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
        self.check(self.lib.cublasSgemm_v2(handle, 0, 0, k, m, n, ctypes.byref(one), b, k, a, n, ctypes.byref(zero),
                                           c, k), "cublasSgemm_v2")


# ----------------------------------------------------------------------------- availability

def _first_line(error):
    """First non-empty line of an exception's text (messages stay one line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _driver_library_loads():
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def gpu_status():
    """(True, 'GPU ready: ...') if the kernels can run here, else (False, one-line reason)."""
    try:
        import pycuda  # noqa: F401  (lazy: only this function and GpuKernels need PyCUDA)
    except ImportError:
        return False, (NO_PYCUDA if _driver_library_loads() else NO_DRIVER)
    try:
        import pycuda.driver as cuda
    except ImportError:  # PyCUDA without libcuda.so.1
        return False, NO_DRIVER
    try:
        cuda.init()
        count = cuda.Device.count()
        if count:
            name, (major, minor) = cuda.Device(0).name(), cuda.Device(0).compute_capability()
    except cuda.Error as error:
        return False, f"NVIDIA driver found but no usable CUDA device ({_first_line(error)}); use --device cpu"
    if not count:
        return False, "NVIDIA driver found but it reports 0 CUDA devices; use --device cpu"
    try:
        cublas = find_cublas()
    except GpuUnavailable as error:
        return False, str(error)
    return True, f"GPU ready: {count} CUDA device(s), device 0: {name} (sm_{major}{minor}); cuBLAS {cublas}"


# ----------------------------------------------------------------------------- one session on the device

class DeviceArray:
    """A row-major array in device memory: a PyCUDA allocation with a shape and a dtype."""

    def __init__(self, allocation, shape, dtype):
        self.allocation, self.shape, self.dtype = allocation, tuple(int(s) for s in shape), np.dtype(dtype)

    @property
    def ptr(self):
        return int(self.allocation)

    @property
    def nbytes(self):
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def row(self, index):
        """Device pointer (np.uintp, how PyCUDA passes pointers) to row `index`."""
        return np.uintp(self.ptr + index * (self.nbytes // self.shape[0]))


class GpuKernels:
    """binary_kernels.cu and cuBLAS on one device, in one context owned by this object (see the module text).

        with GpuKernels() as gpu:
            C = gpu.xnor_gemm(A, B)          # host float32 in and out: C (m x k) = sign(A) . sign(B)
    """

    def __init__(self, device=0):
        ok, message = gpu_status()
        if not ok:
            raise GpuUnavailable(message)
        import pycuda.driver as cuda
        self._cuda, self._thread, self._allocations = cuda, threading.get_ident(), []
        self._context = self._cublas_handle = None
        self._closed = False
        try:
            cuda.init()
            handle = cuda.Device(device)
            context = handle.retain_primary_context()
        except cuda.Error as error:
            raise GpuUnavailable(f"cannot open CUDA device {device}: {_first_line(error)}; use --device cpu") from None
        try:
            context.push()
        except cuda.Error as error:
            context.detach()
            raise GpuUnavailable(f"cannot make CUDA device {device} current: {_first_line(error)}") from None
        self._context = context
        try:
            self._setup(cuda, handle)
        except BaseException:
            self.close()
            raise
        _OPEN_SESSIONS.add(self)

    def _setup(self, cuda, handle):
        major, minor = handle.compute_capability()
        self.arch, self.device_name = 10 * major + minor, handle.name()
        self.max_grid_x = handle.get_attribute(cuda.device_attribute.MAX_GRID_DIM_X)
        self.max_grid_y = handle.get_attribute(cuda.device_attribute.MAX_GRID_DIM_Y)
        self.compiler, cubin = compile_for_device(self.arch)
        try:
            module = cuda.module_from_buffer(cubin)
            self._kernels = {name: module.get_function(name) for name in KERNEL_NAMES}
        except cuda.Error as error:
            raise KernelCompileError(f"the sm_{self.arch} cubin from {self.compiler} does not load on "
                                     f"{self.device_name}: {_first_line(error)}") from None
        self._cublas = Cublas(find_cublas())
        self._cublas_handle = self._cublas.create()

    # -- ownership --

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check(self):
        if self._closed:
            raise GpuUsageError("this GpuKernels session is closed; create a new one")
        if threading.get_ident() != self._thread:
            raise GpuUsageError("a GpuKernels session is used from another thread than the one that created it; "
                                "create one session per thread")

    def close(self):
        """Free every allocation, destroy the cuBLAS handle, pop and release the context. Idempotent."""
        if self._closed:
            return
        self._check()
        self._closed = True
        _OPEN_SESSIONS.discard(self)
        try:
            for allocation in self._allocations:
                allocation.free()
            self._allocations = []
            if self._cublas_handle is not None:
                self._cublas.destroy(self._cublas_handle)
                self._cublas_handle = None
        finally:
            if self._context is not None:
                self._cuda.Context.pop()
                self._context.detach()
                self._context = None

    # -- memory --

    def alloc(self, shape, dtype=np.float32):
        """A DeviceArray of this session (freed by free() or close())."""
        self._check()
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        try:
            allocation = self._cuda.mem_alloc(max(1, nbytes))
        except self._cuda.MemoryError as error:
            raise KernelInputError(f"out of device memory for {shape} {np.dtype(dtype).name} ({nbytes} bytes): "
                                   f"{_first_line(error)}; use a smaller batch") from None
        self._allocations.append(allocation)
        return DeviceArray(allocation, shape, dtype)

    def free(self, *arrays):
        self._check()
        for array in arrays:
            self._allocations.remove(array.allocation)
            array.allocation.free()

    def upload(self, host, dtype=np.float32):
        host = np.ascontiguousarray(host, dtype=dtype)
        array = self.alloc(host.shape, dtype)
        self._cuda.memcpy_htod(array.allocation, host)
        return array

    def download(self, array):
        self._check()
        host = np.empty(array.shape, dtype=array.dtype)
        self._cuda.memcpy_dtoh(host, array.allocation)
        return host

    def synchronize(self):
        self._check()
        self._cuda.Context.synchronize()

    # -- launches on device arrays (row-wise kernels split at the grid limits) --

    def _launch_1d(self, name, rows, items_per_row, arguments):
        """Launch 1-D kernel `name` over rows (one thread per item); arguments(first, count) gives its arguments."""
        self._check()
        for first, count in row_chunks(rows, rows_per_1d_launch(name, items_per_row, self.max_grid_x)):
            grid, block = pack_launch(count * items_per_row)
            self._kernels[name](*arguments(first, count), grid=grid[:1], block=block)

    def pack_rows(self, a, out):
        """Signs of a (m x n floats) -> out (m x ceil(n/32) words), bit 1 = [x >= 0] (spec §4.2)."""
        (m, n), words = a.shape, out.shape[1]
        self._launch_1d("pack_rows", m, words, lambda r, c: (a.row(r), out.row(r), np.int32(c), np.int32(n)))

    def pack_cols(self, b, out):
        """Signs of b (n x k floats) -> out (ceil(n/32) x k words), column by column (spec §4.2)."""
        n, k = b.shape
        groups = words_per_vector(n)
        self._launch_1d("pack_cols", groups, k, lambda g, c: (b.row(BITS * g), out.row(g),
                                                               np.int32(min(BITS * c, n - BITS * g)), np.int32(k)))

    def bn_sign_pack(self, c_array, bn, out):
        """out (m x ceil(n/32) words) = packed [BN(C) >= 0]; bn (4 x n floats on the device): b, mean, scale, beta."""
        m, n = c_array.shape
        self._launch_1d("bn_sign_pack_rows", m, out.shape[1],
                        lambda r, c: (c_array.row(r), bn.row(0), out.row(r), np.int32(c), np.int32(n)))

    def batch_norm(self, c_array, bn, out, apply_sign):
        """out (m x n floats) = BN(C), or its sign as ±1 floats."""
        m, n = c_array.shape
        self._launch_1d("bn_rows", m, n, lambda r, c: (c_array.row(r), bn.row(0), out.row(r), np.int32(c),
                                                       np.int32(n), np.int32(1 if apply_sign else 0)))

    def _launch_gemm(self, name, m, k, arguments):
        self._check()
        for first, count in row_chunks(m, rows_per_gemm_launch(name, k, self.max_grid_x, self.max_grid_y)):
            grid, block = gemm_launch(count, k)
            self._kernels[name](*arguments(first, count), grid=grid[:2], block=block)

    def xnor(self, a_packed, b_packed, c_array, n_bits):
        """C (m x k floats) = n - 2 popcount(A xor B) on packed operands (spec §4.3)."""
        (m, words), k = a_packed.shape, b_packed.shape[1]
        self._launch_gemm("xnor_gemm", m, k, lambda r, c: (a_packed.row(r), b_packed.row(0), c_array.row(r),
                                                           np.int32(c), np.int32(words), np.int32(k),
                                                           np.int32(n_bits)))

    def baseline(self, a, b, c_array):
        """C = A . B with the 16x16-tiled float kernel."""
        (m, n), k = a.shape, b.shape[1]
        self._launch_gemm("baseline_gemm", m, k, lambda r, c: (a.row(r), b.row(0), c_array.row(r), np.int32(c),
                                                               np.int32(n), np.int32(k)))

    def sgemm(self, a, b, c_array):
        """C = A . B with cuBLAS sgemm."""
        self._check()
        (m, n), k = a.shape, b.shape[1]
        self._cublas.sgemm_row_major(self._cublas_handle, a.ptr, b.ptr, c_array.ptr, m, n, k)

    # -- host-level products (upload, compute, download) --

    def xnor_gemm(self, A, B):
        """sign(A) . sign(B) with sign(0) = +1, via packing and XNOR-popcount on the GPU."""
        A, B = check_operands(A, B)
        (m, n), k = A.shape, B.shape[1]
        with self.temporaries() as keep:
            a, b, c = keep(self.upload(A)), keep(self.upload(B)), keep(self.alloc((m, k)))
            a_packed = keep(self.alloc((m, words_per_vector(n)), np.uint32))
            b_packed = keep(self.alloc((words_per_vector(n), k), np.uint32))
            self.pack_rows(a, a_packed)
            self.pack_cols(b, b_packed)
            self.xnor(a_packed, b_packed, c, n)
            return self.download(c)

    def _float_product(self, A, B, product):
        A, B = check_operands(A, B)
        with self.temporaries() as keep:
            a, b, c = keep(self.upload(A)), keep(self.upload(B)), keep(self.alloc((A.shape[0], B.shape[1])))
            product(a, b, c)
            return self.download(c)

    @contextlib.contextmanager
    def temporaries(self):
        """`with session.temporaries() as keep:` frees every array passed to keep() at the end, errors included."""
        arrays = []
        try:
            yield lambda array: arrays.append(array) or array
        finally:
            if not self._closed:
                self.free(*arrays)

    def baseline_gemm(self, A, B):
        """A . B with the unoptimized 16x16 tiled float kernel."""
        return self._float_product(A, B, self.baseline)

    def cublas_gemm(self, A, B):
        """A . B with cuBLAS sgemm."""
        return self._float_product(A, B, self.sgemm)

    # -- timing --

    def time_events(self, run, repeats, warmup):
        """(median s, min s) of run() over `repeats` repetitions, one pair of CUDA events each, after warm-up."""
        if repeats < 1 or warmup < 0:
            raise KernelInputError(f"repeats={repeats}, warmup={warmup}: need repeats >= 1 and warmup >= 0")
        for _ in range(warmup):
            run()
        self.synchronize()
        seconds = []
        for _ in range(repeats):
            start, end = self._cuda.Event(), self._cuda.Event()
            start.record()
            run()
            end.record()
            end.synchronize()
            seconds.append(start.time_till(end) / 1000.0)
        return statistics.median(seconds), min(seconds)

    def time_kernels(self, m, n, k, repeats=5, warmup=1, seed=0):
        """Seconds per call of the three products on random ±1 matrices (median and '_min' over repetitions).

        Keys: 'baseline', 'cublas', 'xnor' (packing both operands included, as in spec §4.6),
        'xnor_nopack' (operands packed once beforehand), each with a '<key>_min'; 'agree' (all three products
        identical; unlike the original benchmark, both A and B are genuinely random), and m, n, k.
        """
        if repeats < 1 or warmup < 0:
            raise KernelInputError(f"repeats={repeats}, warmup={warmup}: need repeats >= 1 and warmup >= 0")
        rng = np.random.default_rng(seed)
        A, B = check_operands(rng.choice(np.array([-1.0, 1.0], np.float32), size=(m, n)),
                              rng.choice(np.array([-1.0, 1.0], np.float32), size=(n, k)))
        with self.temporaries() as keep:
            return self._time_products(keep, A, B, repeats, warmup)

    def _time_products(self, keep, A, B, repeats, warmup):
        (m, n), k = A.shape, B.shape[1]
        a, b = keep(self.upload(A)), keep(self.upload(B))
        c_base, c_cublas, c_xnor = keep(self.alloc((m, k))), keep(self.alloc((m, k))), keep(self.alloc((m, k)))
        a_packed = keep(self.alloc((m, words_per_vector(n)), np.uint32))
        b_packed = keep(self.alloc((words_per_vector(n), k), np.uint32))

        def xnor_with_packing():
            self.pack_rows(a, a_packed)
            self.pack_cols(b, b_packed)
            self.xnor(a_packed, b_packed, c_xnor, n)

        runs = {"baseline": lambda: self.baseline(a, b, c_base), "cublas": lambda: self.sgemm(a, b, c_cublas),
                "xnor": xnor_with_packing, "xnor_nopack": lambda: self.xnor(a_packed, b_packed, c_xnor, n)}
        timings = {}
        for key, run in runs.items():
            timings[key], timings[key + "_min"] = self.time_events(run, repeats, warmup)
        base, blas, xnor = self.download(c_base), self.download(c_cublas), self.download(c_xnor)
        timings["agree"] = bool(np.array_equal(base, blas) and np.array_equal(base, xnor))
        timings.update(m=m, n=n, k=k)
        return timings


@atexit.register
def _close_open_sessions():
    """Close sessions still open at exit, on their own thread only (another thread's context is not ours to pop)."""
    for session in list(_OPEN_SESSIONS):
        if session._thread == threading.get_ident():
            session.close()


# ----------------------------------------------------------------------------- inference on the device

class GpuNetwork:
    """A BinaryNet MLP resident on the device (ORIGINALS.md §4.5): weights uploaded and, for 'xnor', packed once.

    weights: float32 (fan_in, units) per layer (signs taken here, sign(0) = +1); bn: float32 (4, units) per layer
    (b, mean, gamma * inv_std, beta). product: 'xnor' (packed activations, XNOR GEMM, fused batch norm + sign +
    pack), 'blas' (cuBLAS) or 'baseline' (tiled float kernel) on ±1 float activations. The first layer (real
    inputs) always uses cuBLAS. Between input upload and output download nothing leaves the device.
    """

    def __init__(self, session, weights, bn, product="xnor"):
        if product not in ("xnor", "blas", "baseline"):
            raise KernelInputError(f"unknown product {product!r}; use xnor, blas or baseline")
        self.session, self.product = session, product
        self.widths = [weights[0].shape[0]] + [w.shape[1] for w in weights]
        signs = [np.where(np.asarray(w) >= 0, np.float32(1), np.float32(-1)) for w in weights]
        self.weights = [session.upload(signs[0])]
        for sign_w in signs[1:]:
            if product == "xnor":
                dense = session.upload(sign_w)
                packed = session.alloc((words_per_vector(sign_w.shape[0]), sign_w.shape[1]), np.uint32)
                session.pack_cols(dense, packed)
                session.free(dense)
                self.weights.append(packed)
            else:
                self.weights.append(session.upload(sign_w))
        self.bn = [session.upload(np.asarray(v, dtype=np.float32)) for v in bn]
        self.buffers = {}

    def _buffers(self, examples):
        """Device buffers for a batch: inputs, products, activations, outputs (allocated once per batch size)."""
        if examples not in self.buffers:
            for old in self.buffers.values():
                self.session.free(*old.values())
            self.buffers.clear()
            widest = max(self.widths[1:])
            activations = (examples, words_per_vector(widest)) if self.product == "xnor" else (examples, widest)
            self.buffers[examples] = {
                "inputs": self.session.alloc((examples, self.widths[0])),
                "products": self.session.alloc((examples, widest)),
                "activations": self.session.alloc(activations, np.uint32 if self.product == "xnor" else np.float32),
                "outputs": self.session.alloc((examples, self.widths[-1]))}
        return self.buffers[examples]

    @staticmethod
    def _view(array, shape):
        """The first rows x columns of a buffer as a contiguous array of that shape (same allocation)."""
        return DeviceArray(array.allocation, shape, array.dtype)

    def forward(self, examples):
        """The network on the `examples` inputs already on the device; outputs stay on the device."""
        s, b = self.session, self._buffers(examples)
        units = self.widths[1]
        products = self._view(b["products"], (examples, units))
        s.sgemm(self._view(b["inputs"], (examples, self.widths[0])), self.weights[0], products)
        for k in range(1, len(self.weights) + 1):
            units = self.widths[k]
            products = self._view(b["products"], (examples, units))
            if k == len(self.weights):
                s.batch_norm(products, self.bn[k - 1], self._view(b["outputs"], (examples, units)), False)
                break
            next_products = self._view(b["products"], (examples, self.widths[k + 1]))
            if self.product == "xnor":
                packed = self._view(b["activations"], (examples, words_per_vector(units)))
                s.bn_sign_pack(products, self.bn[k - 1], packed)
                s.xnor(packed, self.weights[k], next_products, units)
            else:
                activations = self._view(b["activations"], (examples, units))
                s.batch_norm(products, self.bn[k - 1], activations, True)
                (s.sgemm if self.product == "blas" else s.baseline)(activations, self.weights[k], next_products)

    def upload(self, X):
        X = np.ascontiguousarray(X, dtype=np.float32).reshape(len(X), -1)
        if X.shape[1] != self.widths[0]:
            raise KernelInputError(f"inputs have {X.shape[1]} features, the network expects {self.widths[0]}")
        self.session._check()
        self.session._cuda.memcpy_htod(self._buffers(len(X))["inputs"].allocation, X)
        return len(X)

    def outputs(self, examples):
        return self.session.download(self._view(self._buffers(examples)["outputs"], (examples, self.widths[-1])))

    def predict(self, X):
        """Predicted classes (host) of inputs X (host)."""
        examples = self.upload(X)
        self.forward(examples)
        return np.argmax(self.outputs(examples), axis=1)

    def time(self, X, repeats=5, warmup=1):
        """{'upload', 'median', 'min', 'download', 'predictions', 'outputs'}: upload and download + argmax timed on
        the host around a synchronize; the network alone by CUDA events (one pair per repetition)."""
        clock = time.perf_counter
        start = clock()
        examples = self.upload(X)
        self.session.synchronize()
        upload = clock() - start
        median, minimum = self.session.time_events(lambda: self.forward(examples), repeats, warmup)
        start = clock()
        outputs = self.outputs(examples)
        predictions = np.argmax(outputs, axis=1)
        return {"upload": upload, "median": median, "min": minimum, "download": clock() - start,
                "predictions": predictions, "outputs": outputs}

    def free(self):
        """Release the network's device memory (the session stays open)."""
        for buffers in self.buffers.values():
            self.session.free(*buffers.values())
        self.buffers.clear()
        self.session.free(*self.weights, *self.bn)
        self.weights, self.bn = [], []


# ----------------------------------------------------------------------------- command line

def main(argv=None):
    """Print the GPU status line; with --time M N K also time the three products."""
    argv = sys.argv[1:] if argv is None else argv
    ok, message = gpu_status()
    if not ok:
        print(f"GPU unavailable: {message}", file=sys.stderr)
        return 1
    print(message)
    if argv[:1] == ["--time"]:
        try:
            m, n, k = (int(v) for v in argv[1:4])
        except ValueError:
            print("usage: python -m kernels.gpu [--time M N K]", file=sys.stderr)
            return 2
        try:
            with GpuKernels() as kernels:
                result = kernels.time_kernels(m, n, k)
        except ArchiveError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        for key in ("baseline", "cublas", "xnor", "xnor_nopack"):
            print(f"{key:12s} median {result[key]:.6f} s  min {result[key + '_min']:.6f} s")
        print(f"agree        {result['agree']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
