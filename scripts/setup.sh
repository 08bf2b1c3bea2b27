#!/usr/bin/env bash
# Installs what building and testing Cairn needs on a Debian machine (as root).
# Idempotent and quick when everything is already there. Sourced by the other
# scripts, so the PATH it sets (rustup's ~/.cargo/bin first) is theirs too.
set -euo pipefail

# rust_version_at_least HAVE WANT: whether Rust version HAVE (1.63.0,
# 1.95.0-nightly) is WANT (1.89, 1.89.1) or later. A pre-release counts as
# its release; missing parts count as 0.
rust_version_at_least() {
  local have=${1%%[-+]*} want=${2%%[-+]*} i h w
  local -a hs ws
  IFS=. read -ra hs <<<"$have"
  IFS=. read -ra ws <<<"$want"
  for i in 0 1 2; do
    h=${hs[i]:-0} w=${ws[i]:-0}
    [[ $h =~ ^[0-9]+$ && $w =~ ^[0-9]+$ ]] || return 1
    if ((10#$h != 10#$w)); then
      return $((10#$h > 10#$w ? 0 : 1))
    fi
  done
  return 0
}

# The version of the `cargo` on PATH ("cargo 1.63.0 (fd9c4297c 2022-09-12)"
# → 1.63.0); nothing when there is none.
cargo_version() {
  local out
  out=$(cargo --version 2>/dev/null) || return 0
  out=${out#cargo }
  printf '%s\n' "${out%% *}"
}

# The `rust-version` that the Cargo.toml at $1 declares.
workspace_rust_version() {
  sed -n 's/^rust-version *= *"\([^"]*\)".*/\1/p' "$1" | head -n 1
}

# Whether the cargo on PATH is Rust $1 or later.
cargo_is_recent() {
  local have
  have=$(cargo_version)
  [ -n "$have" ] && rust_version_at_least "$have" "$1"
}

# The tests load the functions above and run nothing.
if [ -n "${CAIRN_SETUP_FUNCTIONS_ONLY:-}" ]; then
  # shellcheck disable=SC2317 # exit when run rather than sourced
  return 0 2>/dev/null || exit 0
fi

# postgresql: the storage tests start their own throwaway clusters with its
# binaries (initdb, pg_ctl); the cluster the package makes is not used.
# chromium, chromium-driver: the dashboard's tests drive a headless browser.
packages=(build-essential pkg-config protobuf-compiler debootstrap systemd-container curl ca-certificates python3 file postgresql chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

rust_wanted=$(workspace_rust_version "$(dirname "${BASH_SOURCE[0]}")/../Cargo.toml")
if [ -z "$rust_wanted" ]; then
  echo "setup: Cargo.toml declares no rust-version" >&2
  exit 1
fi
if ! cargo_is_recent "$rust_wanted" && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! cargo_is_recent "$rust_wanted"; then
  # Debian's packaged cargo is older than the workspace needs; rustup's stable
  # toolchain, first on PATH, is the standard way.
  cargo_found=$(cargo_version)
  echo "setup: the workspace needs Rust $rust_wanted, found ${cargo_found:+cargo }${cargo_found:-no cargo}: installing Rust with rustup"
  if [ -x "$HOME/.cargo/bin/rustup" ]; then
    "$HOME/.cargo/bin/rustup" toolchain install stable --profile minimal -c clippy,rustfmt
    "$HOME/.cargo/bin/rustup" default stable
  else
    # -y also installs next to a packaged Rust, which stays in /usr/bin.
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! cargo_is_recent "$rust_wanted"; then
    echo "setup: cargo $(cargo_version) from rustup is still older than Rust $rust_wanted" >&2
    exit 1
  fi
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
