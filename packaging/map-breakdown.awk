# Where the bytes of a linked binary come from, per crate, read from an lld link map
# (`-Map=FILE`, which packaging/build.sh writes beside every release binary).
#
#   awk -f packaging/map-breakdown.awk [-v top=30] target/<triple>/release/ringscale.map
#
# Why a map and not the symbol table: the release binary is stripped, and rebuilding it
# unstripped for cargo-bloat would mean a second full build in CI. The map names every
# input section that survived garbage collection, with its size, in the stripped binary.
#
# Attribution: Rust code is one LTO object whose sections are named after their function
# or static (`.text._ZN5tokio7runtime...`): the crate is the first path segment of the
# mangled name, or for `<T as Trait>::f` the crate of T. Code that did not go through LTO
# (ring's C and assembly, compiler_builtins, musl's libc.a) is attributed by its archive.
# Inlined code counts toward the function it was inlined into (as with cargo-bloat), and
# anonymous constants (string literals, tables) cannot be attributed at all.

function hex(s,    i, n, c) {
  n = 0
  s = tolower(s)
  for (i = 1; i <= length(s); i++) {
    c = index("0123456789abcdef", substr(s, i, 1))
    if (c == 0) return n
    n = n * 16 + c - 1
  }
  return n
}

# The crate of a v0-mangled Rust symbol (_R...; the standard library is built this way):
# the first crate root, C[s<disambiguator>_]<len><ident>, which in v0 comes before any
# other identifier because paths are written outermost-first.
function rust_v0_crate(sym,    p, len) {
  p = index(sym, "_R")
  if (p == 0) return ""
  sym = substr(sym, p + 2)
  if (!match(sym, /C(s[0-9A-Za-z]*_)?[0-9]+/)) return ""
  sym = substr(sym, RSTART + 1)
  sub(/^s[0-9A-Za-z]*_/, "", sym)
  match(sym, /^[0-9]+/)
  len = substr(sym, 1, RLENGTH) + 0
  return substr(sym, RLENGTH + 1, len)
}

# The crate of a Rust symbol: legacy mangling (_ZN<len><ident>...E) or v0 (_R...).
function rust_crate(sym,    p, len, id) {
  p = index(sym, "_ZN")
  if (p == 0) return rust_v0_crate(sym)
  sym = substr(sym, p + 3)
  if (!match(sym, /^[0-9]+/)) return ""
  len = substr(sym, 1, RLENGTH) + 0
  id = substr(sym, RLENGTH + 1, len)
  # `<T as Trait>` where T is a type parameter or a primitive (`<bool as webpki::der::
  # FromDer>`): the code is the trait's, so count it for the trait's crate.
  # (`<&T as Debug>`, `<[T] as ConstantTimeEq>`: whatever Self is, if it is not a path.)
  p = index(id, "$u20$as$u20$")
  if (id ~ /^_?\$LT\$/ && p > 0 && index(substr(id, 1, p), "..") == 0) id = substr(id, p + 12)
  # `<T as Trait>` / `impl ...` / `&T` / `[T]` / `(A, B)`: take the first path inside.
  while (1) {
    if (sub(/^_?\$LT\$/, "", id)) continue
    if (sub(/^\$(RF|BP|u5b|LP|u20)\$/, "", id)) continue
    if (sub(/^(impl|mut|dyn|const|unsafe|extern|fn)\$u20\$/, "", id)) continue
    if (sub(/^_/, "", id)) continue
    break
  }
  sub(/(\.\.|\$).*/, "", id)
  if (id == "") return ""
  return id
}

function crate_of(file, sect,    c, f) {
  # Sections the linker makes: mostly string literals and constants merged across all
  # inputs (.rodata.str*, .rodata.cst*), then .got, .eh_frame_hdr, .rela.dyn/.relr.dyn.
  if (file ~ /^<internal>/) return "[linker: merged strings/constants, got, relocs]"
  f = file
  sub(/.*\//, "", f)
  if (f ~ /^libc\.a\(/) return "[musl libc]"
  if (f ~ /^libunwind\.a\(/) return "[libunwind]"
  if (f ~ /^(crt1|rcrt1|Scrt1|crti|crtn|crtbegin|crtend|crtbeginS|crtendS)\.o$/) return "[crt objects]"
  if (f ~ /^lib[A-Za-z0-9_]+-[0-9a-f]+\.rlib\(/) {
    # Objects straight from an rlib: non-LTO code (C/asm from build scripts, compiler_builtins).
    c = f
    sub(/^lib/, "", c)
    sub(/-[0-9a-f]+\.rlib\(.*/, "", c)
    if (sect !~ /_ZN/) return c " (C/asm)"
    return c
  }
  c = rust_crate(sect)
  if (c != "") {
    if (c == "core" || c == "alloc" || c == "std" || c == "std_detect" || c == "panic_abort" ||
        c == "rustc_demangle" || c == "addr2line" || c == "gimli" || c == "miniz_oxide" ||
        c == "object")
      return "std (core, alloc, std)"
    return c
  }
  if (sect ~ /^\.eh_frame/) return "[unwind tables: .eh_frame]"
  # aarch64 at opt-level "z": sequences the machine outliner shared between functions.
  if (sect ~ /OUTLINED_FUNCTION_/) return "[machine outliner: shared code]"
  if (sect ~ /\.(main|rust_eh_personality)$/) return "std (core, alloc, std)"
  if (sect ~ /^\.(rodata|data)/) return "[anonymous constants]"
  return "[other: " sect "]"
}

# lld map lines: VMA LMA Size Align, then Out (output section), In (file:(section)) or Symbol.
NR > 1 && NF >= 5 && $1 ~ /^[0-9a-f]+$/ && $3 ~ /^[0-9a-f]+$/ {
  rest = $0
  for (i = 1; i <= 4; i++) sub(/^[ \t]*[^ \t]+/, "", rest)
  sub(/^[ \t]+/, "", rest)
  if (rest ~ /^\./ && index(rest, ":(") == 0) {
    out = rest
    next
  }
  p = index(rest, ":(")
  if (p == 0) next
  # Only what occupies the file: .bss/.tbss take memory, not flash.
  if (out ~ /^\.(bss|tbss)$/) next
  size = hex($3)
  if (size == 0) next
  file = substr(rest, 1, p - 1)
  sect = substr(rest, p + 2)
  sub(/\)$/, "", sect)
  c = crate_of(file, sect)
  bytes[c] += size
  by_section[out] += size
  total += size
}

END {
  if (top == "") top = 30
  n = 0
  for (c in bytes) names[++n] = c
  # Insertion sort by size, largest first (n is small).
  for (i = 2; i <= n; i++) {
    v = names[i]
    for (j = i - 1; j >= 1 && bytes[names[j]] < bytes[v]; j--) names[j + 1] = names[j]
    names[j + 1] = v
  }
  printf "%10s %6s  %s\n", "bytes", "share", "crate (file-backed sections, from the link map)"
  rest_bytes = 0
  for (i = 1; i <= n; i++) {
    if (i <= top) printf "%10d %5.1f%%  %s\n", bytes[names[i]], 100 * bytes[names[i]] / total, names[i]
    else rest_bytes += bytes[names[i]]
  }
  if (n > top) printf "%10d %5.1f%%  (%d more crates)\n", rest_bytes, 100 * rest_bytes / total, n - top
  printf "%10d 100.0%%  total\n\n", total
  printf "%10s  %s\n", "bytes", "output section"
  for (s in by_section) printf "%10d  %s\n", by_section[s], s | "sort -rn"
  close("sort -rn")
}
