#!/usr/bin/env bash
# What installing a role's packages in one apt transaction saves: boots a
# fresh machine per run and times `cairn-agent apply` of four packages from
# Debian's archive, with nothing ordering them apart (one `apt-get install`)
# and with each requiring the one before (one by one), rounds alternating
# (see tests/src/bin/bench-packages.rs). Arguments go to the bench: --runs N,
# --packages a,b,c,d. As root on Debian; the machines need Debian's archive.
# apt and dpkg are the time measured, so the agent's debug build does.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup.sh

export CAIRN_TEST_IMAGE="${CAIRN_TEST_IMAGE:-/var/cache/cairn-test/bookworm}"
if [ ! -e "$CAIRN_TEST_IMAGE/.complete" ]; then
  echo "== building the machine image in $CAIRN_TEST_IMAGE"
  tests/machine/build-image.sh "$CAIRN_TEST_IMAGE"
fi

echo "== building the agent"
cargo build --locked -p cairn-agent
target="${CARGO_TARGET_DIR:-target}"
export CAIRN_AGENT_BIN="$PWD/$target/debug/cairn-agent"
case "$target" in /*) CAIRN_AGENT_BIN="$target/debug/cairn-agent" ;; esac

echo "== running the benchmark"
exec cargo run --locked -q -p cairn-e2e --bin bench-packages -- "$@"
