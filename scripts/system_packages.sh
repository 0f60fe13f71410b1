#!/usr/bin/env bash
# Install the Debian packages the project needs, if they are missing: a C/C++ compiler (Theano compiles its
# ops, the CPU kernels are C), the Python headers (Theano's C modules include Python.h) and venv; Slurm and munge
# for the tests of `reproduce.py --engine slurm` (tests/test_slurm.py starts a single-node Slurm); for the AArch64
# tests of the CPU kernels (tests/test_kernels_cpu_isa.py) a cross compiler with its static C library and qemu's
# user-mode emulator.
set -euo pipefail
python=${1:-python3}
missing=()
command -v g++ >/dev/null || missing+=(g++)
command -v gcc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$include/Python.h" ] || missing+=(python3-dev)
"$python" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v sbatch >/dev/null || missing+=(slurm-wlm)
command -v munged >/dev/null || missing+=(munge)
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[ -f /usr/aarch64-linux-gnu/lib/libc.a ] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "error: missing ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2; exit 1; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
