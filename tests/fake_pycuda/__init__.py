"""A PyCUDA stand-in for the tests: the GPU host code of kernels/gpu.py runs on the CPU, every line of it.

`install(monkeypatch, build_dir, **machine)` puts a fake `pycuda` package and `pycuda.driver` (driver.py) into
sys.modules and points $BINARYNET_CUBLAS at fake_cuda.cpp's cuBLAS; the exact kernels/binary_kernels.cu runs
through the CUDA-on-CPU harness (tests/cuda_on_cpu). `without_driver(monkeypatch)` makes `import pycuda.driver`
fail as it does on a machine without libcuda.so.1. Only tests import this package; the product never does.
"""
import importlib.abc
import sys
import types

from . import driver

__all__ = ["install", "without_driver", "driver"]


def install(monkeypatch, build_dir, **machine):
    """Inject the stand-in (undone by monkeypatch at the end of the test); `machine` goes to driver.configure."""
    driver.configure(build_dir, **machine)
    package = types.ModuleType("pycuda")
    package.__path__ = []
    package.driver = driver
    package.VERSION = (2026, 1)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setenv("BINARYNET_CUBLAS", driver.library_path())
    return driver


class _NoDriverFinder(importlib.abc.MetaPathFinder):
    """Finds `pycuda.driver` and fails to load it the way PyCUDA does without libcuda.so.1."""

    def find_spec(self, name, path=None, target=None):
        if name == "pycuda.driver":
            raise ImportError("libcuda.so.1: cannot open shared object file: No such file or directory")
        return None


def without_driver(monkeypatch):
    """`import pycuda` works, `import pycuda.driver` raises ImportError (PyCUDA installed, no NVIDIA driver)."""
    package = types.ModuleType("pycuda")
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.delitem(sys.modules, "pycuda.driver", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoDriverFinder()] + sys.meta_path)
