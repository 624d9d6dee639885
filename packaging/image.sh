#!/usr/bin/env bash
# Builds the container image for linux/amd64 and linux/arm64 from the one Dockerfile,
# offline, and runs each: `tailscale version` and `tailscaled --help` inside the image.
#
#   packaging/image.sh [cargo feature flags...]
#
# Uses podman (Debian `podman`; installed if missing). Nothing is pulled: the image is
# FROM scratch, and the binaries come from packaging/build.sh. The arm64 image runs
# through qemu-user via binfmt_misc, registered here if the kernel allows it; where it
# cannot be, the arm64 run is reported as skipped (the image is still built and
# packaging/qemu-test.sh still runs the arm64 binary itself).
#
# Tags: localhost/ringscale:<version>-<arch>, and a manifest list localhost/ringscale:<version>.
set -euo pipefail
# shellcheck source=packaging/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

arches=(x86_64 aarch64)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || die "no workspace version in Cargo.toml"
image=localhost/ringscale

apt_need podman podman
[ -r /etc/ssl/certs/ca-certificates.crt ] || apt_install ca-certificates

"$REPO_ROOT/packaging/build.sh" all "$@"

step "staging the build context"
ctx=$(target_dir)/image/context
rm -rf "$ctx"
mkdir -p "$ctx"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
for a in "${arches[@]}"; do
  root="$ctx/rootfs-$(docker_arch "$a")"
  mkdir -p "$root/usr/local/bin" "$root/var/lib/tailscale" "$root/var/run/tailscale"
  install -d -m 1777 "$root/tmp"
  install -m 755 "$(release_binary "$a")" "$root/usr/local/bin/ringscale"
  ln -s ringscale "$root/usr/local/bin/tailscale"
  ln -s ringscale "$root/usr/local/bin/tailscaled"
done
du -sh --apparent-size "$ctx"/* | sed 's/^/  /'

# Registers qemu-aarch64 with binfmt_misc (the F flag makes the kernel keep the
# interpreter open, so it works inside the container's root). Returns 1 if impossible.
arm64_binfmt() {
  [ "$(uname -m)" = aarch64 ] && return 0
  qemu_need
  local dir=/proc/sys/fs/binfmt_misc
  [ -e "$dir/qemu-aarch64" ] && return 0
  [ -e "$dir/register" ] || mount -t binfmt_misc binfmt_misc "$dir" 2>/dev/null || return 1
  [ -e "$dir/qemu-aarch64" ] && return 0
  local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -r "$conf" ] || return 1
  grep -v '^#' "$conf" >"$dir/register" 2>/dev/null || return 1
  [ -e "$dir/qemu-aarch64" ]
}

# How to run containers on this host. Two things differ between a plain Debian host and
# a sandboxed one such as this CI VM, and both are detected rather than assumed:
# - crun (podman's default) refuses hosts with cgroup v1 controllers mounted ("hybrid
#   mode"); runc handles them, so it is installed and used there;
# - a root without CAP_SYS_RESOURCE cannot raise RLIMIT_NOFILE/NPROC to podman's
#   defaults, so the container gets explicit limits no higher than the caller's own.
podman_cmd=(podman)
if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ]; then
  apt_need runc runc
  podman_cmd=(podman --runtime runc)
fi
nproc_limit=$(ulimit -Hu)
[ "$nproc_limit" = unlimited ] || [ "$nproc_limit" -gt 4096 ] && nproc_limit=4096
limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=$nproc_limit:$nproc_limit")

failed=()
sizes=()
for a in "${arches[@]}"; do
  da=$(docker_arch "$a")
  tag="$image:$version-$da"
  step "image for linux/$da: $tag"
  podman build -q --pull=never --network none --platform "linux/$da" -t "$tag" -f Dockerfile "$ctx" >/dev/null
  bytes=$(podman image inspect --format '{{.Size}}' "$tag")
  sizes+=("linux/$da: $bytes bytes")
  echo "image size: $bytes bytes"

  if [ "$da" = arm64 ] && ! arm64_binfmt; then
    echo "SKIPPED running linux/arm64: binfmt_misc is not available on this host"
    continue
  fi
  # --network none: the checks need no network, and no bridge or firewall rule is created.
  run=("${podman_cmd[@]}" run --rm --network none "${limits[@]}" --platform "linux/$da")
  got=$("${run[@]}" --entrypoint /usr/local/bin/tailscale "$tag" version | head -1)
  echo "tailscale version -> $got"
  [ "$got" = "$version" ] || failed+=("linux/$da: tailscale version printed '$got', want '$version'")
  if help=$("${run[@]}" "$tag" --help 2>&1) && grep -q -- '--tun' <<<"$help"; then
    echo "tailscaled --help -> $(grep -c -- '^ *--' <<<"$help") flags listed"
  else
    failed+=("linux/$da: tailscaled --help failed: $(head -3 <<<"$help")")
  fi
done

step "manifest list $image:$version"
podman manifest rm "$image:$version" >/dev/null 2>&1 || true
podman rmi "$image:$version" >/dev/null 2>&1 || true
podman manifest create "$image:$version" >/dev/null
for a in "${arches[@]}"; do
  podman manifest add "$image:$version" "containers-storage:$image:$version-$(docker_arch "$a")" >/dev/null
done
podman manifest inspect "$image:$version" | grep -o '"architecture": *"[a-z0-9]*"' | sed 's/^/  /'

echo
printf 'image size %s\n' "${sizes[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "image: ok"
