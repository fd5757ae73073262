#!/usr/bin/env bash
# Sets up everything mminstruct needs on a fresh Debian/Ubuntu machine with Python 3.11+:
# a virtual environment in .venv with the app, test and Ray dependencies, and (as root) Debian's
# chromium for the browser test. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.mminstruct-deps
want=$(cat requirements.txt requirements-dev.txt requirements-ray.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium is not installed (sudo apt-get install chromium); the browser test will be skipped" >&2
  fi
fi
echo "setup: ok ($(.venv/bin/python --version), chromium: $(command -v chromium || echo none))"
