#!/usr/bin/env bash
# Type-checks the `ringscale` binary crate (code and tests) with every feature set CI
# promises: the default set, the minimal set (--no-default-features), and each feature
# alone. A trimmed build must never lose something another feature relies on, so a
# feature that needs another declares it in cli/Cargo.toml and this matrix proves it.
#
#   packaging/feature-matrix.sh [TARGET]     (default: aarch64-unknown-linux-musl)
#
# The shipping target by default, because musl and aarch64 differ from the host in libc
# types (ioctl request, msg_controllen, c_char) that only show up when compiling for them.
# Warnings are errors: code that is dead without a feature must be cfg'd out with it.
set -euo pipefail
# shellcheck source=packaging/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

target=${1:-aarch64-unknown-linux-musl}
case "$target" in
  x86_64-unknown-linux-musl) cross_tools_need x86_64 ;;
  aarch64-unknown-linux-musl) cross_tools_need aarch64 ;;
esac

# Feature names from cli/Cargo.toml's [features] table (keys up to the next table).
mapfile -t features < <(awk '
  /^\[/ { in_features = ($0 == "[features]"); next }
  in_features && /^[A-Za-z0-9_-]+[ \t]*=/ { sub(/[ \t]*=.*/, ""); if ($0 != "default") print }
' cli/Cargo.toml)
[ ${#features[@]} -gt 0 ] || die "no features found in cli/Cargo.toml"

sets=("default:" "minimal:--no-default-features")
for f in "${features[@]}"; do
  sets+=("$f alone:--no-default-features --features $f")
done

failed=()
for entry in "${sets[@]}"; do
  name=${entry%%:*}
  flags=${entry#*:}
  step "feature set: $name ($target${flags:+, $flags})"
  # shellcheck disable=SC2086 # flags are deliberately split into words
  if ! RUSTFLAGS="${RUSTFLAGS:-} -D warnings" \
    cargo check -q -p ringscale --all-targets --target "$target" $flags; then
    failed+=("$name")
  fi
done

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "feature matrix: FAILED for: ${failed[*]}"
  exit 1
fi
names=("${sets[@]%%:*}")
list=$(printf '%s, ' "${names[@]}")
echo "feature matrix: ok (${#sets[@]} sets: ${list%, })"
