#!/usr/bin/env bash
# Install everything the tests need (venv, Python packages, Debian's chromium for the browser
# test), lint (ruff check + ruff format --check) and run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: /usr/bin/chromium missing and not root: the browser test will be skipped" >&2
  fi
fi
. .venv/bin/activate
ruff check .                # lint (rules in pyproject.toml [tool.ruff])
ruff format --check .       # formatting
python -m pytest -q "$@"
