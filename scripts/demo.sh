#!/usr/bin/env bash
# The main job: start a Cairn server with embedded storage, push recipes/web to
# it, then boot a fresh Debian machine (systemd in systemd-nspawn) and converge
# recipes/web in it with cairn-agent, printing the report. As root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup.sh

export CAIRN_TEST_IMAGE="${CAIRN_TEST_IMAGE:-/var/cache/cairn-test/bookworm}"
echo "== building (release) and preparing the machine image (cached in $CAIRN_TEST_IMAGE)"
image_log=$(mktemp)
tests/machine/build-image.sh "$CAIRN_TEST_IMAGE" >"$image_log" 2>&1 &
image_pid=$!
cargo build --release --locked --bins
if ! wait "$image_pid"; then
  cat "$image_log"
  exit 1
fi
rm -f "$image_log"

bin=target/release
work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

echo
echo "== cairn-server serve (SQLite in $work/data, TLS with its own CA)"
"$bin/cairn-server" serve --data-dir "$work/data" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  --name 127.0.0.1 --name localhost >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do
  grep -q listening "$work/server.out" 2>/dev/null && break
  sleep 0.1
done
cat "$work/server.out"
grpc=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$work/server.out")
[ -n "$grpc" ] || { cat "$work/server.log"; echo "demo: the server did not start" >&2; exit 1; }

"$bin/cairn-server" operator add demo --role admin --out "$work/admin.toml" \
  --data-dir "$work/data" --server "https://$grpc"
export CAIRN_CREDENTIALS="$work/admin.toml"

echo
echo "== cairn role push recipes/web --promote production"
"$bin/cairn" role push recipes/web -m "demo" --promote production
"$bin/cairn" role list
"$bin/cairn" audit

echo
CAIRN_AGENT_BIN="$PWD/$bin/cairn-agent" "$bin/demo"
