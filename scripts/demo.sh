#!/usr/bin/env bash
# The main job, the whole story on one machine: start a Cairn server with
# embedded storage, push recipes/web and promote it, make a join token, then
# boot a fresh Debian machine (systemd and real cloud-init in systemd-nspawn)
# with nothing but the user-data of docs/cloud-init.md: it installs the static
# agent, enrolls, converges recipes/web and reports; the server's node list
# and the first report are printed. As root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup.sh

export CAIRN_TEST_IMAGE="${CAIRN_TEST_IMAGE:-/var/cache/cairn-test/bookworm}"
export CAIRN_TEST_CLOUD_INIT_IMAGE="${CAIRN_TEST_CLOUD_INIT_IMAGE:-$CAIRN_TEST_IMAGE-cloud-init}"
echo "== building, and preparing the machine images (cached in $(dirname "$CAIRN_TEST_IMAGE"))"
image_log=$(mktemp)
# As the test command does: the images build (or are found cached) while the
# code compiles, the base one, then the one with cloud-init made from it.
{
  tests/machine/build-image.sh "$CAIRN_TEST_IMAGE" &&
    tests/machine/build-cloud-init-image.sh "$CAIRN_TEST_IMAGE" "$CAIRN_TEST_CLOUD_INIT_IMAGE"
} >"$image_log" 2>&1 &
image_pid=$!
cargo build --locked --bins
# The statically linked agent the machine downloads at first boot.
CAIRN_STATIC_AGENT_BIN=$(scripts/build-static-agent.sh)
export CAIRN_STATIC_AGENT_BIN
if ! wait "$image_pid"; then
  cat "$image_log"
  echo "demo: building the machine images failed" >&2
  exit 1
fi
rm -f "$image_log"

echo
"${CARGO_TARGET_DIR:-target}/debug/demo" "$@"
