#!/usr/bin/env bash
# Build the image molecule's instances run: a fresh Debian bookworm with systemd as PID 1 and python3
# (with none of the libraries the dogestry modules need: the accelerator role installs them),
# made here with debootstrap from the Debian mirror this machine uses (no registry is reachable).
# Cached by a tag derived from this file, so a second run is instant. Prints the image name.
#
# Run it under the same DOCKER_HOST molecule uses. Needs root (debootstrap) and about a minute.
set -euo pipefail

TAG=dogestry-molecule-debian:bookworm-$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG"
    exit 0
fi

log() { echo "build-image: $*" >&2; }
command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    { apt-get -q update && apt-get -q install -y --no-install-recommends debootstrap; } >/dev/null 2>&1 \
        || { log "apt-get install debootstrap failed"; exit 1; }
}
mirror=$(grep -rhoE '^[[:space:]]*(deb|URIs:)[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
             /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | grep -oE 'https?://[^[:space:]]+' | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "debootstrap bookworm from $mirror (about a minute)"
debootstrap --variant=minbase --include=systemd,systemd-sysv,python3,python3-apt,iproute2,ca-certificates,procps \
    bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
tar -C "$work/root" -c . | docker import - "$TAG-rootfs" >/dev/null
# systemd stops on SIGRTMIN+3; `docker import -c STOPSIGNAL` is refused, a two-line build is not.
printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\nCMD ["/sbin/init"]\n' "$TAG-rootfs" > "$work/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q --network none -t "$TAG" "$work" >/dev/null
docker rmi "$TAG-rootfs" >/dev/null 2>&1 || true
echo "$TAG"
