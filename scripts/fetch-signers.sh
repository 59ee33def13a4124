#!/usr/bin/env bash
# Fetch signing clients (Debian sid's static builds; tests/integration/test_signing.py runs cosign) into a cache
# directory, without touching the system's apt sources or installed packages: an isolated apt state
# downloads the .debs, dpkg-deb -x unpacks them (as fetch-docker.sh does for Docker 28).
#
#   fetch-signers.sh cosign     sid's cosign 3 (sigstore bundles, key-based signing without a log)
#   fetch-signers.sh notation   sid's notation 1.3 (Notary Project signatures; dogestry does not check them yet)
#
# Prints the path of the unpacked binary on stdout. Idempotent: a second run only prints the path.
# Exit status non-zero (message on stderr) when the download fails.
#
# Environment: DOGESTRY_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/dogestry).
set -euo pipefail

WHICH=${1:?usage: fetch-signers.sh cosign|notation}
case $WHICH in
    cosign) MIN='3|[4-9]' ;;
    notation) MIN='1\.[3-9]|[2-9]' ;;
    *) echo "fetch-signers: unknown client $WHICH (cosign or notation)" >&2; exit 2 ;;
esac
SUITE=sid
CACHE=${DOGESTRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dogestry}
DEST=$CACHE/$WHICH
BINARY=$DEST/usr/bin/$WHICH

log() { echo "fetch-signers: $*" >&2; }

if [ -x "$BINARY" ] && "$BINARY" version >/dev/null 2>&1; then
    echo "$BINARY"
    exit 0
fi

for tool in apt-get apt-cache dpkg-deb; do
    command -v "$tool" >/dev/null || { log "$tool not found: need a Debian-like system"; exit 1; }
done

# The Debian mirror this machine already uses (first non-security .../debian URI), else the default.
mirror=$(grep -rhoE '^[[:space:]]*(deb|URIs:)[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
             /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
         | grep -oE 'https?://[^[:space:]]+' | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}

# The same isolated sid state as fetch-docker.sh 28: one index download serves both.
APT=$CACHE/apt-$SUITE
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE"
echo "deb $mirror $SUITE main" > "$APT/sources.list"
opts=(-q -o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o APT::Sandbox::User=root)

candidate() {
    apt-cache "${opts[@]}" madison "$WHICH" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' \
        | grep -E "^($MIN)" | head -n1 || true
}

version=$(candidate)
if [ -z "$version" ]; then
    log "updating an isolated apt index for $SUITE from $mirror"
    if ! apt-get "${opts[@]}" update >"$APT/update.log" 2>&1; then
        log "apt-get update of the isolated $SUITE index failed:"; tail -n5 "$APT/update.log" >&2; exit 1
    fi
    version=$(candidate)
fi
[ -n "$version" ] || { log "no suitable $WHICH in $SUITE at $mirror"; exit 1; }

work=$(mktemp -d "$CACHE/.$WHICH.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "downloading $WHICH=$version"
if ! (cd "$work" && apt-get "${opts[@]}" download "$WHICH=$version" >"$work/download.log" 2>&1); then
    # an index older than the mirror names a .deb the mirror no longer has: refresh it once
    apt-get "${opts[@]}" update >"$APT/update.log" 2>&1 || true
    version=$(candidate)
    if [ -z "$version" ] || ! (cd "$work" && apt-get "${opts[@]}" download "$WHICH=$version" >"$work/download.log" 2>&1); then
        log "apt-get download $WHICH failed:"; tail -n5 "$work/download.log" >&2; exit 1
    fi
fi
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
"$work/root/usr/bin/$WHICH" version >/dev/null
rm -rf "$DEST"
mv "$work/root" "$DEST"
echo "$version" > "$DEST/VERSION"
log "unpacked $WHICH $version into $DEST"
echo "$BINARY"
