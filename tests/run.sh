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

cargo build -p ringscale
cargo test --workspace -- --test-threads="${TEST_THREADS:-2}"
