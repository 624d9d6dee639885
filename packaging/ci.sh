#!/usr/bin/env bash
# CI for footprint and packaging (issue 9), in order:
#   1. size gate      packaging/size-gate.sh      aarch64 default build within budget
#   2. feature matrix packaging/feature-matrix.sh default, minimal, each feature alone
#   3. arm64 for real packaging/qemu-test.sh      binary + data plane tests under qemu-user
#   4. image          packaging/image.sh          amd64 + arm64 images built and run
# Stops at the first failing step; prints a summary with each step's time.
#
#   packaging/ci.sh
set -euo pipefail
# shellcheck source=packaging/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

steps=(size-gate feature-matrix qemu-test image)
summary=()
start_all=$SECONDS
for s in "${steps[@]}"; do
  printf '\n################ %s ################\n' "$s"
  t0=$SECONDS
  if "$REPO_ROOT/packaging/$s.sh"; then
    summary+=("$(printf '%-16s ok     %4ds' "$s" $((SECONDS - t0)))")
  else
    summary+=("$(printf '%-16s FAILED %4ds' "$s" $((SECONDS - t0)))")
    printf '\n%s\n' "${summary[@]}"
    exit 1
  fi
done
printf '\n################ summary ################\n'
printf '%s\n' "${summary[@]}"
printf 'total %ds\n' $((SECONDS - start_all))
