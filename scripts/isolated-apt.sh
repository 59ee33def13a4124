# shellcheck shell=bash
# Sourced by fetch-docker.sh and fetch-signers.sh: an apt state of its own for one Debian suite, kept in
# the cache, so that .debs of a newer suite can be downloaded without touching the system's apt sources
# or installed packages (dpkg-deb -x unpacks them).
#
# Needs SUITE, CACHE and a log function. Sets mirror, APT and opts (the options every apt-get and
# apt-cache call takes); defines isolated_apt_update and isolated_apt_candidate PACKAGE VERSION_REGEX.

for tool in apt-get apt-cache dpkg-deb; do
    command -v "$tool" >/dev/null || { log "$tool not found: need a Debian-like system"; exit 1; }
done

# The Debian mirror this machine already uses (first non-security .../debian URI), else the default.
mirror=$(grep -rhoE '^[[:space:]]*(deb|URIs:)[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
             /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
         | grep -oE 'https?://[^[:space:]]+' | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}

# One state per suite: Docker 28 and the signing clients, both from sid, share one index download.
APT=$CACHE/apt-$SUITE
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE"
echo "deb $mirror $SUITE main" > "$APT/sources.list"
opts=(-q -o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o APT::Sandbox::User=root)

isolated_apt_update() {
    log "updating an isolated apt index for $SUITE from $mirror"
    if ! apt-get "${opts[@]}" update >"$APT/update.log" 2>&1; then
        log "apt-get update of the isolated $SUITE index failed:"; tail -n5 "$APT/update.log" >&2; exit 1
    fi
}

# The newest version of PACKAGE the index has whose version matches VERSION_REGEX, or nothing.
isolated_apt_candidate() {
    apt-cache "${opts[@]}" madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' \
        | grep -E "$2" | head -n1 || true
}
