#!/usr/bin/env bash
# Runs every test of Cairn: formatting, lints, unit and integration tests, and
# the end-to-end tests that boot real systemd machines. As root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup.sh

export CAIRN_TEST_IMAGE="${CAIRN_TEST_IMAGE:-/var/cache/cairn-test/bookworm}"
export CAIRN_TEST_CLOUD_INIT_IMAGE="${CAIRN_TEST_CLOUD_INIT_IMAGE:-$CAIRN_TEST_IMAGE-cloud-init}"
image_log=$(mktemp)
# The machine images build (or are found cached) while the code compiles:
# the base one, then the one with cloud-init made from it.
{
  tests/machine/build-image.sh "$CAIRN_TEST_IMAGE" &&
    tests/machine/build-cloud-init-image.sh "$CAIRN_TEST_IMAGE" "$CAIRN_TEST_CLOUD_INIT_IMAGE"
} >"$image_log" 2>&1 &
image_pid=$!

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-run
# The statically linked agent the cloud-init machines install.
CAIRN_STATIC_AGENT_BIN=$(scripts/build-static-agent.sh)
export CAIRN_STATIC_AGENT_BIN

if ! wait "$image_pid"; then
  cat "$image_log"
  echo "test: building the machine image failed" >&2
  exit 1
fi
rm -f "$image_log"

cargo nextest run --workspace --locked --no-fail-fast
