#!/usr/bin/env bash
# Fetch the real cuBLAS 12 and 13 libraries from PyPI's wheels into DIR (default .cache/cublas), so that
# tests/test_gpu_host.py::test_real_cublas_exports_the_bound_symbols checks the ctypes binding of kernels/gpu.py
# against them (no GPU needed: the libraries load and export their functions; creating a handle fails cleanly).
# About 1 GB of wheels: only libcublas and libcublasLt are unpacked (1.4 GB), the wheels are then deleted.
# Usage: bash scripts/cublas_libraries.sh [DIR]      then: BINARYNET_CUBLAS_WHEELS=DIR make test
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.cache/cublas}
PY=${PY:-.venv/bin/python}
WHEELS="nvidia-cublas-cu12==12.9.1.4 nvidia-cublas==13.0.2.14"
if [ -e "$DIR/.complete" ]; then
  echo "cuBLAS libraries already in $DIR"
  exit 0
fi
test -x "$PY" || { echo "error: $PY not found: run make venv first (or set PY=python3 with pip)" >&2; exit 2; }
rm -rf "$DIR" && mkdir -p "$DIR/wheels"
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$DIR/wheels" $WHEELS
"$PY" - "$DIR" <<'UNPACK'
import glob, os, sys, zipfile
root = sys.argv[1]
for wheel in glob.glob(os.path.join(root, "wheels", "*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if "/lib/libcublas" in n]
        archive.extractall(os.path.join(root, os.path.basename(wheel).split("-")[0]), names)
UNPACK
rm -rf "$DIR/wheels"
find "$DIR" -name 'libcublas.so.1[23]' | sort
touch "$DIR/.complete"
