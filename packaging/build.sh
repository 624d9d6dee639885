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
# linker's map of that build beside it (ringscale.map: where every byte comes from, read
# by packaging/size-gate.sh). The release profile in Cargo.toml says how it is optimised;
# the link leaves out the unwind tables (packaging/no-unwind-tables.ld).
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

# The release binary is linked without unwind tables (packaging/no-unwind-tables.ld),
# which is only right while a panic aborts instead of unwinding.
release_profile=$(awk '/^\[/ { in_release = ($0 == "[profile.release]"); next } in_release' Cargo.toml)
grep -Eq '^panic[[:space:]]*=[[:space:]]*"abort"' <<<"$release_profile" ||
  die "[profile.release] in Cargo.toml lacks panic = \"abort\": packaging/no-unwind-tables.ld would break unwinding; drop it from this script first"

for a in "${arches[@]}"; do
  triple=$(triple_for "$a")
  cross_tools_need "$a"
  out=$(release_binary "$a")
  step "release build for $triple ${*:-(default features)}"
  # `cargo rustc` so the link flags reach only the final link (not every crate's flags,
  # which would rebuild everything). Same invocation every time, so no spurious rebuilds.
  # The map: where the bytes go (size-gate.sh). The script: no unwind tables, which the
  # panic=abort check above makes safe (packaging/no-unwind-tables.ld says why).
  # One map per feature set: cargo keeps a binary per set and relinks only when it
  # changed, so a shared map file would describe whichever set was linked last.
  map="$out.$(printf '%s\n' "$@" | md5sum | cut -c1-12).map"
  link=(-C "link-arg=-Map=$map" -C "link-arg=-T$REPO_ROOT/packaging/no-unwind-tables.ld")
  case "$triple" in
    # A static-pie (Rust's x86_64 musl default; aarch64 musl links a plain static
    # executable): its 4,660 relative relocations as a RELR bitmap, 1.5 KB instead of
    # 112 KB of .rela.dyn (3,518,000 -> 3,407,376 B at 21c89cf). The binary applies them
    # itself at start (musl's static-pie start code, rcrt1.o, reads DT_RELR since musl
    # 1.2.4; the Rust target bundles 1.2.5), so this needs nothing from the machine it
    # runs on.
    x86_64-*) link+=(-C "link-arg=-zpack-relative-relocs") ;;
  esac
  cargo rustc --release -p ringscale --bin ringscale --target "$triple" "$@" -- "${link[@]}"
  if [ -f "$map" ]; then
    cp "$map" "$out.map"
  else
    # Only if someone deleted it while cargo kept the binary (no relink, no new map).
    rm -f "$out.map"
    echo "note: no link map for this build; touch cli/src/main.rs and build again for one"
  fi
  printf '%s: %s bytes\n' "$out" "$(stat -c %s "$out")"
done
