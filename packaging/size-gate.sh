#!/usr/bin/env bash
# The size gate: builds the aarch64 musl release binary with the default features and
# fails if it is larger than the budget in packaging/size-budget.txt. Prints the size,
# the headroom, and where the bytes go per crate (from the link map).
#
#   packaging/size-gate.sh
#
# When a change legitimately needs more room, raise the budget in the same change and
# say why in its message; when code is cut, lower it so the room cannot be eaten silently.
set -euo pipefail
# shellcheck source=packaging/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

budget_file=packaging/size-budget.txt
# `key = value` lines; '#' starts a comment; underscores allowed in numbers.
budget_value() {
  sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\([0-9_]*\).*/\1/p" "$budget_file" | tr -d _
}
budget=$(budget_value aarch64_default_bytes)
goal=$(budget_value goal_bytes)
[ -n "$budget" ] || die "no aarch64_default_bytes in $budget_file"

"$REPO_ROOT/packaging/build.sh" aarch64
bin=$(release_binary aarch64)
size=$(stat -c %s "$bin")

step "where the bytes go (aarch64, default features)"
if [ -f "$bin.map" ]; then
  awk -v top="${SIZE_GATE_TOP:-25}" -f packaging/map-breakdown.awk "$bin.map"
else
  echo "(no link map: see packaging/build.sh)"
fi

step "size gate"
mb() { awk -v b="$1" 'BEGIN { printf "%.2f MB", b / 1e6 }'; }
printf '%-44s %9d bytes (%s)\n' "aarch64 release binary, default features:" "$size" "$(mb "$size")"
printf '%-44s %9d bytes (%s)\n' "budget ($budget_file):" "$budget" "$(mb "$budget")"
[ -n "$goal" ] && printf '%-44s %9d bytes (%s)\n' "goal, full router feature set:" "$goal" "$(mb "$goal")"
if [ "$size" -gt "$budget" ]; then
  printf 'FAILED: %d bytes over budget. Cut, or raise the budget in %s and say why.\n' \
    $((size - budget)) "$budget_file"
  exit 1
fi
printf 'ok: %d bytes under budget\n' $((budget - size))
