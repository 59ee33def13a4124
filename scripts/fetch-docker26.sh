#!/usr/bin/env bash
# Fetch a Docker >= 25 dockerd (Debian trixie's docker.io 26.1.5) into a cache directory, without
# touching the system's apt sources or installed packages: an isolated apt state downloads the
# .deb, dpkg-deb -x unpacks it. It runs beside bookworm's containerd and runc (docker.io's deps).
#
# Prints the path of the unpacked dockerd on stdout. Idempotent: a second run only prints the path.
# Exit status non-zero (with a message on stderr) when the download is impossible.
#
# Environment: DOGESTRY_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/dogestry),
#              DOGESTRY_DOCKER26_VERSION (default 26.1.5+dfsg1-9+deb13u1; binNMUs like +b1 accepted).
set -euo pipefail

CACHE=${DOGESTRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dogestry}
WANT=${DOGESTRY_DOCKER26_VERSION:-26.1.5+dfsg1-9+deb13u1}
DEST=$CACHE/docker26
DOCKERD=$DEST/usr/sbin/dockerd

log() { echo "fetch-docker26: $*" >&2; }

if [ -x "$DOCKERD" ] && "$DOCKERD" --version >/dev/null 2>&1; then
    echo "$DOCKERD"
    exit 0
fi

for tool in apt-get apt-cache dpkg-deb; do
    command -v "$tool" >/dev/null || { log "$tool not found: need a Debian-like system"; exit 1; }
done

# The Debian mirror this machine already uses (first non-security .../debian URI), else the default.
mirror=$(grep -rhoE '(deb|URIs:)[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
             /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
         | grep -oE 'https?://[^[:space:]]+' | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}

APT=$CACHE/apt-trixie
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE"
echo "deb $mirror trixie main" > "$APT/sources.list"
opts=(-q -o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o APT::Sandbox::User=root)

log "updating an isolated apt index for trixie from $mirror"
if ! apt-get "${opts[@]}" update >"$APT/update.log" 2>&1; then
    log "apt-get update of the isolated trixie index failed:"; tail -n5 "$APT/update.log" >&2; exit 1
fi

# The wanted version, or a rebuild of it (+bN), or else whatever >= 25 trixie carries now.
versions=$(apt-cache "${opts[@]}" madison docker.io 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}')
version=$(printf '%s\n' "$versions" | grep -xF "$WANT" | head -n1 || true)
[ -n "$version" ] || version=$(printf '%s\n' "$versions" | grep -E "^$(printf '%s' "$WANT" | sed 's/[.+]/\\&/g')\+b[0-9]+$" | head -n1 || true)
[ -n "$version" ] || version=$(printf '%s\n' "$versions" | grep -E '^(2[5-9]|[3-9][0-9])\.' | head -n1 || true)
if [ -z "$version" ]; then
    log "no docker.io >= 25 in trixie at $mirror (saw: ${versions//$'\n'/ })"; exit 1
fi

work=$(mktemp -d "$CACHE/.docker26.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "downloading docker.io=$version"
if ! (cd "$work" && apt-get "${opts[@]}" download "docker.io=$version" >"$work/download.log" 2>&1); then
    log "apt-get download docker.io=$version failed:"; tail -n5 "$work/download.log" >&2; exit 1
fi
dpkg-deb -x "$work"/docker.io_*.deb "$work/root"
"$work/root/usr/sbin/dockerd" --version >/dev/null
rm -rf "$DEST"
mv "$work/root" "$DEST"
echo "$version" > "$DEST/VERSION"
log "unpacked $("$DOCKERD" --version) into $DEST"
echo "$DOCKERD"
