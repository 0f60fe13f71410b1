"""GPU side of the run-time kernels (spec ORIGINALS.md §4): PyCUDA loader, cuBLAS column, timing.

Everything GPU-related is imported lazily, so this module imports on machines without a GPU,
without a driver and without PyCUDA; `gpu_status()` says which of these is missing.
`compile_cubin()` needs no GPU at all (nvcc, or NVRTC 12 from PyPI through ctypes).

Launch geometry (shared with the CPU harness in tests/test_cuda_kernels.py):
  packing: 1-D blocks of 64 threads, one thread per packed word;
  GEMMs:   16 x 16 thread blocks on a ceil(k/16) x ceil(m/16) grid (bounds-checked kernels).

    python -m kernels.gpu                 # print the status line (exit 1 when no GPU is usable)
    python -m kernels.gpu --time M N K    # time baseline, cuBLAS and XNOR on random ±1 matrices
"""
import ctypes
import ctypes.util
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from plumbing.errors import ArchiveError

KERNEL_SOURCE = Path(__file__).with_name("binary_kernels.cu")
KERNEL_NAMES = ("pack_rows", "pack_cols", "xnor_gemm", "baseline_gemm")
BLOCK_SIZE = 16          # GEMM tile edge (spec §4.3)
PACK_THREADS = 64        # threads per packing block (spec §4.2)
BITS = 32                # bits per packed word
NVCC_LOWEST_ARCH = 75    # CUDA 13 nvcc cannot target below sm_75 (ENVIRONMENT.md)
NVRTC_PIP = "nvidia-cuda-nvrtc-cu12==12.9.86"
NO_DRIVER = "libcuda.so.1 not found: no NVIDIA driver on this machine; use --device cpu"
NO_PYCUDA = "pycuda or scikit-cuda not installed: pip install -r requirements-gpu.txt (on a GPU host)"


class GpuUnavailable(ArchiveError):
    """No usable GPU: no driver, no device, or PyCUDA missing (one-line message)."""


class KernelCompileError(ArchiveError):
    """The CUDA source could not be compiled, or no compiler is installed (one-line message)."""


class KernelInputError(ArchiveError, ValueError):
    """Operands of a GPU product have the wrong shape or size (one-line message)."""


# ----------------------------------------------------------------------------- launch geometry

def words_per_vector(n):
    """Packed 32-bit words holding n bits: ceil(n / 32)."""
    return (n + BITS - 1) // BITS


def pack_launch(total_words):
    """(grid, block) for a packing kernel: one thread per packed word, blocks of 64."""
    return (max(1, -(-total_words // PACK_THREADS)), 1, 1), (PACK_THREADS, 1, 1)


def gemm_launch(m, k):
    """(grid, block) for both GEMM kernels: 16x16 threads, one per element of C (m x k)."""
    return (-(-k // BLOCK_SIZE), -(-m // BLOCK_SIZE), 1), (BLOCK_SIZE, BLOCK_SIZE, 1)


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

def kernel_source(defines=()):
    """Text of binary_kernels.cu, preceded by `#define NAME` lines for `defines`."""
    header = "".join(f"#define {name}\n" for name in defines)
    return header + KERNEL_SOURCE.read_text()


def _arch_number(arch):
    """50, 'sm_50', '50' or 'compute_50' -> 50."""
    text = str(arch).lower().replace("sm_", "").replace("compute_", "")
    if not text.isdigit():
        raise KernelCompileError(f"bad GPU architecture {arch!r}; use a number such as 75 or 'sm_75'")
    return int(text)


def compile_cubin(arch, compiler="auto", defines=()):
    """Compile binary_kernels.cu to a cubin (bytes) for sm_<arch>, without needing a GPU.

    compiler: 'nvcc' (CUDA 13: sm_75 and newer), 'nvrtc' (NVRTC 12 wheel: sm_50..sm_90) or
    'auto' (nvcc when it can target `arch`, NVRTC otherwise).
    """
    number = _arch_number(arch)
    if compiler == "auto":
        compiler = "nvcc" if number >= NVCC_LOWEST_ARCH and shutil.which("nvcc") else "nvrtc"
    if compiler == "nvcc":
        return _compile_with_nvcc(number, defines)
    if compiler == "nvrtc":
        return _compile_with_nvrtc(number, defines)
    raise KernelCompileError(f"unknown compiler {compiler!r}; use 'nvcc', 'nvrtc' or 'auto'")


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
            first = (result.stderr.strip().splitlines() or ["no message"])[0]
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


# ----------------------------------------------------------------------------- availability

def _first_line(error):
    """First non-empty line of an exception's text (messages stay one line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _driver_status():
    """(True, description) when libcuda loads and reports a device; (False, reason) otherwise."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, NO_DRIVER
    status = cuda.cuInit(0)
    count = ctypes.c_int(0)
    if status == 0:
        status = cuda.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return False, (f"NVIDIA driver found but no CUDA device (cuInit/cuDeviceGetCount error {status}); "
                       "use --device cpu")
    name = ctypes.create_string_buffer(256)
    device = ctypes.c_int()
    cuda.cuDeviceGet(ctypes.byref(device), 0)
    cuda.cuDeviceGetName(name, 256, device)
    return True, f"{count.value} CUDA device(s), device 0: {name.value.decode(errors='replace')}"


def gpu_status():
    """(True, 'GPU ready: ...') if the kernels can run here, else (False, one-line reason)."""
    ok, message = _driver_status()
    if not ok:
        return False, message
    try:
        import pycuda  # noqa: F401  (lazy: only on machines with a driver)
        import skcuda  # noqa: F401
    except ImportError:
        return False, NO_PYCUDA
    return True, f"GPU ready: {message}"


# ----------------------------------------------------------------------------- the kernels on a GPU

class GpuKernels:
    """binary_kernels.cu compiled by PyCUDA at run time, plus cuBLAS sgemm through scikit-cuda.

    All products take and return host float32 arrays: C (m x k) = A (m x n) . B (n x k).
    """

    def __init__(self, device=0):
        ok, message = gpu_status()
        if not ok:
            raise GpuUnavailable(message)
        import pycuda.driver as cuda
        from pycuda.compiler import SourceModule
        try:
            from skcuda import cublas
        except (ImportError, OSError) as error:
            raise GpuUnavailable(f"scikit-cuda cannot load cuBLAS ({_first_line(error)}); put the CUDA "
                                 "toolkit's lib64 (with libcublas.so) on LD_LIBRARY_PATH") from None
        try:
            cuda.init()
            self._context = cuda.Device(device).retain_primary_context()
            self._context.push()
        except cuda.Error as error:
            raise GpuUnavailable(f"cannot open CUDA device {device}: {_first_line(error)}; "
                                 "use --device cpu") from None
        self._cuda = cuda
        self._cublas = cublas
        module = self._load_module(cuda, SourceModule, cuda.Device(device))
        self._kernels = {name: module.get_function(name) for name in KERNEL_NAMES}
        self._cublas_handle = cublas.cublasCreate()

    @staticmethod
    def _load_module(cuda, SourceModule, device):
        """Compile the .cu with PyCUDA (nvcc); for GPUs older than nvcc supports (CUDA 13: below
        sm_75, e.g. the paper's sm_50 GTX 750) fall back to an NVRTC 12 cubin."""
        major, minor = device.compute_capability()
        try:
            # The source already declares its kernels extern "C"; PyCUDA picks the device's arch.
            return SourceModule(kernel_source(), no_extern_c=True)
        except cuda.CompileError as error:
            if major * 10 + minor >= NVCC_LOWEST_ARCH:
                raise KernelCompileError(f"PyCUDA could not compile binary_kernels.cu: {_first_line(error)}") from None
        return cuda.module_from_buffer(compile_cubin(major * 10 + minor, compiler="nvrtc"))

    def close(self):
        """Release the cuBLAS handle and the device context (also done at interpreter exit)."""
        if getattr(self, "_cublas_handle", None) is not None:
            self._cublas.cublasDestroy(self._cublas_handle)
            self._cublas_handle = None
        if getattr(self, "_context", None) is not None:
            self._context.pop()
            self._context = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the driver may already be gone
            pass

    # -- device-level launches (operands already on the GPU) --

    def _upload(self, A, B):
        from pycuda import gpuarray
        m, k = A.shape[0], B.shape[1]
        return gpuarray.to_gpu(A), gpuarray.to_gpu(B), gpuarray.empty((m, k), np.float32)

    def _packed_buffers(self, m, n, k):
        from pycuda import gpuarray
        words = words_per_vector(n)
        return gpuarray.empty((m, words), np.uint32), gpuarray.empty((words, k), np.uint32)

    def _pack(self, a, b, a_packed, b_packed):
        """Pack rows of A and columns of B on the device (spec §4.2 layouts, padding bits 0)."""
        (m, n), k = a.shape, b.shape[1]
        grid, block = pack_launch(a_packed.size)
        self._kernels["pack_rows"](a.gpudata, a_packed.gpudata, np.int32(m), np.int32(n), grid=grid[:2], block=block)
        grid, block = pack_launch(b_packed.size)
        self._kernels["pack_cols"](b.gpudata, b_packed.gpudata, np.int32(n), np.int32(k), grid=grid[:2], block=block)

    def _xnor_packed(self, a_packed, b_packed, c, n):
        """C = n - 2 * popcount(A xor B) on packed operands (spec §4.3)."""
        m, words = a_packed.shape
        k = b_packed.shape[1]
        grid, block = gemm_launch(m, k)
        self._kernels["xnor_gemm"](a_packed.gpudata, b_packed.gpudata, c.gpudata, np.int32(m), np.int32(words),
                                   np.int32(k), np.int32(n), grid=grid[:2], block=block)

    def _baseline(self, a, b, c):
        (m, n), k = a.shape, b.shape[1]
        grid, block = gemm_launch(m, k)
        self._kernels["baseline_gemm"](a.gpudata, b.gpudata, c.gpudata, np.int32(m), np.int32(n), np.int32(k),
                                       grid=grid[:2], block=block)

    def _sgemm(self, a, b, c):
        """Row-major C = A.B as column-major C^T = B^T . A^T (no transposes, spec §4.6)."""
        (m, n), k = a.shape, b.shape[1]
        self._cublas.cublasSgemm(self._cublas_handle, "n", "n", k, m, n, 1.0, b.gpudata, k, a.gpudata, n,
                                 0.0, c.gpudata, k)

    # -- host-level API --

    def xnor_gemm(self, A, B):
        """sign(A) . sign(B) with sign(0) = +1, via packing and XNOR-popcount on the GPU."""
        A, B = check_operands(A, B)
        a, b, c = self._upload(A, B)
        a_packed, b_packed = self._packed_buffers(A.shape[0], A.shape[1], B.shape[1])
        self._pack(a, b, a_packed, b_packed)
        self._xnor_packed(a_packed, b_packed, c, A.shape[1])
        return c.get()

    def baseline_gemm(self, A, B):
        """A . B with the unoptimized 16x16 tiled float kernel."""
        A, B = check_operands(A, B)
        a, b, c = self._upload(A, B)
        self._baseline(a, b, c)
        return c.get()

    def cublas_gemm(self, A, B):
        """A . B with cuBLAS sgemm."""
        A, B = check_operands(A, B)
        a, b, c = self._upload(A, B)
        self._sgemm(a, b, c)
        return c.get()

    def _seconds_per_call(self, run, repeats, warmup):
        for _ in range(warmup):
            run()
        start, end = self._cuda.Event(), self._cuda.Event()
        start.record()
        for _ in range(repeats):
            run()
        end.record()
        end.synchronize()
        return start.time_till(end) / 1000.0 / repeats

    def time_kernels(self, m, n, k, repeats=5, warmup=1, seed=0):
        """Seconds per call (CUDA events, after warm-up) of the three products on random ±1 matrices.

        Keys: 'baseline', 'cublas', 'xnor' (packing both operands included, as in spec §4.6),
        'xnor_nopack' (operands packed once beforehand), 'agree' (all three products identical;
        unlike the original benchmark, both A and B are genuinely random), and m, n, k.
        """
        if repeats < 1 or warmup < 0:
            raise KernelInputError(f"repeats={repeats}, warmup={warmup}: need repeats >= 1 and warmup >= 0")
        rng = np.random.default_rng(seed)
        A = rng.choice(np.array([-1.0, 1.0], np.float32), size=(m, n))
        B = rng.choice(np.array([-1.0, 1.0], np.float32), size=(n, k))
        A, B = check_operands(A, B)
        a, b, c_base = self._upload(A, B)
        c_cublas = c_base.copy()
        c_xnor = c_base.copy()
        a_packed, b_packed = self._packed_buffers(m, n, k)

        def xnor_with_packing():
            self._pack(a, b, a_packed, b_packed)
            self._xnor_packed(a_packed, b_packed, c_xnor, n)

        timings = {
            "baseline": self._seconds_per_call(lambda: self._baseline(a, b, c_base), repeats, warmup),
            "cublas": self._seconds_per_call(lambda: self._sgemm(a, b, c_cublas), repeats, warmup),
            "xnor": self._seconds_per_call(xnor_with_packing, repeats, warmup),
            "xnor_nopack": self._seconds_per_call(lambda: self._xnor_packed(a_packed, b_packed, c_xnor, n),
                                                  repeats, warmup),
        }
        base, blas, xnor = c_base.get(), c_cublas.get(), c_xnor.get()
        timings["agree"] = bool(np.array_equal(base, blas) and np.array_equal(base, xnor))
        timings.update(m=m, n=n, k=k)
        return timings


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
            result = GpuKernels().time_kernels(m, n, k)
        except (GpuUnavailable, KernelInputError, KernelCompileError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        for key in ("baseline", "cublas", "xnor", "xnor_nopack"):
            print(f"{key:12s} {result[key]:.6f} s")
        print(f"agree        {result['agree']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
