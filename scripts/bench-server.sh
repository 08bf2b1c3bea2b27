#!/usr/bin/env bash
# Load benchmark of cairn-server: pushes/s and role fetches/s from 64
# concurrent clients over loopback TLS, with p50/p99/max latency and the
# server's peak RSS. Builds and runs the release binary; prints a Markdown
# table (see docs/benchmarks.md). Fails if any request fails or if the stored
# versions differ from the acknowledged pushes.
#
# CAIRN_BENCH_CLIENTS (default 64) and CAIRN_BENCH_SECS (default 10, per load)
# change the load.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p cairn-server --bin cairn-server
cargo bench --locked -p cairn-server --bench load
