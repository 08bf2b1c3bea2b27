#!/usr/bin/env bash
# The dashboard's pages on a large fleet (server/benches/dashboard.rs): a
# SQLite store filled with 10,000 nodes and 1,000,000 reports, then the
# overview, pages of nodes (filtered too), a node and a report asked for
# through the dashboard's router with a session. Prints per page the median
# and slowest server time and the page's size (no TLS, no network), then each
# of the overview's store reads timed alone.
#
# CAIRN_DASH_NODES (default 10000), CAIRN_DASH_REPORTS (default 1000000) and
# CAIRN_DASH_ROUNDS (requests per page, default 20) change the load.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup.sh

cargo bench --locked -p cairn-server --bench dashboard
