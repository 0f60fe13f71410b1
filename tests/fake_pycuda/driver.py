"""The stand-in for `pycuda.driver` (tests only): the calls kernels/gpu.py makes, with PyCUDA's behaviour.

Kernels run on the CPU: a module's cubin is checked like the driver would (ELF, EM_CUDA, the device's
architecture, the kernel symbols) and its kernels are executed from the .cu source (CONFIG['kernel_source'],
kernels/binary_kernels.cu) compiled by g++ with tests/cuda_on_cpu/cuda_on_cpu.h, each CUDA thread a fiber.
Device memory comes from fake_cuda.cpp (guard page after every allocation). What PyCUDA or the driver would
reject is rejected with PyCUDA's exception classes and messages: kernel arguments that are not NumPy scalars or
allocations (TypeError), launches beyond the device's grid or block limits, memory operations without a current
context on the calling thread, popping an empty context stack, using a freed allocation. Beyond PyCUDA, the
argument types are checked against the kernel's parameters (a real GPU would silently misread them), and a memory
fault is reported at the launch rather than at the next synchronize. Launches are synchronous; events read the
host clock.
"""
import ctypes
import hashlib
import re
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
HARNESS_DIR = HERE.parent / "cuda_on_cpu"
REPO = HERE.parents[1]
EM_CUDA = 190


class Error(Exception):
    pass


class LogicError(Error):
    pass


class LaunchError(Error):
    pass


class MemoryError(Error):  # noqa: A001  (PyCUDA's name)
    pass


class RuntimeError(Error):  # noqa: A001  (PyCUDA's name)
    pass


class CompileError(Error):
    pass


class device_attribute:  # noqa: N801  (PyCUDA's name)
    MAX_GRID_DIM_X = "MAX_GRID_DIM_X"
    MAX_GRID_DIM_Y = "MAX_GRID_DIM_Y"
    MAX_GRID_DIM_Z = "MAX_GRID_DIM_Z"
    MAX_BLOCK_DIM_X = "MAX_BLOCK_DIM_X"
    MAX_BLOCK_DIM_Y = "MAX_BLOCK_DIM_Y"
    MAX_BLOCK_DIM_Z = "MAX_BLOCK_DIM_Z"
    MAX_THREADS_PER_BLOCK = "MAX_THREADS_PER_BLOCK"


DEFAULT_LIMITS = {"MAX_GRID_DIM_X": 2 ** 31 - 1, "MAX_GRID_DIM_Y": 65535, "MAX_GRID_DIM_Z": 65535,
                  "MAX_BLOCK_DIM_X": 1024, "MAX_BLOCK_DIM_Y": 1024, "MAX_BLOCK_DIM_Z": 64,
                  "MAX_THREADS_PER_BLOCK": 1024}
CONFIG = {}
LAUNCHES = []  # (kernel name, grid, block) of every launch, for the tests
_state = {"initialized": False, "library": None, "modules": {}}
_local = threading.local()


def configure(build_dir, devices=1, capability=(7, 5), name="Fake GPU (CUDA on CPU)", memory=1 << 30, limits=None,
              kernel_source=REPO / "kernels" / "binary_kernels.cu"):
    """Set the fake machine: number of devices, compute capability, memory, grid/block limits."""
    CONFIG.clear()
    CONFIG.update(build_dir=Path(build_dir), devices=devices, capability=tuple(capability), name=name, memory=memory,
                  limits=dict(DEFAULT_LIMITS, **(limits or {})), kernel_source=Path(kernel_source))
    LAUNCHES.clear()
    Context.live.clear()
    _state["initialized"] = False
    library().fake_set_devices(devices)


# ----------------------------------------------------------------------------- native parts

def _build(source_files, target, extra):
    command = ["g++", "-std=c++17", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-ffp-contract=off",
               f"-I{HARNESS_DIR}", f"-I{HERE}", *extra, "-o", str(target), *map(str, source_files)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise OSError(f"building the CUDA-on-CPU stand-in failed: {result.stderr.strip()[:2000]}")


def _cached(name, inputs, build):
    digest = hashlib.sha256(b"".join(Path(p).read_bytes() for p in inputs)).hexdigest()[:16]
    target = CONFIG["build_dir"] / f"{name}-{digest}.so"
    if not target.exists():
        CONFIG["build_dir"].mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp.so")
        build(tmp)
        tmp.replace(target)
    return ctypes.CDLL(str(target))


def library():
    """fake_cuda.cpp: guarded device memory and the cuBLAS functions (also the file BINARYNET_CUBLAS names)."""
    if _state["library"] is None:
        lib = _cached("fake_cuda", [HERE / "fake_cuda.cpp"], lambda t: _build([HERE / "fake_cuda.cpp"], t, []))
        lib.fake_alloc.argtypes, lib.fake_alloc.restype = [ctypes.c_size_t], ctypes.c_void_p
        lib.fake_free.argtypes, lib.fake_free.restype = [ctypes.c_void_p], ctypes.c_int
        lib.fake_range_ok.argtypes, lib.fake_range_ok.restype = [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int
        lib.fake_bytes_in_use.restype = ctypes.c_size_t
        lib.fake_set_devices.argtypes = [ctypes.c_int]
        _state["library"] = lib
    return _state["library"]


def library_path():
    return library()._name


def kernel_library(source):
    """The kernels of a .cu file compiled for the CPU harness, with one launch entry point per kernel."""
    source = Path(source)
    text = source.read_text()
    names = re.findall(r"__global__\s+void\s+(\w+)\s*\(", text)
    inputs = [source, HARNESS_DIR / "cuda_on_cpu.h", HERE / "launch.h"]
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    if key not in _state["modules"]:
        def build(target):
            driver = CONFIG["build_dir"] / f"module-{key}.cpp"
            driver.write_text(f'#include "cuda_on_cpu.h"\n#include "{source}"\n#include "launch.h"\n' +
                              "".join(f"FAKE_KERNEL({name})\n" for name in names))
            _build([driver], target, [])
        _state["modules"][key] = (_cached("module", inputs, build), names)
    return _state["modules"][key]


# ----------------------------------------------------------------------------- initialization and devices

def init(flags=0):
    if CONFIG["devices"] == 0:
        raise RuntimeError("cuInit failed: no CUDA-capable device is detected")
    _state["initialized"] = True


def _require_init():
    if not _state["initialized"]:
        raise LogicError("cuDeviceGet failed: initialization error")


class Device:
    def __init__(self, ordinal):
        _require_init()
        if not 0 <= ordinal < CONFIG["devices"]:
            raise LogicError("cuDeviceGet failed: invalid device ordinal")
        self.ordinal = ordinal

    @staticmethod
    def count():
        _require_init()
        return CONFIG["devices"]

    def name(self):
        return CONFIG["name"]

    def compute_capability(self):
        return CONFIG["capability"]

    def total_memory(self):
        return CONFIG["memory"]

    def get_attribute(self, attribute):
        return CONFIG["limits"][attribute]

    def retain_primary_context(self):
        return Context(self)


def _stack():
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _current():
    """The context current on this thread; LogicError (CUDA_ERROR_INVALID_CONTEXT) if there is none."""
    stack = _stack()
    if not stack or not stack[-1].valid:
        raise LogicError("invalid device context: no CUDA context is current on this thread")
    return stack[-1]


class Context:
    live = []  # contexts retained and not yet detached, for the tests

    def __init__(self, device):
        self.device, self.valid, self.thread = device, True, threading.get_ident()
        Context.live.append(self)

    def push(self):
        if not self.valid:
            raise LogicError("cuCtxPushCurrent failed: invalid device context")
        _stack().append(self)

    @staticmethod
    def pop():
        stack = _stack()
        if not stack:
            raise LogicError("context::pop failed: invalid device context - cannot pop non-current context")
        stack.pop()

    def detach(self):
        if not self.valid:
            raise LogicError("context::detach failed: invalid device context - cannot detach from invalid context")
        self.valid = False
        Context.live.remove(self)

    @staticmethod
    def synchronize():
        _current()

    @staticmethod
    def get_device():
        return _current().device


# ----------------------------------------------------------------------------- memory

class DeviceAllocation:
    def __init__(self, pointer, size, context):
        self.pointer, self.size, self.context, self.freed = pointer, size, context, False

    def __int__(self):
        if self.freed:
            raise LogicError("device allocation used after free")
        return self.pointer

    def free(self):
        if self.freed:
            raise LogicError("cuMemFree failed: invalid argument (already freed)")
        if threading.get_ident() != self.context.thread or not self.context.valid:
            raise LogicError("cannot free: the allocation's context is not usable on this thread")
        library().fake_free(self.pointer)
        self.freed = True


def mem_alloc(nbytes):
    context = _current()
    if nbytes <= 0:
        raise LogicError("cuMemAlloc failed: invalid argument")
    if library().fake_bytes_in_use() + nbytes > CONFIG["memory"]:
        raise MemoryError("cuMemAlloc failed: out of memory")
    return DeviceAllocation(library().fake_alloc(nbytes), nbytes, context)


def _device_pointer(value, what):
    if isinstance(value, DeviceAllocation):
        return int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"{what}: expected a DeviceAllocation or a device address, got {type(value).__name__}")


def _host_buffer(array, writable):
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous or (writable and not array.flags.writeable):
        raise TypeError("host buffer must be a contiguous (writable) NumPy array")
    return array.ctypes.data, array.nbytes


def memcpy_htod(dest, src):
    _current()
    pointer, (host, nbytes) = _device_pointer(dest, "memcpy_htod"), _host_buffer(np.asarray(src), False)
    if not library().fake_range_ok(pointer, nbytes):
        raise LogicError("cuMemcpyHtoD failed: invalid argument (the copy does not fit in the allocation)")
    ctypes.memmove(pointer, host, nbytes)


def memcpy_dtoh(dest, src):
    _current()
    (host, nbytes), pointer = _host_buffer(dest, True), _device_pointer(src, "memcpy_dtoh")
    if not library().fake_range_ok(pointer, nbytes):
        raise LogicError("cuMemcpyDtoH failed: invalid argument (the copy does not fit in the allocation)")
    ctypes.memmove(host, pointer, nbytes)


# ----------------------------------------------------------------------------- events

class Event:
    def __init__(self, flags=0):
        _current()
        self.when = None

    def record(self, stream=None):
        _current()
        self.when = time.perf_counter()
        return self

    def synchronize(self):
        return self

    def time_till(self, end):
        if self.when is None or end.when is None:
            raise LogicError("cuEventElapsedTime failed: invalid resource handle (event not recorded)")
        return (end.when - self.when) * 1000.0


# ----------------------------------------------------------------------------- modules and launches

def read_cubin(data):
    """(machine, sm number, function symbol names) of an ELF64 cubin."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise LogicError("cuModuleLoadDataEx failed: device kernel image is invalid")
    machine, = struct.unpack_from("<H", data, 18)
    flags, = struct.unpack_from("<I", data, 48)
    arch = (flags >> 8) & 0xFF if data[8] >= 8 else flags & 0xFF  # CUDA ELF ABI 8 (CUDA 13) moved the sm field
    shoff, = struct.unpack_from("<Q", data, 0x28)
    entsize, count, _ = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * entsize) for i in range(count)]
    functions = set()
    for header in headers:
        if header[1] != 2:  # SHT_SYMTAB
            continue
        strings = headers[header[6]][4]
        for i in range(header[5] // 24):
            name_offset, info = struct.unpack_from("<IB", data, header[4] + 24 * i)
            if info & 0xF == 2:  # STT_FUNC
                start = strings + name_offset
                functions.add(data[start:data.index(b"\0", start)].decode())
    return machine, arch, functions


def module_from_buffer(buffer, options=None, message_handler=None):
    _current()
    machine, arch, functions = read_cubin(bytes(buffer))
    major, minor = CONFIG["capability"]
    if machine != EM_CUDA:
        raise LogicError("cuModuleLoadDataEx failed: device kernel image is invalid")
    if arch != 10 * major + minor:
        raise LogicError(f"cuModuleLoadDataEx failed: no kernel image is available for execution on the device "
                         f"(cubin for sm_{arch}, device sm_{major}{minor})")
    return Module(functions, *kernel_library(CONFIG["kernel_source"]))


class Module:
    def __init__(self, functions, lib, source_kernels):
        self.functions, self.lib, self.source_kernels = functions, lib, source_kernels

    def get_function(self, name):
        if name not in self.functions or name not in self.source_kernels:
            raise LogicError("cuModuleGetFunction failed: named symbol not found")
        return Function(self.lib, name)


KIND_NAMES = {0: "pointer", 1: "integer", 2: "floating-point"}


class Function:
    def __init__(self, lib, name):
        self.name, self.launch = name, getattr(lib, f"fake_launch_{name}")
        kinds, sizes = (ctypes.c_int * 32)(), (ctypes.c_int * 32)()
        count = getattr(lib, f"fake_params_{name}")(kinds, sizes, 32)
        self.params = list(zip(kinds[:count], sizes[:count]))

    def __call__(self, *args, **kwargs):
        grid, block = kwargs.pop("grid", (1, 1)), kwargs.pop("block", None)
        kwargs.pop("stream", None), kwargs.pop("shared", None)
        if kwargs:
            extra = ",".join(kwargs.keys())
            raise ValueError(f"extra keyword arguments: {extra}")
        if block is None:
            raise ValueError("must specify block size")
        _current()
        values = [self._argument(i, arg) for i, arg in enumerate(args)]
        if len(values) != len(self.params):
            raise LogicError(f"cuLaunchKernel failed: invalid argument ({self.name} takes {len(self.params)} "
                             f"parameters, got {len(values)})")
        grid3, block3 = self._dimensions(grid, block)
        LAUNCHES.append((self.name, grid3, block3))
        pointers = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
        error = ctypes.create_string_buffer(512)
        status = self.launch((ctypes.c_uint * 3)(*grid3), (ctypes.c_uint * 3)(*block3), pointers, error, 512)
        if status:
            raise LaunchError(f"cuLaunchKernel of {self.name} failed: {error.value.decode()}")

    def _argument(self, index, arg):
        """PyCUDA's packing rules (driver._build_arg_buf), then a check against the kernel's parameter."""
        if isinstance(arg, np.number):
            kind = {"i": 1, "u": 1, "f": 2}.get(arg.dtype.kind)
            size, value = arg.dtype.itemsize, arg.item()
        elif isinstance(arg, DeviceAllocation):
            kind, size, value = 0, 8, int(arg)
        else:
            raise TypeError(f"invalid type on parameter #{index} (0-based)")
        if index >= len(self.params):
            return ctypes.c_uint64(0)
        expected_kind, expected_size = self.params[index]
        if expected_kind == 0:  # a pointer: an allocation, or an 8-byte integer holding a device address
            if kind == 2 or size != 8:
                raise TypeError(f"parameter #{index} of {self.name} is a pointer; got a {size}-byte "
                                f"{KIND_NAMES.get(kind)} ({arg.dtype if kind else 'allocation'})")
            if value % 4 or not library().fake_range_ok(value, 0):
                raise LaunchError(f"cuLaunchKernel of {self.name}: parameter #{index} (0x{value:x}) is not an "
                                  f"aligned address inside a live allocation")
            return ctypes.c_void_p(value)
        if (kind, size) != (expected_kind, expected_size):
            raise TypeError(f"parameter #{index} of {self.name} is a {expected_size}-byte "
                            f"{KIND_NAMES[expected_kind]}; got {getattr(arg, 'dtype', 'an allocation')}")
        if kind == 2:
            return ctypes.c_float(value)
        return (ctypes.c_int32 if arg.dtype.kind == "i" else ctypes.c_uint32)(value)

    @staticmethod
    def _dimensions(grid, block):
        limits = CONFIG["limits"]
        grid, block = tuple(grid), tuple(block)
        if not 1 <= len(grid) <= 3 or not 1 <= len(block) <= 3:
            raise LogicError("function::launch_kernel failed: invalid handle - too many grid or block dimensions")
        grid3, block3 = (grid + (1, 1))[:3], (block + (1, 1))[:3]
        grid_limits = [limits["MAX_GRID_DIM_" + axis] for axis in "XYZ"]
        block_limits = [limits["MAX_BLOCK_DIM_" + axis] for axis in "XYZ"]
        if (any(not 1 <= int(g) <= top for g, top in zip(grid3, grid_limits))
                or any(not 1 <= int(b) <= top for b, top in zip(block3, block_limits))
                or int(np.prod(block3)) > limits["MAX_THREADS_PER_BLOCK"]):
            raise LogicError(f"cuLaunchKernel failed: invalid argument (grid {grid3}, block {block3})")
        return tuple(int(g) for g in grid3), tuple(int(b) for b in block3)
