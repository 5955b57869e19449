#!/usr/bin/env bash
# The README's run command (Quick start): builds the release binaries (io_conn, md, viewstats:
# the same build CI and systemd/install.sh use) and starts io_conn with two md instances on the
# shipped default config. Ctrl-C (or SIGTERM) stops io_conn and its md children, and they remove
# every segment and FIFO they created. CI runs this exactly as the README shows it, then talks to
# every default listener (.ci/readme-run).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins -p io_conn -p md -p viewstats
exec ./target/release/io_conn --config config/shmsrv.toml --spawn-md 2
