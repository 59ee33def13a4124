#!/usr/bin/env bash
# Rewrite tests/constraints.txt with the newest releases that requirements.txt and tests/requirements.txt allow
# (and the newest `ansible` 12 wheel, as scripts/setup.sh asks for it), resolved in a throw-away virtualenv (the
# .venv in use is not touched). Run the whole suite after it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.txt" -r "$ROOT/tests/requirements.txt"
# The `ansible` wheel is not installed: scripts/setup.sh takes community.docker and ansible.posix out of it.
"$tmp/venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp/wheel" 'ansible>=12,<13'
ansible=$(basename "$tmp"/wheel/ansible-*.whl | cut -d- -f2)
{ awk '/^[^#]/ { exit } { print }' "$ROOT/tests/constraints.txt"
  "$tmp/venv/bin/python" -m pip freeze --disable-pip-version-check --exclude-editable
  echo "ansible==$ansible"; } > "$tmp/constraints.txt"
mv "$tmp/constraints.txt" "$ROOT/tests/constraints.txt"
git -C "$ROOT" diff --stat -- tests/constraints.txt
