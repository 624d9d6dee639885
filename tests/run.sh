#!/usr/bin/env bash
# The test command (README): installs what the tests need on a fresh Debian machine,
# builds the binary and runs every test. Needs root (namespaces, TUN devices).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in iperf3:iperf3 wireguard-go:wireguard-go wg:wireguard-tools ping:iputils-ping \
            ip:iproute2 nc:netcat-openbsd socat:socat nft:nftables dig:dnsutils \
            pip3:python3-pip zstd:zstd dnsmasq:dnsmasq-base setpriv:util-linux openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Tests that skip when a precondition is missing (root, a CPU with AVX-512 IFMA) fail
# instead when CI is set, as CI services do; RINGSCALE_REQUIRE_ALL_TESTS=1 asks the same
# anywhere, =0 allows the skips even in CI.

# Runs ignored tests by exact name: cargo args, `--`, then the tests' full names. Fails if
# one of them is not there (renamed, moved, no longer ignored), which a filter matching
# nothing would hide.
run_ignored() {
  local cargo_args=() names=() listed name
  while [ "$1" != -- ]; do cargo_args+=("$1"); shift; done
  shift
  names=("$@")
  listed=$(cargo test "${cargo_args[@]}" -- --ignored --exact --list "${names[@]}")
  for name in "${names[@]}"; do
    grep -qxF "$name: test" <<<"$listed" || { echo "tests/run.sh: no ignored test $name" >&2; exit 1; }
  done
  cargo test "${cargo_args[@]}" -- --ignored --exact "${names[@]}"
}

cargo build -p ringscale
cargo test --workspace -- --test-threads="${TEST_THREADS:-2}"

# Ignored in a plain `cargo test` because they need root (the crate's other tests do not).
run_ignored -p ringscale-dataplane --lib -- \
  offload::kernel_tests::kernel_agrees_with_segmentation_and_coalescing \
  worker::tests::tun_queue_reads_what_is_queued_without_waiting

# The vendored boringtun's own tests (it is outside the workspace), with the real clock and
# with the mock clock its timer tests need. Its own target directory: its profile differs
# from the workspace's, and sharing one would rebuild the common dependencies each time.
for features in "" mock-instant; do
  cargo test --manifest-path third_party/boringtun/Cargo.toml --target-dir target/boringtun \
    --features "$features"
done
