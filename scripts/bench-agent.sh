#!/usr/bin/env bash
# The agent's no-change benchmark: builds the release agent, makes sure the
# machine image exists, then boots a machine, installs CFEngine in it, and
# times converged `cairn-agent apply` runs of 100 and 1,000 resources
# alternating with `cf-agent` runs keeping the same state, and what a guarded
# exec costs in each (see tests/src/bin/bench-agent.rs, which refuses a debug
# build). Arguments go to the bench: --runs N, --sizes 100,1000, --profile.
# As root on Debian; the machine needs Debian's archive.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup.sh

export CAIRN_TEST_IMAGE="${CAIRN_TEST_IMAGE:-/var/cache/cairn-test/bookworm}"
if [ ! -e "$CAIRN_TEST_IMAGE/.complete" ]; then
  echo "== building the machine image in $CAIRN_TEST_IMAGE"
  tests/machine/build-image.sh "$CAIRN_TEST_IMAGE"
fi

echo "== building the agent (release)"
cargo build --release --locked -p cairn-agent
target="${CARGO_TARGET_DIR:-target}"
export CAIRN_AGENT_BIN="$PWD/$target/release/cairn-agent"
case "$target" in /*) CAIRN_AGENT_BIN="$target/release/cairn-agent" ;; esac

echo "== running the benchmark"
exec cargo run --release --locked -q -p cairn-e2e --bin bench-agent -- "$@"
