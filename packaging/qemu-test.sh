#!/usr/bin/env bash
# arm64 for real, on any host: runs the aarch64 release binary and the data plane's unit
# tests under qemu-user (Debian `qemu-user-static`, installed if missing).
#
#   packaging/qemu-test.sh
#
# 1. `tailscale version` through a link named tailscale (the argv[0] dispatch), checked
#    against the workspace version;
# 2. `tailscaled --help`, which must list the daemon's flags;
# 3. `cargo test -p ringscale-dataplane -p ringscale-aead -p ringscale-wire -p ringscale-keys --lib` for
#    aarch64-unknown-linux-musl, each test binary run by qemu-aarch64-static (the runner in
#    .cargo/config.toml): the packet core (WireGuard sessions and their ChaCha20-Poly1305,
#    offload segmentation/coalescing, checksums, routing) on arm64.
#    Tests that need root, namespaces or a kernel TUN live in tests/ and run natively.
set -euo pipefail
# shellcheck source=packaging/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

triple=aarch64-unknown-linux-musl
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
cross_tools_need aarch64
qemu_need
run=(qemu-aarch64-static)
[ "$(uname -m)" = aarch64 ] && run=()

"$REPO_ROOT/packaging/build.sh" aarch64
bin=$(release_binary aarch64)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ln -s "$bin" "$tmp/tailscale"
ln -s "$bin" "$tmp/tailscaled"

step "aarch64: tailscale version"
got=$("${run[@]}" "$tmp/tailscale" version | head -1)
echo "$got"
[ "$got" = "$version" ] || die "tailscale version printed '$got', want '$version'"

step "aarch64: tailscaled --help"
help=$("${run[@]}" "$tmp/tailscaled" --help 2>&1) || die "tailscaled --help failed: $help"
grep -q -- '--tun' <<<"$help" || die "tailscaled --help does not list --tun: $help"
echo "$(grep -c -- '^ *--' <<<"$help") flags listed"

step "aarch64: data plane unit tests under qemu-user"
# qemu-user (7.2 in Debian 12) does not implement io_uring_setup (ENOSYS), so the one
# test that requires a working io_uring is skipped here; the fallback path it implies
# (epoll, with the reason logged) is tested by worker::tests and runs under qemu too.
cargo test -p ringscale-dataplane -p ringscale-aead -p ringscale-wire -p ringscale-keys --lib --target "$triple" -- --test-threads=2 \
  --skip uring::tests::probe_succeeds_where_io_uring_works
