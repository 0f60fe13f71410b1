#!/usr/bin/env bash
# Entry point of the binarynet-archive image (docs/docker.md). The first word picks what runs:
#
#   reproduce [ARGS]   python reproduce.py ARGS --data-dir /data --runs /runs   (the paper tables)
#   test [ARGS]        python -m pytest -q -rs -m "not slow" (no ARGS), else python -m pytest ARGS
#   benchmark [ARGS]   python benchmark.py ARGS             (the kernel benchmark; --device gpu on a GPU host)
#   versions           the software stack: Python, NumPy, Theano, Lasagne, BLAS and its kernel, compiler, CUDA
#   gpu-check          what the GPU variant's build runs: PyCUDA and cuBLAS load, the kernels compile
#   NAME.py [ARGS]     any script of the project by name, e.g. mnist.py --epochs 3 --data-dir /data
#   help               this text
#   anything else      run as a command (bash, python, make test, ...)
#
# Volumes: /data (data sets, read-only is fine), /runs (results), /cache (compiled code and downloads; mount a
# named volume there to keep Theano's compiled modules between runs). Any --user uid works: HOME falls back to
# /tmp/home when the user has none, and /runs and /cache are world-writable in the image.
set -euo pipefail
APP=${APP:-/opt/binarynet-archive}
cd "$APP"

if [ -z "${HOME:-}" ] || [ ! -w "${HOME}" ]; then
    export HOME=/tmp/home
    mkdir -p "$HOME"
fi

die() { echo "error: $*" >&2; exit 2; }

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0" | sed '/^set -euo/d'
}

is_mounted() { awk -v dir="$1" '$5 == dir {found = 1} END {exit !found}' /proc/self/mountinfo; }

has_files() { [ -d "$1" ] && [ -n "$(ls -A "$1" 2>/dev/null)" ]; }

# "--flag" or "--flag=..." among the arguments?
has_flag() {
    local flag=$1 arg
    shift
    for arg in "$@"; do
        case "$arg" in "$flag" | "$flag"=*) return 0 ;; esac
    done
    return 1
}

# Which data folder to pass: /data when something is in it, else nothing (the code downloads into
# $BINARYNET_DATA, /cache/data in the image) with one line saying so.
data_args() {
    if has_files /data; then
        echo "--data-dir /data"
    else
        echo "note: nothing mounted at /data; data sets will be downloaded into $BINARYNET_DATA" \
             "(mount yours with -v DIR:/data:ro)" >&2
    fi
}

check_runs() {
    local dir=$1
    mkdir -p "$dir" 2>/dev/null || true
    [ -w "$dir" ] || die "$dir is not writable by uid $(id -u); run with --user \$(id -u):\$(id -g) of the" \
                         "folder's owner, or make the folder writable"
    is_mounted "$dir" || [ "$dir" != /runs ] || echo "note: /runs is not a mounted volume; results stay" \
        "inside this container (mount a folder with -v DIR:/runs)" >&2
}

cmd_reproduce() {
    [ -f reproduce.py ] || die "reproduce.py is not in this image (built from an older commit); rebuild the image"
    local extra=() data=()
    if ! has_flag --runs "$@"; then check_runs /runs; extra+=(--runs /runs); fi
    if ! has_flag --data-dir "$@"; then read -r -a data <<<"$(data_args)"; extra+=("${data[@]}"); fi
    exec python reproduce.py "$@" "${extra[@]}"
}

cmd_test() {
    if [ $# -eq 0 ]; then
        exec python -m pytest -q -rs -m "not slow"
    fi
    exec python -m pytest "$@"
}

cmd_versions() {
    python - <<'PY'
"""Print the software stack of this image, one item per line."""
import ctypes
import glob
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata

from plumbing import compat  # sets Theano's flags and loads the BLAS Theano links against
import lasagne
import numpy
import scipy
import theano
import threadpoolctl


def first_line(command):
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return None
    return out.splitlines()[0] if out else None


def mkl_processor():
    """MKL's own name of the code path it dispatches to on this CPU (MKL_Get_Version's Processor field: e.g.
    an AVX-512 path on Intel, the generic "Intel(R) Architecture processors" path elsewhere)."""
    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("update", ctypes.c_int),
                    ("status", ctypes.c_char_p), ("build", ctypes.c_char_p), ("processor", ctypes.c_char_p),
                    ("platform", ctypes.c_char_p)]
    paths = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    if not paths:
        return None
    lib = ctypes.CDLL(paths[-1])
    version = Version()
    lib.MKL_Get_Version(ctypes.byref(version))
    return version.processor.decode(errors="replace")


def package(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def line(label, value):
    print(f"{label + ':':<22} {value if value else 'not present'}")


line("Python", f"{platform.python_version()} ({sys.executable})")
line("NumPy", numpy.__version__)
line("SciPy", scipy.__version__)
line("Theano", theano.__version__)
line("Lasagne", lasagne.__version__)
line("Theano BLAS", f"{compat.BLAS_NAME} (blas.ldflags={theano.config.blas.ldflags})")
for lib in threadpoolctl.threadpool_info():
    kernel = lib.get("architecture") or lib.get("threading_layer") or "-"
    line("  " + lib.get("internal_api", "?"), f"{lib.get('user_api')} {lib.get('version')} kernel/layer={kernel} "
                                              f"threads={lib.get('num_threads')} ({os.path.basename(lib['filepath'])})")
line("  MKL code path", mkl_processor())
line("C compiler", first_line(["gcc", "--version"]))
line("C++ compiler", first_line(["g++", "--version"]))
line("Theano compiledir", theano.config.compiledir)
line("OS", first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]))
line("CPU", platform.machine() + ", " + str(os.cpu_count()) + " cores")

from kernels import gpu  # noqa: E402  (after compat, like every module of the project)
try:
    major, minor = gpu.nvrtc_version()
    nvrtc = f"{major}.{minor} ({gpu.find_nvrtc()})"
except gpu.KernelCompileError as error:
    nvrtc = f"not present ({error})"
line("NVRTC", nvrtc)
nvcc = shutil.which("nvcc")
if nvcc:
    release = ([v for v in subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.splitlines()
                if "release" in v] or ["?"])[0]
    nvcc = f"{release} ({nvcc})"
line("nvcc", nvcc)
line("PyCUDA", package("pycuda"))
try:
    cublas = gpu.find_cublas()
except gpu.GpuUnavailable as error:
    cublas = f"not present ({error})"
line("cuBLAS", cublas)
line("CUDA driver / GPU", gpu.gpu_status()[1])
PY
}

cmd_gpu_check() {
    # Run by the GPU variant's build (Dockerfile) on a machine without a GPU: every piece that can be checked
    # without a device is. A driver stub (the CUDA devel image's lib64/stubs/libcuda.so) stands in for the
    # driver while PyCUDA's modules load; it is put on the library path for this check only.
    local cuda=${CUDA_ROOT:-/usr/local/cuda} stubdir
    stubdir=$(mktemp -d)
    if [ -f "$cuda/lib64/stubs/libcuda.so" ] && ! python -c 'import ctypes; ctypes.CDLL("libcuda.so.1")' 2>/dev/null
    then
        ln -s "$cuda/lib64/stubs/libcuda.so" "$stubdir/libcuda.so.1"
    fi
    local status=0
    LD_LIBRARY_PATH="$stubdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" CUDA_ROOT=$cuda python - <<'PY' || status=$?
"""GPU variant build check: imports, driver entry points, cuBLAS, and the kernels compiled for real."""
import ctypes
import shutil

import pycuda
import pycuda.driver as cuda  # links against libcuda.so.1 (the real driver, or the devel image's stub)

from plumbing import compat  # noqa: F401  (project import order: compat first)
from kernels import gpu

print(f"gpu-check: pycuda {pycuda.VERSION_TEXT} imports, pycuda.driver loads")
try:
    cuda.init()
    print(f"gpu-check: cuInit succeeded: {cuda.Device.count()} device(s)")
except cuda.Error as error:
    print(f"gpu-check: cuInit fails as expected without a GPU: {gpu._first_line(error)}")

# The cuBLAS binding (kernels/gpu.py, ctypes): found, bound, asked for its version; a handle needs a device.
path = gpu.find_cublas()
cublas = gpu.Cublas(path)
value, parts = ctypes.c_int(), []
for kind in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
    assert cublas.lib.cublasGetProperty(kind, ctypes.byref(value)) == 0, "cublasGetProperty failed"
    parts.append(str(value.value))
try:
    cublas.destroy(cublas.create())
    handle = "cublasCreate_v2 succeeded"
except gpu.GpuUnavailable as error:
    handle = "cublasCreate_v2 fails cleanly without a GPU: " + str(error).split(";")[0]
print(f"gpu-check: cuBLAS {'.'.join(parts)} bound from {path}; {handle}")

for arch in (50, 61, 75):
    cubin = gpu.compile_cubin(arch, compiler="nvrtc")
    assert cubin[:4] == b"\x7fELF", "NVRTC did not return an ELF cubin"
    major, minor = gpu.nvrtc_version()
    print(f"gpu-check: NVRTC {major}.{minor} compiled binary_kernels.cu for sm_{arch} ({len(cubin)} bytes)")
if shutil.which("nvcc"):
    for arch in gpu.nvcc_archs()[:1]:
        cubin = gpu.compile_cubin(arch, compiler="nvcc")
        assert cubin[:4] == b"\x7fELF", "nvcc did not return an ELF cubin"
        print(f"gpu-check: nvcc compiled binary_kernels.cu for sm_{arch} ({len(cubin)} bytes)")
else:
    print("gpu-check: no nvcc in this base image: only NVRTC compiled the kernels")
PY
    rm -rf "$stubdir"
    return $status
}

cmd_script() {
    local script=$1
    shift
    [ -f "$script" ] || die "no script $script in $APP (scripts: $(printf '%s ' ./*.py | sed 's#\./##g'))"
    exec python "$script" "$@"
}

command=${1:-help}
[ $# -eq 0 ] || shift
case "$command" in
    reproduce) cmd_reproduce "$@" ;;
    test) cmd_test "$@" ;;
    benchmark) exec python benchmark.py "$@" ;;
    versions) cmd_versions ;;
    gpu-check) cmd_gpu_check ;;
    help | --help | -h) usage ;;
    *.py) cmd_script "$command" "$@" ;;
    *) exec "$command" "$@" ;;
esac
