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

# shellcheck source=scripts/isolated-apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/isolated-apt.sh"
candidate() { isolated_apt_candidate "$WHICH" "^($MIN)"; }

version=$(candidate)
if [ -z "$version" ]; then
    isolated_apt_update
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
