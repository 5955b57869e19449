#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (real processes on loopback, real shared
# memory) and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# The end-to-end tests start the real io_conn, md and viewstats binaries (and md's examples).
cargo build --workspace --bins --examples
cargo test --workspace --doc
cargo nextest run --workspace --no-fail-fast
