#!/usr/bin/env bash
# The whole comparison table in one command (issue 15): shmsrv against Redis, nginx (1 worker)
# and onecore (the one-process epoll limit), one client (loadgen) for all, written as a dated
# section of docs/BENCHMARKS.md plus docs/img/latency-vs-load.png (p99 against offered rate).
#
#   scripts/bench-table.sh               # ~3 minutes; extra arguments go to bench-table
#   scripts/bench-table.sh --md 2        # our server with 2 md instances
#
# Installs what it needs (redis-server, nginx-light, fonts-dejavu-core) and builds the release
# binaries. Loopback only; every server is started and stopped by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || missing+=(nginx-light)
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
if ((${#missing[@]})); then
    echo "bench-table: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
cargo build --release --bins -p io_conn -p md -p loadgen
exec target/release/bench-table --bin-dir target/release "$@"
