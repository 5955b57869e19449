#!/usr/bin/env bash
# The README's test command: every test of the workspace, unit, integration (real processes on
# loopback, real shared memory) and doc tests. Installs what the tests need first
# (scripts/deps.sh: cargo-nextest, Python's prometheus_client, tmux, strace); without
# cargo-nextest (SHMSRV_NO_INSTALL=1, or no crates.io) it runs `cargo test` instead.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -p md      # one crate's tests (arguments replace --workspace)
set -euo pipefail
cd "$(dirname "$0")/.."
# Where `cargo install` puts cargo-nextest, should this shell's PATH lack it.
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
scripts/deps.sh
scope=("$@")
[[ ${#scope[@]} -gt 0 ]] || scope=(--workspace)
# The end-to-end tests start the real io_conn, md and viewstats binaries (and md's examples).
cargo build --workspace --bins --examples
cargo test "${scope[@]}" --doc
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run "${scope[@]}" --no-fail-fast
else
    echo "test.sh: cargo-nextest is not installed: running the tests with cargo test instead" >&2
    cargo test "${scope[@]}" --no-fail-fast --lib --bins --tests --examples
fi
