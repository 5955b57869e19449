#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (real processes on loopback, real shared
# memory) and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc
