#!/usr/bin/env bash
# Load benchmark of cairn-server: pushes/s and role fetches/s from 64
# concurrent clients over loopback TLS, with p50/p99/max latency and the
# server's peak RSS. Builds and runs the release binary; prints a Markdown
# table (see docs/benchmarks.md) and the filesystem of the data directory.
# Then restarts the server and fails if the stored versions differ from the
# acknowledged pushes (missing, extra, or with another digest), or if any
# request failed. As root on Debian.
#
# CAIRN_BENCH_CLIENTS (default 64) and CAIRN_BENCH_SECS (default 10, per load)
# change the load; CAIRN_BENCH_DIR where the data directory is created
# (default: the system's temporary directory, often tmpfs); CAIRN_BENCH_PIN=0/1
# puts the server on CPU 0 and the clients on CPU 1; CAIRN_SERVER_BIN runs
# another build of cairn-server under the same load (to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup.sh

cargo build --release --locked -p cairn-server --bin cairn-server
cargo bench --locked -p cairn-server --bench load
