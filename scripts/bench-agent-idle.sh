#!/usr/bin/env bash
# Idle memory of the agent daemon: a release `cairn-server` on loopback, a
# role of one file pushed and promoted, the agent as shipped (static, the
# `agent-release` profile: scripts/build-static-agent.sh --release; or
# CAIRN_AGENT_BIN) enrolled (its state and the managed file in a temporary
# directory, nothing of the host touched), then `cairn-agent daemon` connected
# to its watch stream; after its first run and CAIRN_BENCH_SECS (default 20)
# of idling, its resident memory (VmRSS, of which anonymous: RssAnon) and peak
# (VmHWM) are printed. As root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/setup.sh

cargo build --release --locked -p cairn-server --bins
bin="${CARGO_TARGET_DIR:-target}/release"
agent="${CAIRN_AGENT_BIN:-$(scripts/build-static-agent.sh --release)}"
secs="${CAIRN_BENCH_SECS:-20}"

dir=$(mktemp -d)
server_pid=""
daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# Two free loopback ports.
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
}
grpc=$(free_port)
http=$(free_port)
url="https://127.0.0.1:$grpc"

mkdir -m 0700 "$dir/server"
"$bin/cairn-server" serve --data-dir "$dir/server" --listen "127.0.0.1:$grpc" \
  --http "127.0.0.1:$http" --name 127.0.0.1 >"$dir/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$http") 2>/dev/null; then break; fi
  sleep 0.1
done

"$bin/cairn-server" operator add bench --role admin --out "$dir/ops.toml" \
  --data-dir "$dir/server" --server "$url" >/dev/null
cairn() { "$bin/cairn" --credentials "$dir/ops.toml" "$@"; }

mkdir "$dir/role"
cat >"$dir/role/role.toml" <<TOML
[role]
name = "idle"

[[file]]
path = "$dir/managed"
content = "managed by the idle benchmark\n"
TOML
cairn role push "$dir/role" -m idle --promote production >/dev/null
token=$(cairn --output json token create --role idle --channel production |
  grep -o '"token": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/')
echo "$token" >"$dir/token"
cat >"$dir/agent.toml" <<TOML
servers = ["$url"]
ca_pin = "$("$bin/cairn-server" ca pin --data-dir "$dir/server")"
state_dir = "$dir/state"
name = "idle-bench"
interval = "30m"
splay = "0s"
TOML
"$agent" enroll --config "$dir/agent.toml" --token-file "$dir/token" >/dev/null

"$agent" daemon --config "$dir/agent.toml" >"$dir/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 300); do
  [ -f "$dir/managed" ] && break
  sleep 0.1
done
[ -f "$dir/managed" ] || { cat "$dir/daemon.log"; echo "bench: the daemon did not converge" >&2; exit 1; }
sleep "$secs"
kill -0 "$daemon_pid" || { cat "$dir/daemon.log"; echo "bench: the daemon exited" >&2; exit 1; }

field() { awk -v f="$1:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$daemon_pid/status"; }
echo "cairn-agent daemon ($("$agent" --version)), idle ${secs} s after its first run, watching:"
echo "| VmRSS MiB | RssAnon MiB | RssFile MiB | VmHWM MiB | threads |"
echo "|---:|---:|---:|---:|---:|"
echo "| $(field VmRSS) | $(field RssAnon) | $(field RssFile) | $(field VmHWM) | $(awk '$1 == "Threads:" { print $2 }' "/proc/$daemon_pid/status") |"
