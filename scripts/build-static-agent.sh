#!/usr/bin/env bash
# Builds the statically linked agent, one binary that runs on any x86-64
# Linux: glibc linked in (`-C target-feature=+crt-static`) on the gnu target,
# so no musl toolchain is needed. `--target` keeps build scripts and
# proc-macros (which must stay dynamic) out of the static flag. `--release`
# builds the agent as shipped: the `agent-release` profile (Cargo.toml), made
# for size, which is what an idle daemon's memory is mostly made of.
#
#   scripts/build-static-agent.sh [--release]
#
# Prints the absolute path of the binary: target/x86_64-unknown-linux-gnu/{debug,agent-release}/cairn-agent
# (under CARGO_TARGET_DIR when set).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu
profile=debug
args=()
case ${1:-} in
  --release) profile=agent-release; args+=(--profile agent-release) ;;
  "") ;;
  *) echo "usage: $0 [--release]" >&2; exit 2 ;;
esac

RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
  cargo build --locked -p cairn-agent --bin cairn-agent --target "$TARGET" "${args[@]}" >&2
bin="${CARGO_TARGET_DIR:-target}/$TARGET/$profile/cairn-agent"
[ -x "$bin" ] || { echo "build-static-agent: $bin was not built" >&2; exit 1; }
realpath "$bin"
