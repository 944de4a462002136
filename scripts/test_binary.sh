#!/usr/bin/env bash
# Build the one-file binary (scripts/build_binary.py: exports the model, bundles, checks the
# archive, reports size, start time and idle RSS), then run the smoke suite against it as a
# user would run it (tests/binary/test_smoke.py: env -i, a temporary HOME, an empty folder),
# on SQLite and PostgreSQL. Needs the `build` and `test` extras in ./.venv (scripts/test.sh
# installs `test`; this installs `build`).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
"$PY" -m pip install --quiet --disable-pip-version-check -e '.[build]'
"$PY" scripts/build_binary.py
version=$("$PY" -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
PERSONAIZER_BINARY="$PWD/dist/personaizer-$version-linux-x86_64" \
  HF_HUB_OFFLINE=1 "$PY" -m pytest -q tests/binary "$@"
