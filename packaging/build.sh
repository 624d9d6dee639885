#!/usr/bin/env bash
# Static, stripped release binaries for Linux: x86_64 and aarch64 (musl).
#
#   packaging/build.sh [x86_64|aarch64|all] [cargo feature flags...]
#   e.g. packaging/build.sh aarch64
#        packaging/build.sh all --no-default-features --features tls
#
# Installs what it needs on a fresh Debian machine (rustup targets; musl-tools and
# gcc-aarch64-linux-gnu for ring's C code); links with rust-lld from the Rust toolchain
# (see .cargo/config.toml). The binary lands in target/<triple>/release/ringscale, with the
# linker's map beside it (ringscale.map: where every byte comes from, read by
# packaging/size-gate.sh). The release profile in Cargo.toml says how it is optimised.
set -euo pipefail
# shellcheck source=packaging/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

arch=all
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  arch=$1
  shift
fi
case "$arch" in
  all) arches=(x86_64 aarch64) ;;
  *) arches=("$arch") ;;
esac

for a in "${arches[@]}"; do
  triple=$(triple_for "$a")
  cross_tools_need "$a"
  out=$(release_binary "$a")
  step "release build for $triple ${*:-(default features)}"
  # `cargo rustc` so the map flag reaches only the final link (not every crate's flags,
  # which would rebuild everything). Same invocation every time, so no spurious rebuilds.
  cargo rustc --release -p ringscale --bin ringscale --target "$triple" "$@" \
    -- -C "link-arg=-Map=$out.map"
  printf '%s: %s bytes\n' "$out" "$(stat -c %s "$out")"
done
