# binarynet-archive in a container: Python 3.11 and the hash-pinned stack of requirements.lock in
# /opt/binarynet-archive/.venv, g++/make for Theano and the XNOR kernels. Legacy builder syntax (no BuildKit
# needed). docs/docker.md has the details; in short:
#
#   docker build -t binarynet-archive .
#   docker run --rm binarynet-archive test
#   docker run --rm --user "$(id -u):$(id -g)" -v "$HOME/mnist:/data:ro" -v "$PWD/runs:/runs" \
#       binarynet-archive reproduce --budget short --only 'mnist-*'
#
# Build arguments:
#   BASE_IMAGE     any Debian/Ubuntu image: python:3.11-slim-bookworm (default), plain debian:bookworm
#                  (Python 3.11 comes from apt); for the GPU variant nvidia/cuda:12.6.3-devel-ubuntu22.04
#                  together with PYTHON=python3.11.
#   BASE_IMAGE_DIGEST   the base's digest or image ID, recorded in the image labels (scripts/docker_check.sh
#                  fills it in; a plain `docker build` records "unrecorded").
#   VCS_REF        the git commit built, also recorded in the labels.
#   PYTHON         interpreter name; if missing it is installed with apt as $PYTHON, $PYTHON-venv, $PYTHON-dev.
#   WITH_GPU=1     also install requirements-gpu.lock (PyCUDA, cuBLAS) and check them at build time
#                  (`docker-entrypoint.sh gpu-check`); needs a CUDA *devel* base (cuda.h, nvcc, libcuda stub).
#   PIP_CERT_FILE  path, inside the build context, of a CA bundle pip must trust (TLS-inspecting proxy).
#                  It is used in the build stage only and never reaches the final image.
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL   package mirrors, also build stage only.
# Docker's predefined HTTP_PROXY / HTTPS_PROXY / NO_PROXY build arguments work for apt and pip as usual.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- base: the Debian packages (shared by both stages, built once) --------------------------------------------
FROM ${BASE_IMAGE} AS base
ARG PYTHON=python3
ENV PYTHON=${PYTHON} \
    DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    APP=/opt/binarynet-archive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Package versions are whatever the chosen base distribution ships (Debian 12 or Ubuntu 22.04): no pins.
# ca-certificates: the data sets are downloaded over HTTPS when no /data is mounted.
# tini: process 1 of the container. Without it the command itself would be process 1, which the kernel gives no
# default signal handling (Ctrl-C and `docker stop` would not stop it) and to which every orphaned process of the
# tests and the training runs is handed without ever being reaped.
# hadolint ignore=DL3008
RUN set -eux; \
    pkgs=(); \
    command -v g++ >/dev/null || pkgs+=(g++); \
    command -v gcc >/dev/null || pkgs+=(gcc); \
    command -v make >/dev/null || pkgs+=(make); \
    [ -f /etc/ssl/certs/ca-certificates.crt ] || pkgs+=(ca-certificates); \
    command -v tini >/dev/null || pkgs+=(tini); \
    if ! command -v "$PYTHON" >/dev/null; then \
        pkgs+=("$PYTHON" "$PYTHON-venv" "$PYTHON-dev"); \
    else \
        inc=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
        [ -f "$inc/Python.h" ] || pkgs+=("$PYTHON-dev"); \
        "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || pkgs+=("$PYTHON-venv"); \
    fi; \
    if [ ${#pkgs[@]} -gt 0 ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends "${pkgs[@]}"; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 needed, got " + sys.version'
WORKDIR ${APP}

# ---- build: the virtual environment (the CA bundle and mirror settings stay in this stage) ---------------------
FROM base AS build
ARG WITH_GPU=0
ARG PIP_CERT_FILE=
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
COPY requirements.lock requirements-gpu.lock ${PIP_CERT_FILE} /tmp/build/
# Every package is installed from the lock files with --require-hashes --no-deps: nothing unpinned gets in.
# PyCUDA has no wheels; it is compiled here against the locked NumPy and setuptools, both installed by the first
# step (--no-build-isolation), so its build uses no unpinned package either.
# oneDNN's wheel holds its 54 MB library three times (wheels have no symlinks): two become links to the third.
RUN set -eux; \
    if [ -n "$PIP_CERT_FILE" ]; then export PIP_CERT="/tmp/build/${PIP_CERT_FILE##*/}"; fi; \
    "$PYTHON" -m venv .venv; \
    .venv/bin/python -m pip install --no-cache-dir --require-hashes --no-deps -r /tmp/build/requirements.lock; \
    ln -sf libdnnl.so.3.2 .venv/lib/libdnnl.so.3; ln -sf libdnnl.so.3.2 .venv/lib/libdnnl.so; \
    if [ "$WITH_GPU" = 1 ]; then \
        cuda=${CUDA_ROOT:-/usr/local/cuda}; \
        test -f "$cuda/include/cuda.h" || { echo "WITH_GPU=1 needs a CUDA devel base image (no $cuda/include/cuda.h)" >&2; exit 1; }; \
        major=$(sed -n 's/^#define CUDA_VERSION \([0-9]*\)[0-9][0-9][0-9]$/\1/p' "$cuda/include/cuda.h"); \
        curand=False; if [ "${major:-0}" -lt 13 ] && ls "$cuda"/lib64/libcurand.so* >/dev/null 2>&1; then curand=True; fi; \
        printf 'CUDA_ROOT = "%s"\nCUDADRV_LIB_DIR = ["%s/lib64", "%s/lib64/stubs"]\nCUDA_ENABLE_CURAND = %s\n' \
            "$cuda" "$cuda" "$cuda" "$curand" > /etc/aksetup-defaults.py; \
        export PATH="$cuda/bin:$PATH"; \
        .venv/bin/python -m pip install --no-cache-dir --require-hashes --no-deps --no-build-isolation \
            -r /tmp/build/requirements-gpu.lock; \
    fi; \
    rm -rf /tmp/build
COPY . /tmp/src
# The GPU variant's build check, `docker-entrypoint.sh gpu-check` (docs/docker.md), runs here, without a GPU.
RUN set -eux; \
    if [ -n "$PIP_CERT_FILE" ]; then \
        rm -f "/tmp/src/$PIP_CERT_FILE" && rmdir --ignore-fail-on-non-empty "$(dirname "/tmp/src/$PIP_CERT_FILE")"; \
    fi; \
    if [ "$WITH_GPU" = 1 ]; then \
        venv_bin="$APP/.venv/bin"; \
        APP=/tmp/src PATH="$venv_bin:${CUDA_ROOT:-/usr/local/cuda}/bin:$PATH" BINARYNET_KERNEL_CACHE=/tmp/kernels \
            bash /tmp/src/scripts/docker-entrypoint.sh gpu-check; \
    fi

# ---- final image ------------------------------------------------------------------------------------------------
FROM base
ARG BASE_IMAGE
ARG BASE_IMAGE_DIGEST=unrecorded
ARG VCS_REF=unrecorded
ARG WITH_GPU=0
LABEL org.opencontainers.image.title="binarynet-archive" \
      org.opencontainers.image.description="BinaryConnect and BinaryNet (2015-2016) on Theano 1.0.5 + Lasagne 0.1" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.opencontainers.image.base.digest="${BASE_IMAGE_DIGEST}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      binarynet-archive.with-gpu="${WITH_GPU}" \
      binarynet-archive.volumes="/data (data sets, read-only) /runs (results) /cache (compiled code, downloads)"
COPY --from=build ${APP}/.venv ${APP}/.venv
COPY --from=build /tmp/src ${APP}
# The Makefile's venv step is up to date when .venv/.installed is newer than requirements.txt: mark it so.
# /runs and /cache are writable for any --user uid (sticky, like /tmp).
RUN set -eux; \
    touch .venv/.installed; \
    mkdir -p /data /runs /cache; \
    chmod 1777 /runs /cache
ENV PATH=${APP}/.venv/bin:${PATH} \
    BINARYNET_ALLOW_NO_NVCC=1 \
    BINARYNET_DATA=/cache/data \
    BINARYNET_THEANO_CACHE=/cache/theano \
    BINARYNET_KERNEL_CACHE=/cache/kernels \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg
ENTRYPOINT ["tini", "--", "/opt/binarynet-archive/scripts/docker-entrypoint.sh"]
CMD ["help"]
