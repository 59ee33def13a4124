#!/usr/bin/env bash
# The whole test suite: scripts/setup.sh, then pytest (tests/unit + tests/integration against real
# dockerds and moto_server), then `ansible-test sanity` on a copy of the collection.
# Exit status non-zero if anything failed (pytest's "no tests collected" counts as a failure).
#
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k infra -x`; DOGESTRY_PYTEST_PATHS
# replaces the default path `tests`.
#
# `bash scripts/test.sh --fast`: the fast tier, the tests not marked slow (unit tests, moto, dogestry
# processes; tests/conftest.py marks a test slow when it uses a Docker daemon, ansible-playbook or
# molecule), with a virtualenv-only setup and no sanity: no root, Docker or molecule needed.
# Environment: DOGESTRY_SKIP_SANITY=1 skips ansible-test sanity; DOGESTRY_SANITY_ARGS adds options
# to it (e.g. "--test pep8").
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
VENV=$ROOT/.venv
PY=$VENV/bin/python

if [ "${1:-}" = --fast ]; then
    shift
    set -- -m "not slow" "$@"
    export DOGESTRY_SETUP_VENV_ONLY=1 DOGESTRY_SKIP_SANITY=1
fi

now() { date +%s; }
t0=$(now)
bash scripts/setup.sh || { echo "test: setup failed" >&2; exit 1; }
export PATH=$VENV/bin:$PATH
t_setup=$(( $(now) - t0 ))

# --- pytest --------------------------------------------------------------------------------------
t1=$(now)
# shellcheck disable=SC2086
"$PY" -m pytest -p no:cacheprovider -ra "$@" ${DOGESTRY_PYTEST_PATHS:-tests}
pytest_rc=$?
t_pytest=$(( $(now) - t1 ))
case $pytest_rc in
    0) pytest_status=passed ;;
    5) pytest_status="FAILED (no tests collected)" ;;
    *) pytest_status="FAILED (exit $pytest_rc)" ;;
esac

# --- ansible-test sanity -------------------------------------------------------------------------
sanity_rc=0
sanity_status=skipped
t2=$(now)
if [ "${DOGESTRY_SKIP_SANITY:-}" != 1 ]; then
    ns=$(sed -n 's/^namespace:[[:space:]]*//p' galaxy.yml | tr -d "\"' ")
    name=$(sed -n 's/^name:[[:space:]]*//p' galaxy.yml | tr -d "\"' ")
    tree=$(mktemp -d "${TMPDIR:-/tmp}/dogestry-sanity.XXXXXX")
    trap 'rm -rf "$tree"' EXIT
    dest=$tree/ansible_collections/$ns/$name
    # The files git would ship: tracked plus untracked-but-not-ignored (a fresh clone has only the first).
    mkdir -p "$dest"
    while IFS= read -r -d '' f; do
        if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi  # skip deleted, not yet committed
    done < <(git ls-files -z --cached --others --exclude-standard) \
        | rsync -a --from0 --files-from=- "$ROOT/" "$dest/"

    # ansible-test --venv bootstraps pip into each sanity venv with a get-pip.py it downloads from
    # a host outside the package index. Stand in for it: ensurepip, then pip from the index.
    pip_version=$("$PY" -c 'import types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version="3.11"))["pip"])' 2>/dev/null || echo 24.2)
    get_pip=$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py
    if [ ! -s "$get_pip" ]; then
        mkdir -p "$(dirname "$get_pip")"
        cat > "$get_pip" <<'EOF'
# Written by dogestry's scripts/test.sh: a stand-in for get-pip.py, which ansible-test would download
# from outside the package index. ensurepip bootstraps pip, which then installs the wanted version.
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q"] + args)
EOF
    fi

    echo "test: ansible-test sanity (in $dest)"
    # ansible-test shows pip's chatter while it fills its sanity venvs (cached in ~/.ansible/test):
    # keep the log readable, keep everything else (errors included).
    # shellcheck disable=SC2086
    (cd "$dest" && "$VENV/bin/ansible-test" sanity --venv --python 3.11 --color no \
        ${DOGESTRY_SANITY_ARGS:-}) 2>&1 \
        | grep --line-buffered -vE "^(WARNING: Location 'file:|Looking in (indexes|links)|Collecting |  Downloading |Processing /|     ━|Installing collected packages|Successfully installed |Requirement already satisfied)"
    sanity_rc=${PIPESTATUS[0]}
    if [ "$sanity_rc" -eq 0 ]; then sanity_status=passed; else sanity_status="FAILED (exit $sanity_rc)"; fi
fi
t_sanity=$(( $(now) - t2 ))

echo
echo "test: summary: setup ${t_setup}s; pytest $pytest_status (${t_pytest}s); ansible-test sanity $sanity_status (${t_sanity}s)"
[ "$pytest_rc" -eq 0 ] && [ "$sanity_rc" -eq 0 ]
