#!/usr/bin/env bash
# Fetch a newer dockerd than bookworm's into a cache directory, without touching the system's apt
# sources or installed packages: an isolated apt state downloads the .debs, dpkg-deb -x unpacks them.
#
#   fetch-docker.sh 26   Debian trixie's docker.io 26.1.5: runs beside bookworm's containerd and runc
#   fetch-docker.sh 28   Debian sid's docker.io 28.5 and containerd 2.1 (the containerd image store);
#                        sid's runc needs a newer glibc, so bookworm's runc (a docker.io dependency) runs it
#
# Prints the path of the unpacked dockerd on stdout (its containerd is beside it). Idempotent: a
# second run only prints the path. Exit status non-zero (message on stderr) when the download fails.
#
# Environment: DOGESTRY_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/dogestry).
set -euo pipefail

WHICH=${1:?usage: fetch-docker.sh 26|28}
case $WHICH in
    26) SUITE=trixie; PACKAGES=(docker.io); MIN='2[5-9]|[3-9][0-9]' ;;
    28) SUITE=sid; PACKAGES=(docker.io containerd); MIN='2[8-9]|[3-9][0-9]' ;;
    *) echo "fetch-docker: unknown version $WHICH (26 or 28)" >&2; exit 2 ;;
esac
CACHE=${DOGESTRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dogestry}
DEST=$CACHE/docker$WHICH
DOCKERD=$DEST/usr/sbin/dockerd

log() { echo "fetch-docker$WHICH: $*" >&2; }

if [ -x "$DOCKERD" ] && "$DOCKERD" --version >/dev/null 2>&1; then
    echo "$DOCKERD"
    exit 0
fi

# shellcheck source=scripts/isolated-apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/isolated-apt.sh"
isolated_apt_update
version=$(isolated_apt_candidate docker.io "^($MIN)\.")
[ -n "$version" ] || { log "no suitable docker.io in $SUITE at $mirror"; exit 1; }

work=$(mktemp -d "$CACHE/.docker$WHICH.XXXXXX")
trap 'rm -rf "$work"' EXIT
wanted=("docker.io=$version" "${PACKAGES[@]:1}")
log "downloading ${wanted[*]}"
if ! (cd "$work" && apt-get "${opts[@]}" download "${wanted[@]}" >"$work/download.log" 2>&1); then
    log "apt-get download ${wanted[*]} failed:"; tail -n5 "$work/download.log" >&2; exit 1
fi
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
"$work/root/usr/sbin/dockerd" --version >/dev/null
rm -rf "$DEST"
mv "$work/root" "$DEST"
echo "$version" > "$DEST/VERSION"
log "unpacked $("$DOCKERD" --version) into $DEST"
echo "$DOCKERD"
