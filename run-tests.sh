#!/usr/bin/env bash
# Sets up .venv and the test browser if needed, then runs the test suite.
# Extra arguments go to pytest, e.g. ./run-tests.sh -m "not browser" -k scheduler
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh test

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is not installed: the browser tests will be skipped (sudo apt-get install chromium)" >&2
  fi
fi

exec .venv/bin/python -m pytest "$@"
