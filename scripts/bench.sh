#!/usr/bin/env bash
# Benchmarks: builds release binaries and prints one table per section, each
# figure beside a baseline measured in the same run.
#   scripts/bench.sh [SECTION...] [--seconds N]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "bench needs redis-server (apt-get install -y redis-server)" >&2; exit 1; }
cargo build --release --workspace --bins --locked -q
# The bench finds the worker next to itself in target/release.
exec target/release/circles-bench "$@"
