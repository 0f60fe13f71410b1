# binarynet-archive in a container: Python 3.11, the pinned Theano/Lasagne stack in /opt/binarynet-archive/.venv
# (the Makefile's own venv, so `make quick` and `make test` work as on a workstation), g++/make for Theano and
# the XNOR kernels. Legacy builder syntax (no BuildKit needed). README "Docker" has the details; in short:
#
#   docker build -t binarynet-archive .
#   docker run --rm binarynet-archive make test
#   docker run --rm -v "$HOME/mnist:/data:ro" binarynet-archive make quick DATA_DIR=/data
#
# Build arguments:
#   BASE_IMAGE     any Debian/Ubuntu image: python:3.11-slim-bookworm (default), plain debian:bookworm
#                  (Python 3.11 comes from apt), or for GPU hosts e.g. nvidia/cuda:12.6.3-devel-ubuntu22.04
#                  together with PYTHON=python3.11.
#   PYTHON         interpreter name; if missing it is installed with apt as $PYTHON, $PYTHON-venv, $PYTHON-dev.
#   WITH_GPU=1     install requirements-gpu.txt (PyCUDA, scikit-cuda); needs a CUDA *devel* base image.
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
# hadolint ignore=DL3008
RUN set -eux; \
    pkgs=(); \
    command -v g++ >/dev/null || pkgs+=(g++); \
    command -v gcc >/dev/null || pkgs+=(gcc); \
    command -v make >/dev/null || pkgs+=(make); \
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
COPY requirements.txt requirements-gpu.txt ${PIP_CERT_FILE} /tmp/build/
RUN set -eux; \
    if [ -n "$PIP_CERT_FILE" ]; then export PIP_CERT="/tmp/build/${PIP_CERT_FILE##*/}"; fi; \
    req=/tmp/build/requirements.txt; \
    if [ "$WITH_GPU" = 1 ]; then \
        req=/tmp/build/requirements-gpu.txt; \
        cuda=${CUDA_ROOT:-/usr/local/cuda}; \
        test -f "$cuda/include/cuda.h" || { echo "WITH_GPU=1 needs a CUDA devel base image (no $cuda/include/cuda.h)" >&2; exit 1; }; \
        major=$(sed -n 's/^#define CUDA_VERSION \([0-9]*\)[0-9][0-9][0-9]$/\1/p' "$cuda/include/cuda.h"); \
        curand=True; [ "${major:-0}" -ge 13 ] && curand=False; \
        printf 'CUDA_ROOT = "%s"\nCUDADRV_LIB_DIR = ["%s/lib64", "%s/lib64/stubs"]\nCUDA_ENABLE_CURAND = %s\n' \
            "$cuda" "$cuda" "$cuda" "$curand" > /etc/aksetup-defaults.py; \
        export PATH="$cuda/bin:$PATH"; \
    fi; \
    "$PYTHON" -m venv .venv; \
    .venv/bin/python -m pip install --no-cache-dir -r "$req"; \
    rm -rf /tmp/build
COPY . /tmp/src
RUN if [ -n "$PIP_CERT_FILE" ]; then \
        rm -f "/tmp/src/$PIP_CERT_FILE" && rmdir --ignore-fail-on-non-empty "$(dirname "/tmp/src/$PIP_CERT_FILE")"; \
    fi

# ---- final image ------------------------------------------------------------------------------------------------
FROM base
COPY --from=build ${APP}/.venv ${APP}/.venv
COPY --from=build /tmp/src ${APP}
# The Makefile's venv step is up to date when .venv/.installed is newer than requirements.txt: mark it so.
RUN touch .venv/.installed
ENV PATH=${APP}/.venv/bin:${PATH}
CMD ["make", "quick"]
