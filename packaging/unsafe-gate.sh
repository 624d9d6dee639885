#!/usr/bin/env bash
# The unsafe gate: `unsafe` code lives only in the crates made for it, where it is
# reviewed as such (the system-call wrappers and the AVX-512 cipher); every other crate
# cannot contain any. Two checks, each with its own message:
#
#   1. no Rust source outside the allowed directories uses the `unsafe` keyword (a
#      textual check, so it also covers tests, examples and crates added later), except
#      the few allowed files, and there only on lines of the one kind allowed;
#   2. every other crate's roots (src/lib.rs, src/main.rs, src/bin/*) carry
#      `#![forbid(unsafe_code)]`, so that the compiler enforces it too, including unsafe
#      code a macro expands to, which no grep sees (the root holding an allowed file's
#      module carries `#![deny(unsafe_code)]`, its one `allow` being on that module).
#
# The vendored third_party/ (upstream's code, not ours) and target/ are not looked at.
#
#   packaging/unsafe-gate.sh     exit 0: clean; 1: lists what breaks the rule
set -euo pipefail
cd "$(dirname "$0")/.."

# Directories (from the repository root, with a trailing slash) whose code may be unsafe.
allowed_dirs=(dataplane/sys/ dataplane/aead/)

# Single files outside those directories that may be unsafe, each for a stated reason,
# as "PATH|REGEX": every line of PATH with `unsafe` must match the (grep -E) REGEX.
allowed_files=(
  # io_uring's submission push: the kernel uses the memory an entry points at until
  # its completion, which only the worker owning those buffers and headers can promise.
  'dataplane/src/uring.rs|unsafe \{ ring\.submission\(\)\.push\('
)

# Crate roots that carry `#![deny(unsafe_code)]` instead of `forbid`, because a module
# of an allowed file above must `#[allow(unsafe_code)]` (only that module).
deny_roots=(
  # `#[allow(unsafe_code)] pub mod uring;` (see allowed_files).
  dataplane/src/lib.rs
)

is_allowed() {
  local path=$1 dir
  for dir in "${allowed_dirs[@]}"; do
    [[ $path == "$dir"* ]] && return 0
  done
  return 1
}

# The REGEX of PATH's allowed_files entry; fails for a file not listed.
allowed_lines() {
  local path=$1 entry
  for entry in "${allowed_files[@]}"; do
    [[ $path == "${entry%%|*}" ]] && echo "${entry#*|}" && return 0
  done
  return 1
}

is_deny_root() {
  local path=$1 root
  for root in "${deny_roots[@]}"; do
    [[ $path == "$root" ]] && return 0
  done
  return 1
}

# Our files named NAME (a find -name pattern), as paths from the repository root.
our_files() {
  find . \( -name target -o -name third_party -o -name .git \) -prune -o \
    -type f -name "$1" -print | sed 's#^\./##' | sort
}

# The lines of a Rust file that use the `unsafe` keyword, as "LINE: TEXT". As well as a
# line-wise look can: string literals are blanked first (a message may say "unsafe"),
# then comments (`//` to the end of the line, so doc comments too) are cut off. The
# lint names `unsafe_code`, `unsafe_op_in_unsafe_fn` are other words and do not match.
unsafe_lines() {
  sed -E 's/"([^"\\]|\\.)*"/""/g; s#//.*##' "$1" | grep -nE '(^|[^[:alnum:]_])unsafe($|[^[:alnum:]_])' |
    sed -E 's/^([0-9]+):[[:space:]]*/\1: /'
}

failed=0

# 1. The keyword outside the allowed directories.
offending=()
while IFS= read -r file; do
  is_allowed "$file" && continue
  lines=$(unsafe_lines "$file") || continue
  if pattern=$(allowed_lines "$file"); then
    lines=$(grep -vE "$pattern" <<<"$lines") || continue
  fi
  count=$(wc -l <<<"$lines")
  offending+=("$file ($count line$([ "$count" = 1 ] || echo s))")
  while IFS= read -r line; do offending+=("    $line"); done <<<"$lines"
done < <(our_files '*.rs')
if [ ${#offending[@]} -gt 0 ]; then
  echo "unsafe-gate: \`unsafe\` outside the allowed directories (${allowed_dirs[*]})"
  echo "  and the lines allowed in: ${allowed_files[*]%%|*}:"
  echo "  move it into one of them behind a safe API, or add the directory to allowed_dirs"
  echo "  in packaging/unsafe-gate.sh if that crate is meant to hold unsafe code:"
  printf '  %s\n' "${offending[@]}"
  failed=1
fi

# 2. #![forbid(unsafe_code)] at every root of every other crate. A crate is a directory
# with a Cargo.toml that has a [package] (the workspace root's is only [workspace]);
# its roots are where Cargo looks by default (no crate here moves them with `path`).
missing=()
while IFS= read -r manifest; do
  grep -q '^\[package\]' "$manifest" || continue
  crate_dir=$(dirname "$manifest")/
  [ "$crate_dir" = ./ ] && crate_dir=
  is_allowed "$crate_dir" && continue
  for root in "${crate_dir}src/lib.rs" "${crate_dir}src/main.rs" "${crate_dir}"src/bin/*.rs \
    "${crate_dir}"src/bin/*/main.rs; do
    [ -f "$root" ] || continue
    if is_deny_root "$root"; then
      grep -qE '^#!\[deny\(([^)]*[ ,])?unsafe_code([ ,][^)]*)?\)\]' "$root" || missing+=("$root")
      continue
    fi
    grep -qE '^#!\[forbid\(([^)]*[ ,])?unsafe_code([ ,][^)]*)?\)\]' "$root" || missing+=("$root")
  done
done < <(our_files Cargo.toml)
if [ ${#missing[@]} -gt 0 ]; then
  echo "unsafe-gate: crate roots without #![forbid(unsafe_code)] (every crate outside"
  echo "  ${allowed_dirs[*]} must carry it, so the compiler refuses unsafe code there too;"
  echo "  ${deny_roots[*]} carry #![deny(unsafe_code)] for the allowed files above):"
  printf '  %s\n' "${missing[@]}"
  failed=1
fi

if [ $failed = 0 ]; then
  echo "unsafe-gate: ok (unsafe code only under ${allowed_dirs[*]} and its allowed lines in ${allowed_files[*]%%|*})"
fi
exit $failed
