"""Make the 2016 Theano + Lasagne code base run on today's stack.

Import this module before anything imports theano or lasagne:

    from plumbing import compat        # sets Theano flags, patches Lasagne 0.1
    from plumbing.compat import lasagne, theano, T

What it does (ORIGINALS.md §7, docs/environment.md):

* Theano flags: floatX=float32 and a BLAS that uses this CPU's vector units. Theano's own BLAS detection
  crashes under NumPy 1.23, so `blas.ldflags` is set here, chosen from the CPU found (docs/speed.md): on Intel
  CPUs Intel MKL from PyPI (`libmkl_rt`, installed by requirements.txt into the virtual environment); on other
  CPUs (AMD), where MKL takes a slower path, the OpenBLAS that SciPy's wheel ships, with its AVX-512 kernels
  where the CPU has AVX-512; else whichever of the two is there, else a system OpenBLAS, else Theano's slow
  fallback. BINARYNET_BLAS=mkl or =openblas overrides the choice. Anything the user puts in THEANO_FLAGS wins
  over these defaults.
* Lasagne 0.1 imports `theano.tensor.signal.downsample`, removed in Theano 0.9. A stand-in module with
  `max_pool_2d` on top of `theano.tensor.signal.pool.pool_2d` is registered before Lasagne is imported.
* Theano's CPU random generator (MRG31k3p) runs its streams on all cores, the same numbers (plumbing/parallel_mrg.py).
* Theano's clip, sgn and round compile to code without jumps, the same numbers (plumbing/branch_free.py).
* DimShuffle's compile-cache key is the same in every process, so Theano's cache stops growing by one key per
  module and process, and modules of ops without parameters get a version, so they are no longer compiled again in
  every process (plumbing/cache_keys.py).
* Theano's CPU convolution copies and sums whole rows in im2col/col2im, the same numbers (plumbing/fast_im2col.py;
  BINARYNET_FAST_IM2COL=0 switches it off).
* Theano's three CPU convolution ops run as oneDNN's whole-batch convolutions, the same sums in another order
  (plumbing/dnnl_conv.py; BINARYNET_CONV=corrmm keeps Theano's ops).
* With OpenBLAS, idle OpenBLAS and OpenMP threads sleep instead of spinning (OPENBLAS_THREAD_TIMEOUT=4,
  OMP_WAIT_POLICY=PASSIVE unless the user set them); freed arrays of up to 32 MiB are reused, and of every size
  after `keep_large_arrays_mapped()` (called by binary_connect.compile_functions), without page faults.
* Batch norm's float64-accumulated sums run several channels' chains side by side, the same numbers
  (plumbing/fast_sum.py; BINARYNET_FAST_SUM=0 switches it off).
* Max pooling and its gradient run with each image plane's addresses in registers, max pooling over 2x2 windows in
  vectorized loops, the same numbers (plumbing/fast_pool.py, plumbing/fast_pool_grad.py).
* A ConvNet layer's training-mode batch norm runs as two C ops, the forward pass's numbers and the gradient's to
  rounding level (plumbing/fused_batch_norm.py, used by batch_norm.py; BINARYNET_BN=graph keeps Theano's graph).
* Theano's fused elementwise loops over contiguous arrays are vectorized, the same numbers (plumbing/simd_loops.py;
  BINARYNET_SIMD_LOOPS=0 switches it off).
* Each parameter's Adam update runs as one elementwise loop instead of three, the same numbers
  (plumbing/merged_updates.py; BINARYNET_MERGED_UPDATES=0 switches it off).
* A graph's missing C modules are compiled on all cores before Theano links it, the same modules in Theano's cache
  (plumbing/parallel_compile.py; BINARYNET_PARALLEL_COMPILE=0 switches it off).
* The compile cache's fused elementwise ops build their inner graph only when used, and Theano's passed check of
  its -march flags is kept in the compile directory (plumbing/warm_start.py).
* A warm start links the optimized graph stored by the first compile of the same graph instead of running Theano's
  graph optimizer again, the same graph (plumbing/graph_cache.py; BINARYNET_GRAPH_CACHE=0 switches it off).
* `no_creation_traces()`: a block in which Theano records no creation traces (binary_connect.compile_functions
  builds the gradients and compiles inside one; the same graph, a faster compile).
* `round_half_away_from_zero`: Theano 1.0 rounds half to even by default; the originals relied on the
  2016 default, half away from zero (so hard_sigmoid(0) = 0.5 rounds to 1).
"""
import ctypes
import ctypes.util
import glob
import os
import sys
import types
import warnings


def _cpu_info():
    """(vendor, set of flags) of the first CPU in /proc/cpuinfo; ('', set()) where there is none (not Linux)."""
    vendor, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return vendor, flags


# OpenBLAS's AVX-512 kernels (its "SkylakeX" core) need these; OpenBLAS 0.3.21 (SciPy's) does not know AMD Zen 4/5
# and would run its AVX2 kernels there. docs/speed.md: ~2-3x MKL's sgemm on an AMD EPYC with AVX-512.
AVX512_FLAGS = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


def choose_blas(vendor, flags, have_mkl, have_openblas, wish="auto", requested=None):
    """Which BLAS Theano links, and the OPENBLAS_CORETYPE to set (None: leave OpenBLAS's own detection).

    Intel CPUs: MKL. Other CPUs (AMD): OpenBLAS, whose AVX-512 kernels run at full speed there, while MKL takes a
    slower path on non-Intel CPUs. wish ('mkl' | 'openblas', the BINARYNET_BLAS variable) overrides when available.
    requested: a core type asked for with BINARYNET_OPENBLAS_CORETYPE (benchmark.py --isa sets it to cap both sides
    to one instruction set); it wins over the default. OPENBLAS_CORETYPE itself is left to NumPy's OpenBLAS.
    """
    if wish == "mkl" and have_mkl or wish == "openblas" and have_openblas:
        blas = wish
    elif have_mkl and (vendor == "GenuineIntel" or not have_openblas):
        blas = "mkl"
    elif have_openblas:
        blas = "openblas"
    else:
        return None, None
    coretype = "SKYLAKEX" if blas == "openblas" and vendor != "GenuineIntel" and AVX512_FLAGS <= flags else None
    return blas, (requested or coretype) if blas == "openblas" else None


def _load_global(path):
    # Theano's ldflags take no rpath (it splits on commas), so a library is loaded here once, globally: the
    # compiled modules then find it already loaded under its soname.
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def _blas_flags():
    """Linker flags for the fastest BLAS found on this CPU, and a short name of it (printed by benchmarks).

    MKL is libmkl_rt from PyPI (requirements.txt); OpenBLAS is the one SciPy's wheel ships (scipy.libs, with its
    libgfortran), else a system OpenBLAS.
    """
    venv_lib = os.path.join(sys.prefix, "lib")
    mkl = sorted(glob.glob(os.path.join(venv_lib, "libmkl_rt.so*")))
    scipy_libs = [os.path.join(p, "scipy.libs") for p in sys.path if os.path.isdir(os.path.join(p, "scipy.libs"))]
    bundled = sorted(glob.glob(os.path.join(scipy_libs[0], "libopenblas*.so"))) if scipy_libs else []
    openblas = bool(bundled) or bool(ctypes.util.find_library("openblas"))
    vendor, flags = _cpu_info()
    blas, coretype = choose_blas(vendor, flags, bool(mkl), openblas, os.environ.get("BINARYNET_BLAS", "auto"),
                                 os.environ.get("BINARYNET_OPENBLAS_CORETYPE"))
    if blas == "mkl":
        _load_global(mkl[-1])
        name = os.path.basename(mkl[-1])
        return f"-L{venv_lib} -l:{name}", f"MKL ({name})"
    if blas == "openblas":
        _let_idle_threads_sleep()
    if blas == "openblas" and not bundled:
        return "-lopenblas", "OpenBLAS (system)"
    if blas == "openblas":
        for dependency in ("libquadmath*", "libgfortran*"):
            for path in sorted(glob.glob(os.path.join(scipy_libs[0], dependency))):
                _load_global(path)
        # OpenBLAS reads OPENBLAS_CORETYPE once, when it loads; NumPy's own OpenBLAS (loaded later) keeps the
        # environment's value, so that NumPy's numbers do not change.
        inherited = os.environ.get("OPENBLAS_CORETYPE")
        if coretype:
            os.environ["OPENBLAS_CORETYPE"] = coretype
        try:
            # Local, not global: NumPy's own OpenBLAS, loaded later, would otherwise bind its internal symbols (the
            # kernel table, the thread count) to this library's and run this core type. Theano's modules still find
            # it: they name it by soname, and the loader reuses a library already loaded under that name.
            library = ctypes.CDLL(bundled[-1], mode=ctypes.RTLD_LOCAL)
        finally:
            if inherited is None:
                os.environ.pop("OPENBLAS_CORETYPE", None)
            else:
                os.environ["OPENBLAS_CORETYPE"] = inherited
        library.openblas_get_corename.restype = ctypes.c_char_p
        name = os.path.basename(bundled[-1])
        core = library.openblas_get_corename().decode()
        return f"-L{scipy_libs[0]} -l:{name}", f"OpenBLAS ({name}, {core} kernels)"
    return "", "none (Theano's NumPy fallback)"


# What _let_idle_threads_sleep added to the environment (name -> value); the peer of benchmark_training.py runs
# without it, in the user's environment.
THREAD_SETTINGS = {}


def _let_idle_threads_sleep():
    """Idle worker threads sleep instead of spinning, where two thread pools share the cores (docs/speed.md).

    With OpenBLAS, a training step runs two pools on the same cores: OpenBLAS's own threads (the products) and GNU
    OpenMP's (Theano's elementwise ops, convolutions, random numbers). Both keep spinning after their work is done
    (OpenBLAS for about 2^28 cycles, calling sched_yield; OpenMP for up to 300,000 rounds), so each pool's waiting
    threads took the cores from the other's working ones: a third to a half of a BinaryNet MLP step here. Set
    before OpenBLAS and OpenMP load (they read these once); a value the user set wins. MKL (Intel CPUs) runs on
    OpenMP's own pool (MKL_THREADING_LAYER=GNU below): one pool, nothing changed there.
    """
    for name, value in (("OPENBLAS_THREAD_TIMEOUT", "4"), ("OMP_WAIT_POLICY", "PASSIVE")):
        if name not in os.environ:
            os.environ[name] = THREAD_SETTINGS[name] = value


BLAS_LDFLAGS, BLAS_NAME = _blas_flags()


def _configure_theano():
    compiledir = os.environ.get("BINARYNET_THEANO_CACHE", os.path.expanduser("~/.cache/binarynet-archive/theano"))
    # Speed, not semantics: local_dot22_to_dot22scalar makes Theano compute the same big product once per
    # scalar factor that consumes it (21 instead of 11 products per BinaryNet MLP step); openmp runs large
    # elementwise ops (binarization, Adam) on all cores. Together: 1.0 s -> 0.3 s per MNIST minibatch here.
    # -g0 cancels the -g Theano puts before these flags: no debug information, the same machine code, 15 % less g++
    # time per module of a cold compile (docs/speed.md).
    defaults = ["floatX=float32", "device=cpu", "base_compiledir=" + compiledir, "blas.ldflags=" + BLAS_LDFLAGS,
                "gcc.cxxflags=-O2 -Wno-cpp -g0", "openmp=True", "optimizer_excluding=local_dot22_to_dot22scalar"]
    user = os.environ.get("THEANO_FLAGS", "")
    os.environ["THEANO_FLAGS"] = ",".join(defaults + ([user] if user else []))
    # MKL's default threading layer is Intel OpenMP; Theano's own C code uses GNU OpenMP. Use one runtime.
    os.environ.setdefault("MKL_THREADING_LAYER", "GNU")
    # MKL may use fewer threads than asked when the machine is busy (MKL_DYNAMIC), which changes the summation
    # order of a product, hence its float32 rounding: a resumed run must see the same products as an uninterrupted one.
    os.environ.setdefault("MKL_DYNAMIC", "FALSE")


def _mallopt(parameter, value):
    """glibc's mallopt(parameter, value); nothing where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(parameter, value)


def _keep_freed_memory():
    """Let glibc's malloc reuse freed arrays instead of unmapping them (docs/speed.md).

    Theano frees a step's intermediate arrays after their last use and allocates them again in the next step. By
    default glibc maps each array of more than 128 KiB (the limit grows with use, up to 32 MiB) freshly from the
    kernel and unmaps it when freed, and gives a heap's free top back to the kernel: every step then pays tens of
    thousands of page faults (each zero-fills a page) for the same arrays. Here arrays of up to 32 MiB (the largest
    limit glibc accepts) come from the heap, and up to 1 GiB of free heap stays mapped. Memory is kept, not given
    back, between steps: peak memory rose by 25-45 MiB on the paper ConvNets (docs/speed.md). Not glibc: nothing to do.
    """
    m_trim_threshold, m_mmap_threshold = -1, -3
    _mallopt(m_mmap_threshold, 32 << 20)
    _mallopt(m_trim_threshold, 1 << 30)


def keep_large_arrays_mapped():
    """From now on let glibc's malloc reuse freed arrays of every size, not only those of up to 32 MiB.

    glibc maps every block above its largest mmap limit (32 MiB) freshly from the kernel and unmaps it on free. The
    BinaryNet MLP's 4096 x 4096 weight-sized arrays (64 MiB: binary weights, gradients, Adam's terms) were mapped and
    faulted in again at every step: about 2,200 page faults and 120-340 ms of kernel time per step here, most of it
    the kernel assembling huge pages (NumPy asks for them on large arrays). With mmap off (M_MMAP_MAX = 0) they come
    from the heap and are reused. Called by binary_connect.compile_functions, i.e. after the data are loaded: a
    preprocessing step's large temporaries are still unmapped (given back) when freed. Not glibc: nothing to do.
    """
    m_mmap_max = -4
    _mallopt(m_mmap_max, 0)


_keep_freed_memory()
if "theano" in sys.modules and sys.modules["theano"].config.floatX != "float32":
    raise ImportError("compat must be imported before theano (floatX is not float32)")
_configure_theano()

import logging  # noqa: E402

import numpy as np  # noqa: E402
import theano  # noqa: E402
import theano.tensor as T  # noqa: E402
from theano.tensor.signal import pool  # noqa: E402

from plumbing import branch_free, cache_keys, fast_im2col, fast_pool_grad, fast_sum, parallel_compile  # noqa: E402
from plumbing import dnnl_conv, fast_pool, merged_updates, parallel_mrg, simd_loops, warm_start, graph_cache  # noqa: E402


def _install_downsample_shim():
    """Register `theano.tensor.signal.downsample` (removed in Theano 0.9) for Lasagne 0.1."""
    if "theano.tensor.signal.downsample" in sys.modules:
        return
    shim = types.ModuleType("theano.tensor.signal.downsample")

    def max_pool_2d(input, ds, ignore_border=None, st=None, padding=(0, 0), mode="max"):
        return pool.pool_2d(input, ws=ds, ignore_border=ignore_border, stride=st, pad=padding, mode=mode)

    shim.max_pool_2d = max_pool_2d
    sys.modules[shim.__name__] = shim
    theano.tensor.signal.downsample = shim


_install_downsample_shim()
cache_keys.install()
parallel_mrg.install()
branch_free.install()
fast_im2col.install()
fast_sum.install()
fast_pool.install()
fast_pool_grad.install()
parallel_compile.install()
warm_start.install()
graph_cache.install()
merged_updates.install()
simd_loops.install()
DNNL_CONV = dnnl_conv.install()
# Theano warns that it cannot find "libmkl_rt.so" in the library dir: the versioned file is linked on purpose.
logging.getLogger("theano.tensor.blas").addFilter(
    lambda record: "did not find a dynamic library" not in record.getMessage())
# Lasagne 0.1 passes conv2d's old keyword `image_shape`; Theano 1.0 accepts it with a warning on every conv layer.
warnings.filterwarnings("ignore", message="The `image_shape` keyword argument", category=UserWarning)
# Lasagne 0.1 imports pkg_resources, which setuptools 67.5 and later deprecate with a warning on every start.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
import lasagne  # noqa: E402
import contextlib  # noqa: E402
from theano import configparser  # noqa: E402


def round_half_away_from_zero(x):
    """Elementwise round with ties away from zero: 0.5 -> 1, -0.5 -> -1 (the pre-2017 Theano default)."""
    return T.round(x, mode="half_away_from_zero")


def _user_set(name):
    """True when THEANO_FLAGS or .theanorc gave Theano's config variable `name` (e.g. "traceback.limit")."""
    return any(v.fullname == name and not v.is_default for v in configparser._config_var_list)


@contextlib.contextmanager
def no_creation_traces():
    """Inside this block Theano records no creation trace for the variables it makes (traceback.limit = 0).

    Theano tags every new variable with the stack it was made from: it walks the frames up to the caller (Theano's own
    frames are skipped but still visited, and each frame's source line is read) and keeps up to traceback.limit = 8.
    `theano.grad` and the graph optimizer make 45,000-60,000 variables for a paper ConvNet, and the traces took 0.6-0.9
    s of its warm compile (docs/speed.md, item 20). Those traces would only name Theano's gradient code and the line
    of the grad or function call; the variables of the forward graph, built outside this block, keep theirs, and
    optimizers still copy those onto the nodes that replace them. The compiled graph is the same
    (tests/test_binary_connect.py). A limit the user set in THEANO_FLAGS or .theanorc is left alone.
    """
    if _user_set("traceback.limit"):
        yield
        return
    saved = theano.config.traceback.limit
    theano.config.traceback.limit = 0
    try:
        yield
    finally:
        theano.config.traceback.limit = saved


__all__ = ["theano", "T", "np", "lasagne", "BLAS_NAME", "BLAS_LDFLAGS", "round_half_away_from_zero"]
