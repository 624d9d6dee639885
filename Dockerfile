# ringscale container image: the static binary and nothing else.
#
# The build context is NOT this repository: packaging/image.sh stages one (under
# target/image/context) from binaries built with packaging/build.sh, because a builder
# image cannot be pulled offline and the binary is static anyway. The context holds:
#
#   rootfs-amd64/  rootfs-arm64/   per TARGETARCH: usr/local/bin/ringscale plus the
#                                  tailscale and tailscaled links to it, and the empty
#                                  directories the daemon expects (scratch has no mkdir)
#   ca-certificates.crt            the host's CA bundle, for TLS to control and DERP
#
#   podman build --platform linux/arm64 -f Dockerfile target/image/context
#
# FROM scratch: no shell, no libc, no package manager; nothing to patch but ringscale.
FROM scratch
ARG TARGETARCH
COPY rootfs-${TARGETARCH}/ /
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PATH=/usr/local/bin
# Node keys and prefs; the daemon writes here only when they change (never logs or caches).
VOLUME /var/lib/tailscale
ENTRYPOINT ["/usr/local/bin/tailscaled"]
CMD ["--statedir=/var/lib/tailscale"]
