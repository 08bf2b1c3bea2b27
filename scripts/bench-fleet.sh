#!/usr/bin/env bash
# Fleet benchmark of cairn-server (server/benches/fleet.rs): simulated agents
# on loopback enroll, hold watch streams (1,000 to 20,000, from 250 source
# addresses 127.0.1.x), are told of a promote, and submit reports. Prints
# enrollments/s, per step the server's memory per connected agent and the time
# from a promote until every agent was notified, and reports/s (every
# acknowledged report must be listed by the server afterwards) with the
# server's CPU time per report. As root on Debian: it raises the descriptor
# limit.
#
# CAIRN_FLEET_STEPS (default 1000,5000,10000,20000), CAIRN_FLEET_NODES
# (enrolled nodes, default 1000), CAIRN_FLEET_REPORTERS (nodes reporting at
# once, default 512) and CAIRN_BENCH_SECS (report ingest, default 10) change
# the load. CAIRN_FLEET_REPLICAS=N (N >= 2) runs N servers on one PostgreSQL
# database (a throwaway cluster on loopback) instead of one on SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup.sh

cargo build --release --locked -p cairn-server --bin cairn-server
cargo bench --locked -p cairn-server --bench fleet
