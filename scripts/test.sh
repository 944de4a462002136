#!/usr/bin/env bash
# Install everything the tests need into ./.venv and run lint, types and the test suite.
# The README's second set-up command, and what CI runs on a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch is pinned (==2.13.0, CPU build) in pyproject.toml; see README for other machines.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

# The Redis-backed rate-limit test starts its own redis-server; install it where we can.
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || echo "warning: could not install redis-server" >&2
fi
# The PgBouncer test (tests/test_pgbouncer.py) starts its own pgbouncer in transaction mode.
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null) || echo "warning: could not install pgbouncer" >&2
fi
# The dashboard's browser tests drive Debian's chromium through Playwright (never a downloaded
# browser: `playwright install` is not used); without it they skip.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium" >&2
fi

.venv/bin/ruff check app tests scripts examples
.venv/bin/mypy app examples/widget/mint.py
# The layer contract ([tool.importlinter] in pyproject.toml; docs/decisions.md, "The code's layout").
.venv/bin/lint-imports --no-logo
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest "$@"
# The one-file binary, built and smoke-tested as a user runs it (bare environment, empty folder).
bash scripts/test_binary.sh
