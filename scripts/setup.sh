#!/usr/bin/env bash
# Create .venv and install declora with pinned versions (CPU torch). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt)
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e '.[test]'
"${pip[@]}" --no-deps -r requirements/assets.txt
