#!/usr/bin/env bash
# The main job on its embedded default: scripts/setup.sh, then playbooks/demo.yml on localhost
# (a demo image pushed into a local-directory remote, removed, pulled back and run), with the
# collection from this checkout and the .venv interpreter (docker, boto3, lz4) for the modules.
#
# Extra arguments go to ansible-playbook, e.g. `bash scripts/demo.sh -v` or `-e ...`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
PLAYBOOK=${DOGESTRY_PLAYBOOK:-$ROOT/playbooks/demo.yml}

bash "$ROOT/scripts/setup.sh"

# ansible-playbook finds collections under <path>/ansible_collections/<ns>/<name>: link this checkout there.
collections=$ROOT/.work/collections
link=$collections/ansible_collections/dogestry/dogestry
mkdir -p "$(dirname "$link")"
if [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
    rm -f "$link"
    ln -s "$ROOT" "$link"
fi

[ -f "$PLAYBOOK" ] || { echo "demo: $PLAYBOOK not found" >&2; exit 1; }

export ANSIBLE_COLLECTIONS_PATH=$collections
export ANSIBLE_PYTHON_INTERPRETER=$VENV/bin/python
export ANSIBLE_NOCOLOR=${ANSIBLE_NOCOLOR:-${CI:+1}}
export ANSIBLE_RETRY_FILES_ENABLED=0
export PATH=$VENV/bin:$PATH
cd "$ROOT"
exec "$VENV/bin/ansible-playbook" -i localhost, -c local "$PLAYBOOK" "$@"
