# shellcheck shell=bash
# Shared helpers for the packaging scripts (sourced, not run).
#
# Everything here installs what a fresh Debian 12 machine lacks, and only that: apt
# packages when their command is missing, rustup targets when not installed.

# Stop on errors in the sourcing script too.
set -euo pipefail

# The repository root, whatever directory the script was started from.
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Prints a step heading, so CI logs read as a sequence of named steps.
step() { printf '\n==> %s\n' "$*"; }

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# The Rust target triple for an architecture name (the names Docker and uname use both work).
triple_for() {
  case "$1" in
    x86_64 | amd64) echo x86_64-unknown-linux-musl ;;
    aarch64 | arm64) echo aarch64-unknown-linux-musl ;;
    *) die "unknown architecture '$1' (want x86_64 or aarch64)" ;;
  esac
}

# Docker's name for an architecture (TARGETARCH), used for image tags and build contexts.
docker_arch() {
  case "$1" in
    x86_64 | amd64) echo amd64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) die "unknown architecture '$1'" ;;
  esac
}

# Installs Debian packages, as root or through sudo; `apt-get update` once per run.
_apt_updated=
apt_install() {
  local sudo=
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: $*"
    sudo=sudo
  fi
  command -v apt-get >/dev/null 2>&1 || die "not a Debian-like system; install by hand: $*"
  echo "installing (apt): $*"
  if [ -z "$_apt_updated" ]; then
    $sudo apt-get update -qq
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# apt_need COMMAND PACKAGE...: installs PACKAGE(s) unless COMMAND is already on PATH.
apt_need() {
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null 2>&1 || apt_install "$@"
}

# Adds a rustup target unless it is installed already.
rust_target_need() {
  local triple=$1
  if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
    echo "installing (rustup): target $triple"
    rustup target add "$triple"
  fi
}

# What a release build for one architecture needs: the Rust target (with its bundled musl
# and rust-lld) and a C compiler for ring (.cargo/config.toml says why these).
cross_tools_need() {
  local triple
  triple=$(triple_for "$1")
  command -v rustup >/dev/null 2>&1 || die "rustup not found (https://rustup.rs)"
  rust_target_need "$triple"
  case "$triple" in
    x86_64-*) apt_need musl-gcc musl-tools ;;
    aarch64-*) apt_need aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu libc6-dev-arm64-cross ;;
  esac
}

# qemu-user for running aarch64 binaries on another host (a no-op on an aarch64 host).
qemu_need() {
  [ "$(uname -m)" = aarch64 ] && return 0
  apt_need qemu-aarch64-static qemu-user-static
}

# cargo's target directory (honours CARGO_TARGET_DIR and .cargo/config.toml).
target_dir() {
  cargo metadata --format-version 1 --no-deps --manifest-path "$REPO_ROOT/Cargo.toml" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

# Where the release binary for an architecture lands.
release_binary() {
  echo "$(target_dir)/$(triple_for "$1")/release/ringscale"
}
