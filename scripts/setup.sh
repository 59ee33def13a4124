#!/usr/bin/env bash
# Set up everything dogestry's demo and tests need, idempotently, by package name only:
#   - Debian packages: docker.io (dockerd 20.10, containerd, runc), busybox-static (the demo and
#     test images' only binary), git, rsync, iproute2, skopeo (a registry client the accelerator's
#     tests pull with), docker-registry (CNCF distribution 2.8: what benchmarks/registry_bench.py
#     compares with), openssh-server and -client (the fleet test reaches its hosts over SSH) (skipped
#     when all are installed already);
#   - a virtualenv at .venv with requirements.txt + tests/requirements.txt, at the versions of
#     tests/constraints.txt (what the suite last passed with) (skipped when unchanged),
#     and this checkout installed editable into it (.venv/bin/dogestry, from pyproject.toml);
#   - community.docker and ansible.posix for molecule, from the ansible wheel, into .venv/collections;
#   - Docker 26 (trixie) and 28 with containerd 2.1 (sid) unpacked into a cache dir
#     (scripts/fetch-docker.sh 26 and 28; tests start them);
#   - a running dockerd (started in the background when none answers; log in /var/log or /tmp).
# Re-running it when everything is in place takes about a second.
#
# Environment: PYTHON (interpreter for the venv, default python3), DOGESTRY_SKIP_EXTRA_DOCKERS=1,
# DOGESTRY_SETUP_VENV_ONLY=1 (the virtualenv and the dogestry command only: no root, no Docker; what
# the fast tier, scripts/test.sh --fast, needs).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
PYTHON=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive

say() { echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo -n "$@"
    else die "need root (or sudo) for: $*"; fi
}

# --- Debian packages -----------------------------------------------------------------------------
packages=(docker.io busybox-static git rsync iproute2 util-linux ca-certificates shellcheck skopeo docker-registry
          openssh-server openssh-client)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
[ "${DOGESTRY_SETUP_VENV_ONLY:-}" = 1 ] && packages=()
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    aptlog=${TMPDIR:-/tmp}/dogestry-setup-apt.log
    { as_root apt-get -q update && as_root apt-get -q install -y --no-install-recommends "${missing[@]}"; } \
        >"$aptlog" 2>&1 || { tail -n 30 "$aptlog" >&2; die "apt-get failed (log: $aptlog)"; }
fi

# --- virtualenv ----------------------------------------------------------------------------------
reqs=("$ROOT/requirements.txt" "$ROOT/tests/requirements.txt")
constraints=$ROOT/tests/constraints.txt
stamp_want=$( { "$PYTHON" -c 'import sys; print(sys.version)'; cat "${reqs[@]}" "$constraints"; } | sha256sum | cut -d' ' -f1)
stamp_file=$VENV/.dogestry-requirements.sha256
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp_want" ]; then
    say "creating/updating $VENV (pip install -r requirements.txt -r tests/requirements.txt -c tests/constraints.txt)"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    piplog=$VENV/pip-install.log
    { "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip \
      && "$VENV/bin/python" -m pip install --disable-pip-version-check -r "${reqs[0]}" -r "${reqs[1]}" -c "$constraints"; } \
        >"$piplog" 2>&1 || { tail -n 30 "$piplog" >&2; die "pip install failed (log: $piplog)"; }
    echo "$stamp_want" > "$stamp_file"
fi

# --- the `dogestry` command (pyproject.toml): .venv/bin/dogestry runs this checkout's engine ---------
if [ "$("$VENV/bin/python" -c 'import dogestry._cli.commands as c; print(c.__file__)' 2>/dev/null)" \
     != "$ROOT/plugins/module_utils/_cli/commands.py" ] || ! grep -q "dogestry._cli.commands" "$VENV/bin/dogestry"; then
    say "pip install -e $ROOT (the dogestry command)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-deps -e "$ROOT" >"$VENV/pip-install-cli.log" 2>&1 \
        || { tail -n 30 "$VENV/pip-install-cli.log" >&2; die "pip install -e failed (log: $VENV/pip-install-cli.log)"; }
fi

if [ "${DOGESTRY_SETUP_VENV_ONLY:-}" = 1 ]; then
    say "ready (virtualenv only): $("$VENV/bin/python" -c 'from ansible.release import __version__ as a; print("ansible-core", a)')"
    exit 0
fi

# --- collections molecule's docker driver needs (community.docker, ansible.posix) -------------------
# Galaxy cannot be reached here: take them from the `ansible` wheel on the package index, by name (at the
# version of tests/constraints.txt).
COLLECTIONS_DIR=$VENV/collections
if [ ! -d "$COLLECTIONS_DIR/ansible_collections/community/docker" ] || [ ! -d "$COLLECTIONS_DIR/ansible_collections/ansible/posix" ]; then
    say "installing community.docker and ansible.posix into $COLLECTIONS_DIR (from the ansible wheel)"
    wheel_dir=$(mktemp -d)
    { "$VENV/bin/python" -m pip download --disable-pip-version-check --no-deps -q -d "$wheel_dir" -c "$constraints" 'ansible>=12,<13' \
      && (cd "$wheel_dir" && "$VENV/bin/python" -m zipfile -e ansible-*.whl unpacked) \
      && "$VENV/bin/ansible-galaxy" collection install --offline -p "$COLLECTIONS_DIR" \
             "$wheel_dir/unpacked/ansible_collections/community/library_inventory_filtering_v1" \
             "$wheel_dir/unpacked/ansible_collections/community/docker" \
             "$wheel_dir/unpacked/ansible_collections/ansible/posix"; } >"$VENV/collections-install.log" 2>&1 \
        || { rm -rf "$wheel_dir"; tail -n 20 "$VENV/collections-install.log" >&2; die "installing collections failed"; }
    rm -rf "$wheel_dir"
fi

# --- Docker 26 and 28 beside the system's 20.10 (the tests' docker26_host, docker28_host run them) ---
if [ "${DOGESTRY_SKIP_EXTRA_DOCKERS:-}" != 1 ]; then
    { bash "$ROOT/scripts/fetch-docker.sh" 26 >/dev/null && bash "$ROOT/scripts/fetch-docker.sh" 28 >/dev/null; } \
        || say "WARNING: could not fetch the Docker 26/28 dockerds; tests that need them will fail"
fi

# --- a running dockerd ---------------------------------------------------------------------------
docker_ok() { "$VENV/bin/python" - <<'EOF' 2>/dev/null
import os, docker
docker.APIClient(base_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"), version="auto", timeout=5).ping()
EOF
}
if ! docker_ok; then
    [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST}" != unix:///var/run/docker.sock ] \
        && die "DOCKER_HOST=$DOCKER_HOST does not answer"
    command -v dockerd >/dev/null || die "dockerd not found after installing docker.io"
    log=/var/log/dogestry-dockerd.log
    [ -w /var/log ] || log=${TMPDIR:-/tmp}/dogestry-dockerd.log
    say "starting dockerd (log: $log)"
    as_root setsid -f dockerd </dev/null >>"$log" 2>&1
    for _ in $(seq 1 120); do docker_ok && break; sleep 0.5; done
    docker_ok || { tail -n 20 "$log" >&2; die "dockerd did not answer within 60 s (log: $log)"; }
fi
say "ready: $("$VENV/bin/python" -c 'from ansible.release import __version__ as a; import docker, boto3, lz4; print("ansible-core %s, docker %s, boto3 %s, lz4 %s" % (a, docker.__version__, boto3.__version__, lz4.__version__))')"
